"""Evaluation: answer extraction and metrics (no model code here).

:func:`extract_answer` turns a generated ScienceQA continuation into a choice index, deterministically;
:data:`METRICS` holds the metrics by exact name (``scienceqa``, ``multiple-choice``, ``vqa``,
``caption``, ``audioqa``). Definitions and file formats: docs/eval-metrics.md.
"""

from cotune.eval.extract import RULES, Extraction, extract_answer
from cotune.eval.metrics import METRICS, ScoreError

__all__ = ["METRICS", "RULES", "Extraction", "ScoreError", "extract_answer"]
