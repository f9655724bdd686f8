"""Evaluation: answer extraction, metrics, the task table and the evaluation runner.

:func:`extract_answer` turns a generated ScienceQA continuation into a choice index, deterministically;
:data:`METRICS` holds the metrics by exact name (``scienceqa``, ``multiple-choice``, ``vqa``,
``caption``, ``caption-coco``, ``audioqa``, ``text-match``, ``mme``); :data:`TASKS` the evaluation
tasks by dataset name; :func:`evaluate_run` generates with a trained model and scores a dataset,
:func:`predict_samples` generates without scoring. lmms-eval's ``cotune`` model is
:mod:`cotune.eval.lmms_model` (imported only by lmms-eval). Definitions and file formats: docs/eval-metrics.md and docs/eval.md.
"""

from cotune.eval.extract import RULES, Extraction, extract_answer
from cotune.eval.metrics import METRICS, ScoreError
from cotune.eval.runner import EvalSet, Prediction, evaluate_run, load_eval_set, predict_samples
from cotune.eval.tasks import TASKS, EvalTask

__all__ = [
    "METRICS", "RULES", "TASKS", "EvalSet", "EvalTask", "Extraction", "Prediction", "ScoreError", "evaluate_run", "extract_answer",
    "load_eval_set", "predict_samples",
]
