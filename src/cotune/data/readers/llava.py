"""Placeholder: the llava reader is being written."""
