"""ScienceQA accuracy and its breakdown (LaVIN's columns), and plain multiple-choice accuracy.

Columns (percent of the subset answered correctly, two decimals):

* ``NAT`` / ``SOC`` / ``LAN``: ``subject`` is natural / social / language science (a partition).
* ``TXT``: ``hint`` non-empty, whether or not there is an image. ``IMG``: ``image`` not null, whether
  or not there is a hint. ``NO``: neither. TXT and IMG overlap; NO is disjoint from both. Captions
  never count as context.
* ``G1-6`` / ``G7-12``: ``grade`` is grade1..grade6 / grade7..grade12 (a partition).
* ``Avg``: every scored problem. A problem without a prediction counts as wrong.

Prediction policy: a prediction for a pid outside the scored pids is an error (a wrong split or
file, listing a few pids); an answer of -1 (nothing extracted) is wrong; any other index outside
the problem's choices is wrong, counted in ``out_of_range`` and logged as a warning.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from cotune.eval.extract import RULES
from cotune.eval.metrics import METRICS, ScoreError, percent

log = logging.getLogger(__name__)

#: The breakdown columns, in the order of LaVIN's and ScienceQA's tables.
COLUMNS = ("NAT", "SOC", "LAN", "TXT", "IMG", "NO", "G1-6", "G7-12", "Avg")
SUBJECTS = {"natural science": "NAT", "social science": "SOC", "language science": "LAN"}
_GRADE = re.compile(r"grade(\d+)")
_SHOW = 5  # how many offending ids an error or warning names


def problem_columns(problem: Mapping[str, Any]) -> tuple[str, ...]:
    """The breakdown columns a problem counts in (``Avg`` always); ScoreError on an unknown subject or grade."""
    subject = SUBJECTS.get(problem.get("subject"))
    if subject is None:
        raise ScoreError(f"subject {problem.get('subject')!r} is not one of {', '.join(map(repr, SUBJECTS))}")
    grade = _GRADE.fullmatch(str(problem.get("grade")))
    if grade is None or not 1 <= int(grade.group(1)) <= 12:
        raise ScoreError(f"grade {problem.get('grade')!r} is not grade1..grade12")
    has_text, has_image = bool(problem.get("hint")), problem.get("image") is not None
    columns = [subject]
    columns += ["TXT"] if has_text else []
    columns += ["IMG"] if has_image else []
    columns += [] if has_text or has_image else ["NO"]
    columns.append("G1-6" if int(grade.group(1)) <= 6 else "G7-12")
    columns.append("Avg")
    return tuple(columns)


@METRICS.register("scienceqa")
def scienceqa(
    problems: Mapping[str, Mapping[str, Any]],
    predictions: Mapping[str, int],
    pids: Sequence[str] | None = None,
    rules: Mapping[str, str] | None = None,
) -> dict:
    """The ScienceQA breakdown of ``predictions`` over ``pids``.

    Args:
        problems: pid -> problem as in problems.json (``subject``, ``grade``, ``hint``, ``image``,
            ``choices``, ``answer`` are read).
        predictions: pid -> predicted choice index (-1: nothing extracted).
        pids: the pids scored, e.g. ``pid_splits["test"]``; default: every pid of ``problems``.
        rules: optional pid -> extraction rule (:data:`cotune.eval.extract.RULES`) for the predictions.

    Returns:
        ``{column: percent or None}`` for every column of :data:`COLUMNS`, ``accuracy`` (= ``Avg``),
        ``counts`` and ``correct`` (per column), ``total``, ``missing`` (scored pids without a
        prediction), ``unparsed`` (answer -1), ``out_of_range``, and ``rules`` (uses per rule,
        only when ``rules`` is given).
    """
    pids = list(problems) if pids is None else list(pids)
    _check_pids(problems, pids)
    _check_predictions(predictions, set(pids))
    counts, correct = Counter(), Counter()
    missing, unparsed, out_of_range = [], 0, []
    for pid in pids:
        problem = problems[pid]
        try:
            columns = problem_columns(problem)
        except ScoreError as err:
            raise ScoreError(f"problem {pid}: {err}") from None
        counts.update(columns)
        answer = predictions.get(pid)
        if answer is None:
            missing.append(pid)
            continue
        unparsed += answer == -1
        if answer != -1 and not 0 <= answer < len(problem["choices"]):
            out_of_range.append(pid)
        if answer == problem["answer"]:
            correct.update(columns)
    if out_of_range:
        log.warning(
            "%d prediction(s) outside their problem's choices count as wrong (e.g. %s)",
            len(out_of_range), ", ".join(out_of_range[:_SHOW]),
        )
    result: dict[str, Any] = {column: percent(correct[column], counts[column]) for column in COLUMNS}
    result.update(
        accuracy=result["Avg"],
        counts={column: counts[column] for column in COLUMNS},
        correct={column: correct[column] for column in COLUMNS},
        total=len(pids),
        missing=len(missing),
        unparsed=unparsed,
        out_of_range=len(out_of_range),
    )
    if rules is not None:
        result["rules"] = _count_rules(rules, predictions)
    return result


@METRICS.register("multiple-choice")
def multiple_choice(predictions: Mapping[str, int], answers: Mapping[str, int]) -> dict:
    """Plain accuracy of predicted choice indices against ``answers`` (id -> index).

    Every id of ``answers`` is scored; one without a prediction counts as wrong. A prediction for
    an id not in ``answers`` is an error. Returns ``accuracy`` (percent), ``correct``, ``count``, ``missing``.
    """
    _check_predictions(predictions, set(answers))
    correct = sum(predictions.get(key) == answer for key, answer in answers.items())
    missing = sum(key not in predictions for key in answers)
    return {"accuracy": percent(correct, len(answers)), "correct": correct, "count": len(answers), "missing": missing}


def _check_pids(problems: Mapping[str, Any], pids: list) -> None:
    if not pids:
        raise ScoreError("no problems to score (the split is empty)")
    absent = [pid for pid in pids if pid not in problems]
    if absent:
        raise ScoreError(f"{len(absent)} pids of the split are not in the problems (e.g. {', '.join(map(str, absent[:_SHOW]))})")
    if len(set(pids)) != len(pids):
        repeated = [pid for pid, n in Counter(pids).items() if n > 1]
        raise ScoreError(f"the split repeats {len(repeated)} pids (e.g. {', '.join(map(str, repeated[:_SHOW]))})")


def _check_predictions(predictions: Mapping[str, Any], known: set) -> None:
    """ScoreError for predictions of unknown ids or that are not integer indices."""
    if not isinstance(predictions, Mapping):
        raise ScoreError(f"predictions must map ids to choice indices, got a {type(predictions).__name__}")
    unknown = [key for key in predictions if key not in known]
    if unknown:
        raise ScoreError(
            f"{len(unknown)} of {len(predictions)} predictions are for ids that are not scored "
            f"(not among the {len(known)} ids of the split; e.g. {', '.join(map(repr, unknown[:_SHOW]))})"
        )
    for key, value in predictions.items():
        if isinstance(value, bool) or not isinstance(value, int):
            raise ScoreError(f"prediction for {key!r} must be a choice index (an integer, -1 for none), got {value!r}")


def _count_rules(rules: Mapping[str, str], predictions: Mapping[str, Any]) -> dict[str, int]:
    counts = Counter()
    for key in predictions:
        if key in rules:
            if rules[key] not in RULES:
                raise ScoreError(f"prediction for {key!r}: unknown extraction rule {rules[key]!r}; valid: {', '.join(RULES)}")
            counts[rules[key]] += 1
    return {rule: counts[rule] for rule in RULES}
