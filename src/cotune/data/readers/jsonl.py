"""The generic ``jsonl`` reader.

One JSON object per line::

    {"id": "q1", "image": "imgs/1.png", "audio": ["clips/1.wav"],
     "messages": [{"role": "user", "content": "<image>\\n<audio>\\nWhat makes this sound?"},
                  {"role": "assistant", "content": "The dog."}]}

``id`` is optional (default ``<file stem>-<record index>``); ``image``/``audio`` are a path or a
list of paths relative to the media root (``config.media_root``, default: the file's directory);
``metadata`` (an object) is passed through for evaluation. A ``content`` may also be a list of
parts (``{"type": "text", "text": ...}``, ``{"type": "image"}``, ``{"type": "audio"}``), joined
with newlines, a media part becoming its marker. Markers are optional; where a kind's markers are
present their count must equal its number of files. A file ending in ``.json`` is read as one JSON
list of such records instead of line by line.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

from cotune.config.data import DatasetConfig
from cotune.data.readers import READERS
from cotune.data.readers.common import (
    as_object,
    attach_media,
    chat_messages,
    data_file,
    emit,
    json_records,
    media_root,
    path_list,
    record_id,
)
from cotune.data.report import DatasetReport
from cotune.data.schema import MEDIA_MARKERS, Sample, SkipSample


@READERS.register("jsonl")
def read(config: DatasetConfig, report: DatasetReport) -> Iterator[Sample]:
    """Samples of a JSONL chat file (module docstring); ``split`` picks the file in a directory."""
    path = data_file(config, (".jsonl", ".json"))
    root = media_root(config, path.parent)
    return emit(config, report, json_records(path), partial(_sample, stem=path.stem, root=root))


def _sample(record: Any, index: int, *, stem: str, root: Path) -> Sample:
    record = as_object(record)
    sample_id = record_id(record, f"{stem}-{index}")
    messages = chat_messages(record.get("messages"), "messages")
    media = {kind: path_list(record.get(kind), kind) for kind in MEDIA_MARKERS}
    metadata = record.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise SkipSample("malformed_record", f"{sample_id}: 'metadata' must be an object")
    return Sample(sample_id, messages, attach_media(sample_id, messages, media, root), metadata)
