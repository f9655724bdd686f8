"""The results layout MME's evaluation tool reads: one ``<subtask>.txt`` per subtask in a directory,
one line per question, ``image<TAB>question<TAB>answer<TAB>prediction``, an image's two questions
on consecutive lines.

:func:`read_results` reads it for ``cotune score mme``; :func:`write_results` writes it from
``cotune eval``'s MME records, so the official tool can score cotune's answers too. A prediction's
tabs and line breaks are written as spaces, one for one (the tool splits lines on them), which
does not change how it is read (:func:`~cotune.eval.metrics.mme.parse_answer`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from cotune.eval.metrics import ScoreError
from cotune.eval.metrics.mme import SUBTASKS, MMEItem
from cotune.fileio import atomic_write_text

log = logging.getLogger(__name__)


def read_results(directory: str | Path) -> list[MMEItem]:
    """Every question of the ``<subtask>.txt`` files in ``directory`` (subtasks in MME's order).

    Raises:
        FileNotFoundError: ``directory`` is not a directory.
        ScoreError: no subtask file, or a line that is not four tab-separated fields, or an odd
            number of lines, or two paired lines about different images (naming file and line).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"--results {directory}: no such directory")
    items: list[MMEItem] = []
    for subtask in SUBTASKS:
        path = directory / f"{subtask}.txt"
        if path.is_file():
            items += _read_subtask(path, subtask)
    if not items:
        raise ScoreError(f"--results {directory}: no subtask file with questions (expected <subtask>.txt for {', '.join(SUBTASKS)})")
    return items


def _read_subtask(path: Path, subtask: str) -> list[MMEItem]:
    lines = [(n, line) for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1) if line.strip()]
    if len(lines) % 2:
        raise ScoreError(f"{path}: {len(lines)} lines; MME pairs two questions per image, so the count must be even")
    items = []
    for number, line in lines:
        fields = line.split("\t")
        if len(fields) != 4:
            raise ScoreError(f"{path}:{number}: expected image<TAB>question<TAB>answer<TAB>prediction, got {len(fields)} fields")
        image, _question, answer, prediction = fields
        if answer.lower() not in ("yes", "no"):
            raise ScoreError(f"{path}:{number}: the answer must be yes or no, got {answer!r}")
        items.append(MMEItem(subtask, image, answer, prediction))
    for (number, _), first, second in zip(lines[::2], items[::2], items[1::2]):
        if first.image != second.image:
            raise ScoreError(f"{path}:{number}: lines {number} and the next are a pair but name images {first.image!r} and {second.image!r}")
    return items


def write_results(directory: str | Path, records: Sequence[dict]) -> list[str]:
    """Writes ``directory/<subtask>.txt`` from MME records of predictions.jsonl (keys ``subtask``,
    ``image``, ``question``, ``references``, ``prediction``), atomically per file; returns the
    subtasks written. Images with fewer than two evaluated questions are left out (the tool would
    pair the wrong lines) and logged."""
    by_image: dict[str, dict[str, list[dict]]] = {}
    for record in records:
        by_image.setdefault(record["subtask"], {}).setdefault(record["image"], []).append(record)
    written = []
    for subtask in (s for s in SUBTASKS if s in by_image):
        pairs = [pair for pair in by_image[subtask].values() if len(pair) == 2]
        if len(pairs) < len(by_image[subtask]):
            log.warning("MME results %s: %d image(s) without both questions evaluated left out", subtask, len(by_image[subtask]) - len(pairs))
        if not pairs:
            continue
        lines = [
            "\t".join((_field(r["image"]), _field(r["question"]), r["references"][0], _field(r["prediction"]))) + "\n"
            for pair in pairs for r in pair
        ]
        atomic_write_text(Path(directory) / f"{subtask}.txt", "".join(lines))
        written.append(subtask)
    return written


#: Tabs and every character str.splitlines() breaks at, each written as one space (one for one, so
#: the first four characters the tool looks at stay the same characters).
_BREAKS = str.maketrans({c: " " for c in "\t\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"})


def _field(text: str) -> str:
    return text.translate(_BREAKS)
