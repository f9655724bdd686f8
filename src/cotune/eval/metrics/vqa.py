"""Open-ended VQA accuracy with the VQA challenge's answer normalisation.

:func:`normalize_answer` follows the rules the official VQA evaluation (``vqaEval.py``) applies,
re-written here from its published description:

1. newlines and tabs become spaces; surrounding whitespace is stripped;
2. each of ``; / [ ] " { } ( ) = + \\ _ - > < @ ` , ? !`` is deleted when it touches a space or when
   the answer holds a comma between digits (``100,978`` -> ``100978``), else replaced by a space
   (``black/white`` -> ``black white``); apostrophes and colons are kept;
3. a period is deleted unless a digit follows it (``3.5`` stays, ``dog.`` -> ``dog``);
4. lower-case; number words ``zero``..``ten`` become digits (and ``none`` becomes ``0``, as in the
   official map); the articles ``a``, ``an``, ``the`` are removed;
5. a contraction missing its apostrophe gets it back (``dont`` -> ``don't``).

Unlike the official script, which normalises only when a question's ten answers disagree, both the
prediction and every reference are always normalised (as TextVQA's evaluator does).

Per-item score (``accuracy``):

* one reference: exact match after normalisation;
* ten references: the official VQA accuracy, ``min(#matches among the other 9 / 3, 1)`` averaged
  over the 10 ways of leaving one reference out (1, 2, 3, >=4 matches give 0.3, 0.6, 0.9, 1.0);
* any other number: ``min(#matches / 3, 1)`` without leave-one-out.

``exact_match`` is the share of items whose prediction equals at least one reference.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

from cotune.eval.metrics import METRICS, ScoreError, percent

_PUNCT = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")
_DIGIT_COMMA_DIGIT = re.compile(r"\d,\d")
_PERIOD = re.compile(r"\.(?!\d)")
_NUMBERS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
    "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
_ARTICLES = frozenset({"a", "an", "the"})
# Contractions written without their apostrophe (as the official list, lower-case keys only: its
# capitalised keys such as "Im" never match lower-cased text). Ambiguous words (its, id, well,
# were, shell, wed, hell) are deliberately absent.
_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've",
    "hasnt": "hasn't", "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've",
    "hes": "he's", "howd": "how'd", "howll": "how'll", "hows": "how's", "isnt": "isn't", "itd": "it'd",
    "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "maam": "ma'am", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't",
    "mustve": "must've", "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't",
    "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've", "somebodyll": "somebody'll",
    "somebodys": "somebody's", "someoned": "someone'd", "someoned've": "someone'd've",
    "someone'dve": "someone'd've", "someonell": "someone'll", "someones": "someone's",
    "somethingd": "something'd", "somethingd've": "something'd've", "something'dve": "something'd've",
    "somethingll": "something'll", "thats": "that's", "thered": "there'd", "thered've": "there'd've",
    "there'dve": "there'd've", "therere": "there're", "theres": "there's", "theyd": "they'd",
    "theyd've": "they'd've", "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're",
    "theyve": "they've", "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've",
    "weve": "we've", "werent": "weren't", "whatll": "what'll", "whatre": "what're", "whats": "what's",
    "whatve": "what've", "whens": "when's", "whered": "where'd", "wheres": "where's", "whereve": "where've",
    "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've", "wholl": "who'll", "whos": "who's",
    "whove": "who've", "whyll": "why'll", "whyre": "why're", "whys": "why's", "wont": "won't",
    "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've",
    "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll", "yall'd've": "y'all'd've",
    "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd", "youd've": "you'd've",
    "you'dve": "you'd've", "youll": "you'll", "youre": "you're", "youve": "you've",
}


def normalize_answer(answer: str) -> str:
    """``answer`` normalised by the VQA evaluation's rules (module docstring)."""
    text = answer.replace("\n", " ").replace("\t", " ").strip()
    delete_all = _DIGIT_COMMA_DIGIT.search(text) is not None
    out = text
    for mark in _PUNCT:
        touches_space = f"{mark} " in text or f" {mark}" in text
        out = out.replace(mark, "" if touches_space or delete_all else " ")
    out = _PERIOD.sub("", out)
    words = [_NUMBERS.get(word, word) for word in out.lower().split()]
    return " ".join(_CONTRACTIONS.get(word, word) for word in words if word not in _ARTICLES)


def item_score(prediction: str, references: Sequence[str]) -> float:
    """One item's VQA score in [0, 1] from *normalised* ``prediction`` and ``references``."""
    matches = sum(reference == prediction for reference in references)
    if len(references) == 1:
        return float(matches)
    if len(references) == 10:
        # Leaving out a matching reference leaves matches - 1, any other leaves matches.
        left_out = matches * min((matches - 1) / 3, 1.0) + (10 - matches) * min(matches / 3, 1.0)
        return left_out / 10
    return min(matches / 3, 1.0)


def check_items(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> None:
    """ScoreError unless there is at least one item and every item has a string and >= 1 reference strings."""
    if len(predictions) != len(references):
        raise ScoreError(f"{len(predictions)} predictions but {len(references)} reference lists")
    if not predictions:
        raise ScoreError("nothing to score (no items)")
    for i, (prediction, refs) in enumerate(zip(predictions, references)):
        if not isinstance(prediction, str):
            raise ScoreError(f"item {i}: prediction must be a string, got {prediction!r}")
        if isinstance(refs, str) or not refs or not all(isinstance(r, str) for r in refs):
            raise ScoreError(f"item {i}: references must be a non-empty list of strings, got {refs!r}")


@METRICS.register("vqa")
def vqa(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict:
    """VQA accuracy of ``predictions[i]`` against ``references[i]`` (both normalised first).

    Returns ``accuracy`` (percent, the per-item score above), ``exact_match`` (percent of items
    matching at least one reference), ``count``, and ``references_per_item`` ({n: items}).
    """
    check_items(predictions, references)
    total, exact = 0.0, 0
    for prediction, refs in zip(predictions, references):
        guess, refs = normalize_answer(prediction), [normalize_answer(r) for r in refs]
        total += item_score(guess, refs)
        exact += guess in refs
    sizes = Counter(len(refs) for refs in references)
    return {
        "accuracy": percent(total, len(predictions)),
        "exact_match": percent(exact, len(predictions)),
        "count": len(predictions),
        "references_per_item": dict(sorted(sizes.items())),
    }
