"""The ``easyvqa`` reader: the easy-VQA dataset (pip package ``easy-vqa``) in its shipped layout.

::

    <data>/answers.txt                  the 13 answers, one a line (not read)
    <data>/<split>/questions.json       [[question, answer, image_id], ...]
    <data>/<split>/images/<image_id>.png

``path`` is ``<data>`` or a directory holding ``easy_vqa/data`` (an unzipped wheel or a
site-packages directory); ``split`` is ``train`` or ``test``. ``media_root`` replaces
``<data>/<split>/images``.

One sample per question: the user turn is the question (no marker: the template puts the image in
front), the assistant turn the answer word. Id: ``<split>-<k>``, k the question's index in
questions.json, so ids are stable as long as the file is. Metadata:
``{"answer", "answers": [answer], "question", "image_id", "question_type"}`` (``answers`` is the
reference list the ``vqa`` metric takes; ``question_type`` is ``yes_no``, ``shape`` or ``color``,
from the answer: easy-VQA's 13 answers are yes, no, three shapes and eight colours), plus
``description`` (``"blue circle"``) when the split's open questions about the same image name both
its colour and its shape (for ``targets: describe``; 2,435 of the train split's 4,000 images).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

from cotune.config.data import DatasetConfig
from cotune.data.questions import YES_NO, answer_word
from cotune.data.readers import READERS
from cotune.data.readers.common import attach_media, emit, json_records, media_root
from cotune.data.report import DatasetReport
from cotune.data.schema import Message, Sample, SkipSample


@READERS.register("easyvqa")
def read(config: DatasetConfig, report: DatasetReport) -> Iterator[Sample]:
    """Samples of one easy-VQA split (module docstring)."""
    data = data_root(Path(config.path).expanduser())
    questions = data / config.split / "questions.json"
    if not questions.is_file():
        splits = sorted(p.name for p in data.iterdir() if (p / "questions.json").is_file())
        raise ValueError(f"split: {config.split!r} has no {questions}; splits here: {', '.join(splits) or 'none'}")
    root = media_root(config, data / config.split / "images")
    descriptions = image_descriptions(questions) if config.targets == "describe" else {}
    return emit(config, report, json_records(questions), partial(_sample, split=config.split, root=root, descriptions=descriptions))


def image_descriptions(questions: Path) -> dict[int, str]:
    """image id -> ``"<colour> <shape>"`` for the images whose colour and shape some open question of
    ``questions`` (questions.json) answers; a file that is not a list of records describes nothing
    (the reader reports its records)."""
    try:
        records = json.loads(questions.read_text(encoding="utf-8"))
    except (ValueError, RecursionError):
        return {}
    colour: dict[int, str] = {}
    shape: dict[int, str] = {}
    for record in records if isinstance(records, list) else ():
        if isinstance(record, list) and len(record) == 3 and isinstance(record[1], str) and isinstance(record[2], int):
            kind = question_type(record[1])
            if kind != "yes_no":
                (shape if kind == "shape" else colour)[record[2]] = answer_word(record[1])
    return {image: f"{colour[image]} {shape[image]}" for image in colour.keys() & shape.keys()}


def data_root(path: Path) -> Path:
    """The easy-VQA ``data`` directory: ``path`` itself or ``path/easy_vqa/data``."""
    for candidate in (path, path / "easy_vqa" / "data"):
        if candidate.is_dir() and any((candidate / split / "questions.json").is_file() for split in ("train", "test")):
            return candidate
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such directory")
    raise ValueError(f"{path}: not an easy-VQA data directory (expected train/questions.json or easy_vqa/data/train/questions.json)")


SHAPES = frozenset({"circle", "rectangle", "triangle"})


def question_type(answer: str) -> str:
    """``yes_no``, ``shape`` or ``color`` (module docstring)."""
    word = answer_word(answer)
    return "yes_no" if word in YES_NO else "shape" if word in SHAPES else "color"


def _sample(record: Any, index: int, *, split: str, root: Path, descriptions: dict[int, str]) -> Sample:
    sample_id = f"{split}-{index}"
    if not isinstance(record, list) or len(record) != 3:
        raise SkipSample("malformed_record", f"{sample_id}: expected [question, answer, image_id], got {record!r:.80}")
    question, answer, image_id = record
    if not isinstance(question, str) or not isinstance(answer, str):
        raise SkipSample("malformed_record", f"{sample_id}: question and answer must be strings, got {record!r:.80}")
    # A bool is an int in Python; true/false is not an image id.
    if isinstance(image_id, bool) or not isinstance(image_id, int) or image_id < 0:
        raise SkipSample("malformed_record", f"{sample_id}: image_id must be a non-negative integer, got {image_id!r}")
    if not question.strip():
        raise SkipSample("missing_field", f"{sample_id}: empty question")
    if not answer.strip():
        raise SkipSample("empty_answer", f"{sample_id}: empty answer")
    question, answer = question.strip(), answer.strip()
    messages = [Message("user", question), Message("assistant", answer)]
    media = attach_media(sample_id, messages, {"image": [f"{image_id}.png"]}, root)
    metadata = {"answer": answer, "answers": [answer], "question": question, "image_id": image_id,
                "question_type": question_type(answer)}
    if image_id in descriptions:
        metadata["description"] = descriptions[image_id]
    return Sample(sample_id, messages, media, metadata)
