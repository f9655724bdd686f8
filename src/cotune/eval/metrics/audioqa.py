"""ClothoAQA accuracy: yes/no questions and single-word answers, separately and together.

Answers are compared after :func:`~cotune.eval.metrics.vqa.normalize_answer`. ClothoAQA has several
annotators' answers per question; an item scores the share of its references that equal the
prediction (``#matching / #references``), which is what scoring every annotator's row as its own
sample gives, and plain exact match when there is one reference.

An item is ``yes_no`` when every normalised reference is ``yes`` or ``no``; otherwise it is
``single_word``.
"""

from __future__ import annotations

from collections.abc import Sequence

from cotune.data.questions import YES_NO
from cotune.eval.metrics import METRICS, percent
from cotune.eval.metrics.vqa import check_items, normalize_answer


def question_type(references: Sequence[str]) -> str:
    """``yes_no`` if every *normalised* reference is yes or no, else ``single_word``."""
    return "yes_no" if all(reference in YES_NO for reference in references) else "single_word"


@METRICS.register("audioqa")
def audioqa(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict:
    """ClothoAQA accuracy of ``predictions[i]`` against ``references[i]``.

    Returns ``accuracy``, ``yes_no_accuracy`` and ``single_word_accuracy`` (percent; ``None`` for a
    group without items) and the item counts ``count``, ``yes_no_count``, ``single_word_count``.
    """
    check_items(predictions, references)
    sums = {"yes_no": 0.0, "single_word": 0.0}
    counts = {"yes_no": 0, "single_word": 0}
    for prediction, refs in zip(predictions, references):
        guess, refs = normalize_answer(prediction), [normalize_answer(r) for r in refs]
        kind = question_type(refs)
        sums[kind] += sum(reference == guess for reference in refs) / len(refs)
        counts[kind] += 1
    return {
        "accuracy": percent(sum(sums.values()), len(predictions)),
        "yes_no_accuracy": percent(sums["yes_no"], counts["yes_no"]),
        "single_word_accuracy": percent(sums["single_word"], counts["single_word"]),
        "count": len(predictions),
        "yes_no_count": counts["yes_no"],
        "single_word_count": counts["single_word"],
    }
