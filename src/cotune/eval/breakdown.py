"""Accuracy by answer type and against the wording prior, and the gap an ablation opens.

Every scored evaluation gets a ``breakdown`` (:func:`breakdown`) computed from its records:

- ``by_answer_type``: ``yes_no`` (every reference is yes or no) and ``open`` (the rest), each
  ``{"accuracy", "count"}``; ``by_question_type`` too where the samples carry a
  ``metadata["question_type"]`` (easy-VQA: ``yes_no``, ``color``, ``shape``; sound QA: its CSV's
  ``question_type`` column).
- ``yes_no_balanced_accuracy``: the mean of the accuracy on yes-questions and on no-questions, so
  answering "yes" to everything scores 50, not the share of yeses.
- ``wording_prior``: what a reader of the question alone gets right. Yes/no questions split by
  polarity (``negated``: the question contains not/no/n't/never; else ``affirmative``); each
  polarity's majority answer in the evaluated set is its prior answer. ``accuracy`` is answering
  every yes/no question with its prior answer; ``follows_prior`` and ``counter_prior`` are the
  model's accuracy on the questions whose answer is / is not that prior answer. A model that reads
  the question only is right on ``follows_prior`` and wrong on ``counter_prior``.

:func:`reliance` compares the breakdowns of the normal evaluation (own media) and an ablated one:
per group the two accuracies and their ``gap`` (own - ablated, in points).
"""

from __future__ import annotations

from collections.abc import Sequence

from cotune.data.questions import YES_NO, polarity
from cotune.eval.metrics import percent
from cotune.eval.metrics.vqa import normalize_answer

__all__ = ["breakdown", "group_accuracies", "is_yes_no", "polarity", "prior_split", "reliance", "wording_prior"]


def is_yes_no(references: Sequence[str]) -> bool:
    refs = [normalize_answer(r) for r in references]
    return bool(refs) and all(r in YES_NO for r in refs)


def _group(records: Sequence[dict]) -> dict:
    right = sum(1 for r in records if r.get("correct"))
    return {"accuracy": percent(right, len(records)), "count": len(records)}


def breakdown(records: Sequence[dict], metadata: dict[str, dict] | None = None) -> dict:
    """The module docstring's breakdown of scored ``records`` (predictions.jsonl rows with
    ``correct``, ``question`` and ``references``); ``metadata``: sample id -> metadata."""
    metadata = metadata or {}
    scored = [r for r in records if r.get("correct") is not None]
    kinds = [is_yes_no(r["references"]) for r in scored]
    yes_no = [r for r, kind in zip(scored, kinds) if kind]
    open_ = [r for r, kind in zip(scored, kinds) if not kind]
    result = {"by_answer_type": {"yes_no": _group(yes_no), "open": _group(open_)}}
    types: dict[str, list[dict]] = {}
    for record in scored:
        kind = (metadata.get(record["id"]) or {}).get("question_type")
        if kind is not None:
            types.setdefault(str(kind), []).append(record)
    if types:
        result["by_question_type"] = {k: _group(v) for k, v in sorted(types.items())}
    by_answer = {a: [r for r in yes_no if normalize_answer(r["references"][0]) == a] for a in ("yes", "no")}
    rates = [100.0 * sum(1 for r in v if r["correct"]) / len(v) for v in by_answer.values() if v]
    result["yes_no_balanced_accuracy"] = round(sum(rates) / len(rates), 2) if rates else None
    result["wording_prior"] = wording_prior(yes_no)
    return result


def prior_split(yes_no: Sequence[dict]) -> tuple[dict, dict, list[bool | None]]:
    """Of yes/no records (``question``, ``references``): answer counts per polarity, each
    polarity's majority answer (None on a tie), and per record whether its answer is that majority
    (True), is not (False: the wording does not predict it), or there is none (None)."""
    groups: dict[str, dict[str, int]] = {}
    for record in yes_no:
        answer = normalize_answer(record["references"][0])
        counts = groups.setdefault(polarity(record["question"]), {"yes": 0, "no": 0})
        counts[answer] += 1
    majority = {p: ("yes" if c["yes"] > c["no"] else "no" if c["no"] > c["yes"] else None) for p, c in sorted(groups.items())}
    follows = []
    for record in yes_no:
        prior = majority[polarity(record["question"])]
        follows.append(None if prior is None else normalize_answer(record["references"][0]) == prior)
    return groups, majority, follows


def wording_prior(yes_no: Sequence[dict]) -> dict:
    """Polarity majorities and the model's accuracy on questions that follow / counter them."""
    groups, majority, split = prior_split(yes_no)
    follows = [r for r, f in zip(yes_no, split) if f is True]
    counters = [r for r, f in zip(yes_no, split) if f is False]
    return {
        "majority": majority,
        "counts": groups,
        "accuracy": percent(len(follows), len(yes_no)),
        "follows_prior": _group(follows),
        "counter_prior": _group(counters),
    }


def group_accuracies(metrics: dict) -> dict[str, tuple[float | None, int]]:
    """Group -> (accuracy, count) of one evaluation's metrics, in the order of :func:`reliance`'s
    groups (module docstring)."""
    parts = metrics.get("breakdown") or {}
    out = {"all": (metrics.get("accuracy"), metrics.get("evaluated", 0))}
    for name, group in (parts.get("by_answer_type") or {}).items():
        out[name] = (group["accuracy"], group["count"])
    for name, group in (parts.get("by_question_type") or {}).items():
        out.setdefault(f"type:{name}", (group["accuracy"], group["count"]))
    prior = parts.get("wording_prior") or {}
    for name in ("follows_prior", "counter_prior"):
        if name in prior:
            out[name] = (prior[name]["accuracy"], prior[name]["count"])
    if parts.get("yes_no_balanced_accuracy") is not None:
        out["yes_no_balanced"] = (parts["yes_no_balanced_accuracy"], out.get("yes_no", (None, 0))[1])
    return out


def reliance(own: dict, ablated: dict) -> dict:
    """Per group: ``{"own", "ablated", "gap", "count"}`` (gap = own - ablated, points; None where
    either side has no accuracy). Groups: ``all``, the answer types, ``type:<question type>``,
    ``follows_prior``, ``counter_prior``, ``yes_no_balanced``."""
    mine, theirs = group_accuracies(own), group_accuracies(ablated)
    result = {}
    for name, (accuracy, count) in mine.items():
        other = theirs.get(name, (None, 0))[0]
        gap = round(accuracy - other, 2) if accuracy is not None and other is not None else None
        result[name] = {"own": accuracy, "ablated": other, "gap": gap, "count": count}
    return result
