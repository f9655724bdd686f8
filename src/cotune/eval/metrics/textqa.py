"""Short-answer accuracy for free-form replies (``text-match``): is an acceptable answer *in* the reply?

Built for retention checks of a chat LLM, whose replies are sentences ("The capital of France is
Paris.") where VQA's exact match would score nearly everything wrong. The prediction and every
acceptable answer go through :func:`~cotune.eval.metrics.vqa.normalize_answer` (lower-case,
punctuation, articles, number words ``zero``..``ten`` to digits); an item is correct when the
words of some normalised answer occur as a contiguous run of whole words in the normalised
prediction. Whole words, so ``cat`` does not match ``category`` and ``4`` does not match ``14``.
"""

from __future__ import annotations

from collections.abc import Sequence

from cotune.eval.metrics import METRICS, ScoreError, percent
from cotune.eval.metrics.vqa import check_items, normalize_answer


def contains_words(text: Sequence[str], words: Sequence[str]) -> bool:
    """Whether ``words`` (non-empty) occur as a contiguous run in ``text``, both word lists."""
    n = len(words)
    return any(list(text[i : i + n]) == list(words) for i in range(len(text) - n + 1))


@METRICS.register("text-match")
def text_match(predictions: Sequence[str], answers: Sequence[Sequence[str]]) -> dict:
    """Share of ``predictions[i]`` containing one of ``answers[i]`` as whole words, after normalisation.

    Returns ``accuracy`` (percent), ``count`` (items) and ``correct`` (items matched). ScoreError for
    mismatched lengths, no items, non-string values, or an answer that normalises to nothing
    (``"the"``, ``"?"``: it would match every reply).
    """
    check_items(predictions, answers)
    correct = 0
    for i, (prediction, accepted) in enumerate(zip(predictions, answers)):
        words = normalize_answer(prediction).split()
        options = [normalize_answer(answer).split() for answer in accepted]
        if not all(options):
            raise ScoreError(f"item {i}: acceptable answers {list(accepted)!r} include one that is empty after normalisation")
        correct += any(contains_words(words, option) for option in options)
    return {"accuracy": percent(correct, len(predictions)), "count": len(predictions), "correct": correct}
