"""Merging a trained model: LoRA and linear adapters folded into the backbones' weights.

:mod:`cotune.merge.model` merges a model and verifies it, :mod:`cotune.merge.fold` holds the
maths, :mod:`cotune.merge.probe` finds and checks the layers to fold into, and
:mod:`cotune.merge.io` writes and reads a merged model directory. Merging a run directory is
:func:`cotune.rundir.merge_run`. See docs/merge.md.
"""

from cotune.merge.io import load_merged, merged_record
from cotune.merge.model import MergedCotuneModel, MergeError, MergeSummary, merge_lora, merge_model

__all__ = ["MergeError", "MergeSummary", "MergedCotuneModel", "load_merged", "merge_lora", "merge_model", "merged_record"]
