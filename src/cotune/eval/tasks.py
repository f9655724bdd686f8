"""The evaluation tasks by dataset name: which reader reads the data, how an answer is taken from
the generated text, what the references are, and which metric scores them.

| task | reader | answer | metric |
|---|---|---|---|
| ``scienceqa`` | ``scienceqa`` | choice letter by :func:`~cotune.eval.extract.extract_answer` | ``scienceqa`` breakdown |
| ``easyvqa`` | ``easyvqa`` | the text after the last ``:`` (else all of it) | ``vqa`` (exact match: one reference) |
| ``audioqa`` | ``audioqa`` | the text after the last ``:`` (else all of it) | ``audioqa`` |
| ``textqa`` | ``alpaca`` | the generated text | ``text-match`` over ``metadata["answers"]`` |
| ``audiocaps`` | ``audiocaps`` | the generated text | ``caption`` (no accuracy) |
| ``llava``, ``jsonl`` | same name | the generated text | ``vqa`` |
| ``mme`` | ``mme`` | yes/no/other by :func:`~cotune.eval.metrics.mme.parse_answer` | ``mme`` (acc, acc+, totals) |

References of open-ended tasks are the sample's ``metadata["answers"]`` or ``["references"]``
(lists), else ``[metadata["answer"]]``, else its reference answer (the last assistant turn).
Tasks whose models may be trained to describe their media before a yes/no answer
(``targets: describe``: ``blue circle: no``) score the part after the last ``:``; the whole
continuation stays in predictions.jsonl. Nothing here loads a model.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cotune.data.schema import Sample
from cotune.eval.extract import extract_answer
from cotune.eval.metrics import METRICS, ScoreError
from cotune.eval.metrics.mme import MMEItem, parse_answer
from cotune.registry import Registry


@dataclass(frozen=True)
class EvalTask:
    """One evaluation task: ``reader`` (a READERS key), ``metric`` (a METRICS key), and whether
    answers are choice letters extracted from the text (``multiple_choice``) or the text after a
    description (``after_description``: module docstring)."""

    name: str
    reader: str
    metric: str
    description: str
    multiple_choice: bool = False
    after_description: bool = False

    @property
    def has_accuracy(self) -> bool:
        return self.metric != "caption"


TASKS: Registry = Registry("evaluation dataset")

for _task in (
    EvalTask("scienceqa", "scienceqa", "scienceqa", "ScienceQA: 'The answer is X.' extraction, NAT..Avg breakdown", True),
    EvalTask("easyvqa", "easyvqa", "vqa", "easy-VQA: exact match of the answer word", after_description=True),
    EvalTask("audioqa", "audioqa", "audioqa", "ClothoAQA-style audio QA: yes/no and single-word accuracy", after_description=True),
    EvalTask("textqa", "alpaca", "text-match", "text QA (Alpaca JSON with metadata answers): text match"),
    EvalTask("audiocaps", "audiocaps", "caption", "audio captioning: BLEU, ROUGE-L, CIDEr-D"),
    EvalTask("llava", "llava", "vqa", "LLaVA conversation JSON: VQA accuracy of the last answer"),
    EvalTask("jsonl", "jsonl", "vqa", "generic chat JSONL: VQA accuracy of the last answer"),
    EvalTask("mme", "mme", "mme", "MME: yes/no read as MME's tool reads it, acc and acc+ per subtask, perception/cognition"),
):
    TASKS.register(_task.name)(_task)


def parse_dataset(spec: str, flag: str = "--dataset") -> tuple[EvalTask, Path]:
    """``NAME[:PATH]`` -> (task, dataset path). Without ``:PATH`` the path is the zoo's default
    location for NAME (:func:`cotune.zoo.dataset_dir`)."""
    name, sep, path = spec.partition(":")
    task = TASKS.get(name, key=flag)
    return task, _location(name, sep, path, flag)


def parse_data(spec: str, flag: str = "--data") -> tuple[str, Path]:
    """``NAME[:PATH]`` by :func:`parse_dataset`'s rule, for commands that read without scoring
    (``cotune predict --data``): NAME is an evaluation task (read by its reader) or any reader
    kind -> (reader kind, dataset path)."""
    from cotune.data.readers import READERS
    from cotune.registry import UnknownNameError

    name, sep, path = spec.partition(":")
    if name in TASKS:
        reader = TASKS.get(name).reader
    elif name in READERS:
        reader = name
    else:
        raise UnknownNameError(f"{flag}: unknown dataset {name!r}; NAME is a task ({', '.join(TASKS.names())}) or a "
                               f"reader kind ({', '.join(READERS.names())})")
    return reader, _location(name, sep, path, flag)


def _location(name: str, sep: str, path: str, flag: str) -> Path:
    """The PATH of ``flag NAME[:PATH]``; without ``:PATH``, the zoo's fetched copy of NAME."""
    if sep:
        if not path:
            raise FileNotFoundError(f"{flag} {name}:: empty PATH after ':'")
        return Path(path).expanduser()
    try:
        from cotune.zoo import ZooError, dataset_dir
    except ImportError:
        raise FileNotFoundError(
            f"{flag} {name!r}: no default location (cotune.zoo.dataset_dir is not available); pass {flag} {name}:PATH"
        ) from None
    try:
        return Path(dataset_dir(name))
    except ZooError as err:
        raise FileNotFoundError(f"{flag} {name!r} names no path and the zoo has none ({err}); pass {flag} {name}:PATH") from None


def references(sample: Sample) -> list[str]:
    """The reference answers of an open-ended sample (module docstring)."""
    metadata = sample.metadata or {}
    for key in ("answers", "references"):
        value = metadata.get(key)
        if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            return list(value)
    if isinstance(metadata.get("answer"), str) and metadata["answer"].strip():
        return [metadata["answer"]]
    answers = [m.content for m in sample.messages if m.role == "assistant"]
    return [answers[-1]] if answers else []


def letter(index: int) -> str:
    """Choice index -> its letter (``""`` for -1, nothing extracted)."""
    return chr(ord("A") + index) if index >= 0 else ""


def item_record(task: EvalTask, sample: Sample, prediction: str) -> dict:
    """One line of predictions.jsonl without ``correct``: id, question, prediction, extracted
    ``answer`` and ``references`` (plus ``choice``, ``target`` and ``rule`` for multiple choice,
    ``subtask`` and ``image`` for MME, whose ``answer`` is ``yes``, ``no`` or ``other``)."""
    question = next((m.content for m in reversed(sample.messages) if m.role == "user"), "")
    record = {"id": sample.id, "question": question, "prediction": prediction}
    if task.multiple_choice:
        choices, target = sample.metadata["choices"], sample.metadata["answer"]
        extraction = extract_answer(prediction, choices)
        record.update(answer=letter(extraction.index), references=[letter(target)], choice=extraction.index,
                      target=target, rule=extraction.rule)
    elif task.metric == "mme":
        meta = sample.metadata
        record.update(answer=parse_answer(prediction), references=[meta["answer"]], subtask=meta["subtask"], image=meta["image"])
    else:
        answer = prediction.rpartition(":")[2] if task.after_description else prediction
        record.update(answer=answer.strip(), references=references(sample))
    return record


def score(task: EvalTask, records: list[dict], metadata: dict[str, dict]) -> dict:
    """The task's metric over ``records`` (item_record dicts), setting each record's ``correct``
    (True/False; None for tasks without accuracy). ``metadata``: sample id -> sample metadata."""
    if task.multiple_choice:
        return _score_choices(records, metadata)
    if task.metric == "mme":
        items = [MMEItem(r["subtask"], r["image"], r["references"][0], r["prediction"]) for r in records]
        for record in records:
            record["correct"] = record["answer"] == record["references"][0].lower()
        return METRICS.get("mme")(items)
    metric = METRICS.get(task.metric, key=f"task {task.name}")
    answers, refs = [r["answer"] for r in records], [r["references"] for r in records]
    for record in records:
        record["correct"] = _item_correct(metric, record["answer"], record["references"]) if task.has_accuracy else None
    return metric(answers, refs)


def _item_correct(metric, answer: str, refs: Sequence[str]) -> bool:
    """Full marks for this item alone (for VQA with several references: enough of them match)."""
    try:
        return metric([answer], [list(refs)]).get("accuracy") == 100.0
    except ScoreError:
        return False


def _score_choices(records: list[dict], metadata: dict[str, dict]) -> dict:
    """The ScienceQA breakdown from the samples' metadata, plus how often extraction fell back."""
    problems, predictions, rules = {}, {}, {}
    for record in records:
        meta = metadata[record["id"]]
        problems[record["id"]] = {
            "subject": meta.get("subject"), "grade": meta.get("grade"), "hint": "yes" if meta.get("has_context") else "",
            "image": "yes" if meta.get("has_image") else None, "choices": meta["choices"], "answer": meta["answer"],
        }
        predictions[record["id"]], rules[record["id"]] = record["choice"], record["rule"]
        record["correct"] = record["choice"] == record["target"]
    result = METRICS.get("scienceqa")(problems, predictions, list(problems), rules)
    # Answers not given as "The answer is X" needed a fallback rule (or none matched).
    result["fallbacks"] = sum(n for rule, n in Counter(rules.values()).items() if rule != "answer-is")
    return result
