"""Instruction data: readers, templates and label masks, media, datasets, sampling, collation."""
