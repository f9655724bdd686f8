"""Placeholder: the scienceqa reader is being written."""
