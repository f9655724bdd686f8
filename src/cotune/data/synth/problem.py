"""One synthetic ScienceQA problem before it is written, and the choice shuffling the builders share."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

NAT, SOC, LAN = "natural science", "social science", "language science"


@dataclass
class Problem:
    """A problem in ScienceQA's terms; ``image`` is rendered later into ``images/<split>/<pid>/image.png``.

    subject: ``natural science``, ``social science`` or ``language science``; grade: 1..12;
    answer: index into ``choices``; hint: the text context (``""`` for none).
    """

    question: str
    choices: list[str]
    answer: int
    subject: str
    grade: int
    topic: str
    lecture: str
    solution: str
    hint: str = ""
    image: Image.Image | None = None

    def record(self, split: str) -> dict:
        """The problems.json entry (ScienceQA's field names)."""
        return {
            "question": self.question, "choices": list(self.choices), "answer": self.answer,
            "hint": self.hint, "image": "image.png" if self.image is not None else None, "task": "closed choice",
            "grade": f"grade{self.grade}", "subject": self.subject, "topic": self.topic, "category": self.topic,
            "skill": self.topic, "lecture": self.lecture, "solution": self.solution, "split": split,
        }


def shuffled(rng: np.random.Generator, correct: str, wrong: Sequence[str]) -> tuple[list[str], int]:
    """(choices, index of ``correct``): ``correct`` and ``wrong`` in random order."""
    if correct in wrong or len(set(wrong)) != len(wrong):
        raise ValueError(f"choices must be distinct: {correct!r} and {list(wrong)!r}")
    choices = [correct, *wrong]
    order = rng.permutation(len(choices))
    choices = [choices[i] for i in order]
    return choices, choices.index(correct)


def fixed(choices: Sequence[str], correct: str) -> tuple[list[str], int]:
    """(choices, index of ``correct``) in the given order (ScienceQA keeps e.g. north/south/east/west fixed)."""
    return list(choices), list(choices).index(correct)


def grade(rng: np.random.Generator, low: int, high: int) -> int:
    return int(rng.integers(low, high + 1))
