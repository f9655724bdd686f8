"""What a question's text and answer say about it, without the media: whether an answer is yes/no,
and a question's polarity (negated or affirmative). The data filters (``DatasetConfig.answers``,
``DatasetConfig.polarity``) and the evaluation's wording-prior breakdown share these rules."""

from __future__ import annotations

import re

YES_NO = frozenset({"yes", "no"})
_NEGATION = re.compile(r"\b(not|no|never)\b|n't\b", re.IGNORECASE)


def answer_word(answer: str) -> str:
    """An answer lower-cased, with surrounding space and a final full stop removed."""
    return answer.strip().rstrip(".").strip().lower()


def polarity(question: str) -> str:
    """``negated`` if the question has a negation word (not, no, never, n't), else ``affirmative``."""
    return "negated" if _NEGATION.search(question) else "affirmative"
