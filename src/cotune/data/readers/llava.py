"""The ``llava`` reader: LLaVA's conversation JSON (a list of records, or JSONL one per line).

One record::

    {"id": "000000033471", "image": "coco/train2017/000000033471.jpg",
     "conversations": [{"from": "human", "value": "<image>\\nWhat are the colors of the bus?"},
                       {"from": "gpt", "value": "White and red."},
                       {"from": "human", "value": "What feature can be seen on the back?"},
                       {"from": "gpt", "value": "An advertisement."}]}

``from`` is ``human``/``user`` (-> user), ``gpt``/``assistant`` (-> assistant) or ``system``; turns
alternate from a user turn and end on an assistant turn. ``<image>`` markers stay where they are in
the text; their count must be 0 (the template places the marker) or the number of images. ``image``
is optional (text-only record), a path or a list of paths relative to the media root
(``config.media_root``, default: the JSON file's directory). ``id`` is optional (default
``<file stem>-<record index>``). ``path`` is the JSON/JSONL file; ``split`` only picks the file
when ``path`` is a directory (``<split>.json`` or ``*_<split>.json``).
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
    conversation,
    data_file,
    emit,
    json_records,
    media_root,
    path_list,
    record_id,
)
from cotune.data.report import DatasetReport
from cotune.data.schema import Message, Sample, SkipSample

#: LLaVA's ``from`` values (lower-cased) -> message roles.
ROLE_NAMES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


@READERS.register("llava")
def read(config: DatasetConfig, report: DatasetReport) -> Iterator[Sample]:
    """Samples of a LLaVA conversation file (module docstring)."""
    path = data_file(config, (".json", ".jsonl"))
    root = media_root(config, path.parent)
    return emit(config, report, json_records(path), partial(_sample, stem=path.stem, root=root))


def _sample(record: Any, index: int, *, stem: str, root: Path) -> Sample:
    record = as_object(record)
    sample_id = record_id(record, f"{stem}-{index}")
    messages = llava_messages(record.get("conversations"))
    images = path_list(record.get("image"), "image")
    return Sample(sample_id, messages, attach_media(sample_id, messages, {"image": images}, root))


def llava_messages(turns: Any) -> list[Message]:
    """Checked messages from LLaVA ``conversations`` (a list of ``{"from", "value"}``)."""
    if turns is None or turns == []:
        raise SkipSample("missing_field", "no 'conversations'")
    if not isinstance(turns, list):
        raise SkipSample("malformed_record", "'conversations' must be a list of turns")
    pairs = []
    for i, turn in enumerate(turns):
        speaker = turn.get("from") if isinstance(turn, dict) else None
        role = ROLE_NAMES.get(speaker.lower()) if isinstance(speaker, str) else None
        if role is None:
            raise SkipSample("malformed_record", f"conversations[{i}]: 'from' must be one of {sorted(ROLE_NAMES)}")
        pairs.append((role, turn.get("value")))
    return conversation(pairs, "conversations")
