"""Placeholder: the alpaca reader is being written."""
