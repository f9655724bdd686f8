"""Evaluation metrics, registered by exact name in :data:`METRICS`.

Each entry is a plain function over already-loaded predictions and references that returns a dict;
tasks with an accuracy always have the key ``accuracy`` (a percentage, 0-100, two decimals).

| name | function | inputs |
|---|---|---|
| ``scienceqa`` | :func:`~cotune.eval.metrics.scienceqa.scienceqa` | problems, ``{pid: index}``, split pids |
| ``multiple-choice`` | :func:`~cotune.eval.metrics.scienceqa.multiple_choice` | ``{id: index}`` predictions and answers |
| ``vqa`` | :func:`~cotune.eval.metrics.vqa.vqa` | prediction strings, reference lists |
| ``caption`` | :func:`~cotune.eval.metrics.caption.caption` | caption strings, reference lists |
| ``caption-coco`` | :func:`~cotune.eval.metrics.coco.coco_caption` (pycocoevalcap, Java) | caption strings, reference lists |
| ``audioqa`` | :func:`~cotune.eval.metrics.audioqa.audioqa` | prediction strings, reference lists |
| ``mme`` | :func:`~cotune.eval.metrics.mme.mme` | ``MMEItem(subtask, image, answer, prediction)`` list |
| ``text-match`` | :func:`~cotune.eval.metrics.textqa.text_match` | prediction strings, acceptable-answer lists |

Definitions: docs/eval-metrics.md. Nothing here imports torch or a model.
"""

from __future__ import annotations

from cotune.registry import Registry


class ScoreError(ValueError):
    """Predictions or references that cannot be scored (unknown ids, wrong types, empty inputs)."""


METRICS: Registry = Registry("metric")


def percent(correct: float, count: int) -> float | None:
    """``100 * correct / count`` rounded to two decimals; ``None`` for an empty subset."""
    return round(100.0 * correct / count, 2) if count else None


# Metric modules register themselves on import; the import list is explicit (no auto-discovery).
from cotune.eval.metrics import audioqa, caption, coco, mme, scienceqa, textqa, vqa  # noqa: E402,F401

__all__ = ["METRICS", "ScoreError", "percent"]
