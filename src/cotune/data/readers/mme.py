"""The ``mme`` reader: the MME benchmark (``MME_Benchmark_release_version``) in its released layout.

::

    <path>/<subtask>/<name>.txt                              two lines: question<TAB>Yes|No
    <path>/<subtask>/<name>.jpg|.png                         the image the questions ask about
    or, for posters, celebrity, scene, landmark and artwork:
    <path>/<subtask>/questions_answers_YN/<name>.txt
    <path>/<subtask>/images/<name>.jpg|.png

``path`` is the release directory (or a directory holding ``MME_Benchmark_release_version``); the
subtasks are :data:`SUBTASKS` (other directories, such as ``eval_tool``,
are ignored; at least one subtask must be there). MME has no splits: ``split`` is not read.

One sample per question, in subtask order, then file name order, then line order, so an image's
two questions are consecutive. The user turn is the question as written (it ends in "Please answer
yes or no."; no marker: the template puts the image in front), the assistant turn the answer.
Id: ``<subtask>/<name>/<line>`` (line 0 or 1). Metadata: ``{"subtask", "image", "answer",
"answers", "question", "question_type"}`` (``question_type`` is the subtask, so the evaluation's
breakdown is per subtask). A line that is not ``question<TAB>answer`` or whose answer is neither
yes nor no is a ``malformed_record`` skip; a question file without its image a ``missing_media``
skip.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from cotune.config.data import DatasetConfig
from cotune.data.readers import READERS
from cotune.data.readers.common import Record, attach_media, emit
from cotune.data.report import DatasetReport
from cotune.data.schema import Message, Sample, SkipSample

RELEASE = "MME_Benchmark_release_version"
IMAGE_SUFFIXES = (".jpg", ".png", ".jpeg")
#: MME's subtasks: 10 of perception, 4 of cognition (the evaluation tool's lists and order).
PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork", "OCR")
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
SUBTASKS = PERCEPTION + COGNITION


@READERS.register("mme")
def read(config: DatasetConfig, report: DatasetReport) -> Iterator[Sample]:
    """Samples of every MME subtask under ``config.path`` (module docstring)."""
    root = release_root(Path(config.path).expanduser())
    return emit(config, report, _records(root), _sample)


def release_root(path: Path) -> Path:
    """The release directory: ``path`` itself or ``path/MME_Benchmark_release_version``."""
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such directory")
    for candidate in (path, path / RELEASE):
        if any((candidate / subtask).is_dir() for subtask in SUBTASKS):
            return candidate
    raise ValueError(f"{path}: not an MME release directory (expected subtask directories such as {', '.join(SUBTASKS[:4])}, ...)")


def _records(root: Path) -> Iterator[Record]:
    """(position, (subtask, image directory, image stem, line index, line)) per question line."""
    for subtask in SUBTASKS:
        directory = root / subtask
        if not directory.is_dir():
            continue
        questions, images = directory, directory
        if (directory / "images").is_dir():
            questions, images = directory / "questions_answers_YN", directory / "images"
        for path in sorted(questions.glob("*.txt")):
            lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
            for index, line in enumerate(lines):
                yield f"{path} line {index + 1}", (subtask, images, path.stem, index, line)


def _sample(record: tuple, _index: int) -> Sample:
    subtask, images, stem, line_index, line = record
    sample_id = f"{subtask}/{stem}/{line_index}"
    fields = line.split("\t")
    if len(fields) != 2 or not fields[0].strip():
        raise SkipSample("malformed_record", f"{sample_id}: expected question<TAB>answer, got {line!r:.80}")
    question, answer = fields[0].strip(), fields[1].strip()
    if answer.lower() not in ("yes", "no"):
        raise SkipSample("malformed_record", f"{sample_id}: the answer must be Yes or No, got {answer!r:.20}")
    image = next((f"{stem}{suffix}" for suffix in IMAGE_SUFFIXES if (images / f"{stem}{suffix}").is_file()), None)
    if image is None:
        raise SkipSample("missing_media", f"{sample_id}: no image {stem}.jpg or {stem}.png in {images}")
    messages = [Message("user", question), Message("assistant", answer)]
    media = attach_media(sample_id, messages, {"image": [image]}, images)
    metadata = {"subtask": subtask, "image": image, "answer": answer, "answers": [answer], "question": question,
                "question_type": subtask}
    return Sample(sample_id, messages, media, metadata)
