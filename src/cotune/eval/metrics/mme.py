"""MME (Fu et al. 2023) scored as its evaluation tool (``eval_tool/calculation.py``) scores it.

MME asks two yes/no questions about every image, one answered "yes" and one "no", in 14 subtasks:
10 of perception and 4 of cognition (:data:`PERCEPTION`, :data:`COGNITION`).

* **Answer** (:func:`parse_answer`): the prediction, lower-cased, is ``yes`` or ``no`` when it is
  exactly that word; otherwise ``yes`` when its first four characters contain "yes", else ``no``
  when they contain "no", else ``other`` (always wrong). So "Yes, it is" is yes, "Not at all" is
  no, and "There is a dog" is other.
* **acc**: per subtask, the share of its questions answered right.
* **acc+**: per subtask, the share of its images whose *two* questions are both right. A model that
  answers from the question's wording, or says "yes" to everything, scores acc 50 and acc+ near 0.
* **score** = 100 acc + 100 acc+ per subtask (at most 200); **perception** and **cognition** are the
  sums of their subtasks' scores (at most 2000 and 800), **total** their sum.

acc and acc+ are returned as percentages; nothing is rounded. The tool requires all 14 subtasks;
here the totals are over the subtasks present and ``missing`` lists the others, so a partial
result cannot pass for a full one. An image with fewer than two scored questions (a question that
was skipped) counts against acc+ and is counted in ``incomplete_images``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from cotune.data.readers.mme import COGNITION, PERCEPTION, SUBTASKS
from cotune.eval.metrics import METRICS, ScoreError, percent

__all__ = ["COGNITION", "PERCEPTION", "SUBTASKS", "MMEItem", "item_correct", "mme", "parse_answer"]


class MMEItem(NamedTuple):
    """One scored MME question: its subtask, image file name, reference (``yes``/``no``, any case)
    and the model's prediction text."""

    subtask: str
    image: str
    answer: str
    prediction: str


def parse_answer(prediction: str) -> str:
    """``yes``, ``no`` or ``other``, read as the MME tool reads it (module docstring)."""
    text = prediction.lower()
    if text in ("yes", "no"):
        return text
    head = text[:4]
    return "yes" if "yes" in head else "no" if "no" in head else "other"


def item_correct(item: MMEItem) -> bool:
    return parse_answer(item.prediction) == item.answer.lower()


@METRICS.register("mme")
def mme(items: Iterable[MMEItem]) -> dict:
    """MME's scores of ``items`` (any order; an image's questions are grouped by subtask and image).

    Returns ``{"perception", "cognition", "total", "accuracy", "subtasks": {name: {"acc",
    "acc_plus", "score", "questions", "images", "other"}}, "missing", "incomplete_images",
    "count"}``; ``accuracy`` is the share of all questions answered right (percent, two decimals), ``other``
    the answers that are neither yes nor no. A total is None when none of its subtasks is present.
    """
    groups: dict[str, dict[str, list[MMEItem]]] = {}
    for item in items:
        if item.subtask not in SUBTASKS:
            raise ScoreError(f"unknown MME subtask {item.subtask!r}; the subtasks are {', '.join(SUBTASKS)}")
        if item.answer.lower() not in ("yes", "no"):
            raise ScoreError(f"{item.subtask}/{item.image}: the reference must be yes or no, got {item.answer!r}")
        groups.setdefault(item.subtask, {}).setdefault(item.image, []).append(item)
    if not groups:
        raise ScoreError("nothing to score (no MME questions)")
    subtasks, incomplete, right, count = {}, 0, 0, 0
    for name in (s for s in SUBTASKS if s in groups):
        images = groups[name].values()
        questions = [item for pair in images for item in pair]
        correct = sum(item_correct(item) for item in questions)
        both = sum(len(pair) >= 2 and all(item_correct(item) for item in pair) for pair in images)
        incomplete += sum(len(pair) < 2 for pair in images)
        acc, acc_plus = 100.0 * correct / len(questions), 100.0 * both / len(images)
        subtasks[name] = {
            "acc": acc, "acc_plus": acc_plus, "score": acc + acc_plus, "questions": len(questions), "images": len(images),
            "other": sum(parse_answer(item.prediction) == "other" for item in questions),
        }
        right, count = right + correct, count + len(questions)
    perception, cognition = (_total(subtasks, names) for names in (PERCEPTION, COGNITION))
    return {
        "perception": perception, "cognition": cognition,
        "total": sum(value for value in (perception, cognition) if value is not None),
        "accuracy": percent(right, count), "subtasks": subtasks,
        "missing": [name for name in SUBTASKS if name not in subtasks], "incomplete_images": incomplete, "count": count,
    }


def _total(subtasks: dict[str, dict], names: tuple[str, ...]) -> float | None:
    present = [subtasks[name]["score"] for name in names if name in subtasks]
    return sum(present) if present else None
