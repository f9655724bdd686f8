"""Deterministic ScienceQA answer extraction from a generated continuation.

LaVIN searched the decoded prompt *and* generation for ``The answer is ([A-Z]).`` and replaced a miss
(or a letter beyond the choices) with an unseeded ``random.choice``, so its accuracy was not
reproducible. cotune reads the continuation only (the caller never
passes the prompt, which holds every option mark) and tries four rules in order:

1. ``answer-is``: the first ``The answer is X`` / ``The answer is (X)`` whose letter is within the
   problem's choices. The letter must not run on into a word, so ``The answer is Alaska`` is not A.
2. ``paren-mark``: else the first ``(X)`` mark within the choices.
3. ``choice-text``: else the continuation, stripped of surrounding whitespace, of one leading
   ``The answer is`` and of trailing ``.``, equals a choice's text case-insensitively (the first
   such choice).
4. ``none``: else index -1, which scores as wrong.

Nothing here is random; the same text always gives the same :class:`Extraction`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import NamedTuple

#: The rules in the order they are tried; ``none`` is the -1 fallback.
RULES = ("answer-is", "paren-mark", "choice-text", "none")

_ANSWER_IS = re.compile(r"The answer is \(?([A-Z])\)?(?![A-Za-z])")
_PAREN_MARK = re.compile(r"\(([A-Z])\)")
_ANSWER_PREFIX = re.compile(r"^the answer is\s*:?\s*", re.IGNORECASE)

#: Most choices a problem may have: one per capital letter.
MAX_CHOICES = 26


class Extraction(NamedTuple):
    """An extracted answer: ``index`` into the choices (-1 when nothing matched) and the ``rule`` that fired."""

    index: int
    rule: str


def extract_answer(continuation: str, choices: Sequence[str]) -> Extraction:
    """The answer index in ``continuation`` (the generated text only, never the prompt).

    Args:
        continuation: the model's generated text after the prompt.
        choices: the problem's choice texts, in order (letter A is index 0); 1 to 26 of them.

    Returns:
        ``Extraction(index, rule)`` with ``rule`` one of :data:`RULES`; ``index`` is -1 for ``none``.
    """
    if not isinstance(continuation, str):
        raise TypeError(f"continuation must be a string, got {type(continuation).__name__}")
    n = len(choices)
    if not 1 <= n <= MAX_CHOICES:
        raise ValueError(f"a problem needs 1 to {MAX_CHOICES} choices, got {n}")
    for rule, pattern in (("answer-is", _ANSWER_IS), ("paren-mark", _PAREN_MARK)):
        for match in pattern.finditer(continuation):
            index = ord(match.group(1)) - ord("A")
            if index < n:
                return Extraction(index, rule)
    index = _match_choice_text(continuation, choices)
    if index >= 0:
        return Extraction(index, "choice-text")
    return Extraction(-1, "none")


def _match_choice_text(continuation: str, choices: Sequence[str]) -> int:
    """Index of the first choice equal (case-insensitively) to the bare answer text, else -1."""
    text = _ANSWER_PREFIX.sub("", continuation.strip()).rstrip(". \t\n").strip().casefold()
    if not text:
        return -1
    for index, choice in enumerate(choices):
        if str(choice).strip().rstrip(".").strip().casefold() == text:
            return index
    return -1
