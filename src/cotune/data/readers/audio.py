"""Placeholder: the audio reader is being written."""
