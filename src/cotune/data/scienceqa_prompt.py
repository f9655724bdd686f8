"""ScienceQA prompts exactly as LaVIN builds them (``util/base_prompt.py``, ``create_training_example``).

A format is ``<input>-<output>``. Input letters: Q question, C context (hint, plus the caption with
``use_caption``; ``N/A`` when empty), M options, L lecture, E solution. Output letters: A answer,
and "BECAUSE:" explanations, with the naming inherited from ScienceQA's code: ``AL`` appends the
*solution* and ``AE`` the *lecture* (``LA``/``EA`` are the other way round, as their letters say).

The returned input ``I`` ends with ``Response:`` and the output ``O`` follows it with no separator.
Both pass once, left to right, through ``replace("  ", " ")`` (3 spaces become 2, 4 become 2) and
``strip()``. A trailing ``BECAUSE:`` (empty lecture and solution) is kept: the reference's removal
assigns to an unused variable. Lecture and solution newlines become the two characters ``\\n``;
question, hint and choices keep real newlines.
"""

from __future__ import annotations

import string

#: Every letter a choice can get; ScienceQA has 2-5 choices (LaVIN's ``options`` are A-E).
LETTERS = string.ascii_uppercase

_INPUTS = {
    "CQM": "Context: {c}\nQuestion: {q}\nOptions: {m}\n",
    "QCM": "Question: {q}\nContext: {c}\nOptions: {m}\n",
    "QCML": "Question: {q}\nContext: {c}\nOptions: {m}\nBECAUSE: {l}\n",
    "QCME": "Question: {q}\nContext: {c}\nOptions: {m}\nBECAUSE: {e}\n",
    "QCMLE": "Question: {q}\nContext: {c}\nOptions: {m}\nBECAUSE: {l} {e}\n",
    "QCLM": "Question: {q}\nContext: {c}\nBECAUSE: {l}\nOptions: {m}\n",
    "QCEM": "Question: {q}\nContext: {c}\nBECAUSE: {e}\nOptions: {m}\n",
    "QCLEM": "Question: {q}\nContext: {c}\nBECAUSE: {l} {e}\nOptions: {m}\n",
}

_OUTPUTS = {
    "A": "The answer is {a}.",
    "AL": "The answer is {a}. BECAUSE: {e}",  # sic: AL = solution
    "AE": "The answer is {a}. BECAUSE: {l}",  # sic: AE = lecture
    "ALE": "The answer is {a}. BECAUSE: {l} {e}",
    "AEL": "The answer is {a}. BECAUSE: {e} {l}",
    "LA": "{l} The answer is {a}.",
    "EA": "{e} The answer is {a}.",
    "LEA": "{l} {e} The answer is {a}.",
    "ELA": "{e} {l} The answer is {a}.",
}

_EIGHT = ("A", "LA", "EA", "LEA", "ELA", "AL", "AE", "ALE")

#: The formats LaVIN's ``train.py`` accepts (its order), plus ``QCM-AEL`` (built there, not offered).
PROMPT_FORMATS: tuple[str, ...] = (
    *(f"CQM-{o}" for o in _EIGHT),
    *(f"QCM-{o}" for o in _EIGHT),
    "QCML-A", "QCME-A", "QCMLE-A", "QCLM-A", "QCEM-A", "QCLEM-A", "QCML-AE",
    "QCM-AEL",
)


def check_format(prompt_format: str) -> tuple[str, str]:
    """Splits a format into its input and output parts; ValueError naming the valid ones otherwise."""
    if prompt_format not in PROMPT_FORMATS:
        raise ValueError(f"prompt_format: unknown ScienceQA format {prompt_format!r}; valid: {', '.join(PROMPT_FORMATS)}")
    input_format, output_format = prompt_format.split("-")
    return input_format, output_format


def answer_letter(index: int) -> str:
    """The letter of choice ``index`` (0 -> ``A``)."""
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(LETTERS):
        raise ValueError(f"choice index must be an int in [0, {len(LETTERS)}), got {index!r}")
    return LETTERS[index]


def choice_letters(n: int) -> list[str]:
    """The letters of ``n`` choices: ``choice_letters(3) == ["A", "B", "C"]``."""
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= len(LETTERS):
        raise ValueError(f"number of choices must be an int in [0, {len(LETTERS)}], got {n!r}")
    return list(LETTERS[:n])


def build_prompt(problem: dict, prompt_format: str, use_caption: bool = False, caption: str = "") -> tuple[str, str]:
    """LaVIN's (input, output) pair for one ScienceQA problem.

    Args:
        problem: a ``problems.json`` record: ``question`` (str), ``choices`` (list of str),
            ``answer`` (int index); ``hint``, ``lecture``, ``solution`` (str, "" when absent).
        prompt_format: one of :data:`PROMPT_FORMATS`, e.g. ``QCM-ALE``.
        use_caption: join ``caption`` to the hint in the context, as LaVIN's ``--use_caption``.
        caption: the problem's caption (``captions.json``), ignored unless ``use_caption``.

    Returns:
        ``(I, O)``: ``I`` ends with ``Response:``; the training text is ``I + O``.
    """
    input_format, output_format = check_format(prompt_format)
    choices = problem["choices"]
    context = " ".join([problem.get("hint") or "", caption if use_caption else ""]).strip()
    fields = {
        "q": problem["question"],
        "c": context or "N/A",
        "m": " ".join(f"({letter}) {choice}" for letter, choice in zip(choice_letters(len(choices)), choices)),
        "a": answer_letter(problem["answer"]),
        "l": (problem.get("lecture") or "").replace("\n", "\\n"),
        "e": (problem.get("solution") or "").replace("\n", "\\n"),
    }
    prompt = "\n" + _INPUTS[input_format].format(**fields) + "Response:"
    output = _OUTPUTS[output_format].format(**fields)
    return prompt.replace("  ", " ").strip(), output.replace("  ", " ").strip()
