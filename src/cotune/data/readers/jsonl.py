"""Placeholder: the jsonl reader is being written."""
