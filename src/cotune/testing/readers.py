"""Reading a dataset file through a registered reader, as ``cotune train`` does, and the records and
media files such tests write."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from PIL import Image

from cotune.config.data import DatasetConfig
from cotune.data.readers import READERS
from cotune.data.report import DatasetReport
from cotune.data.schema import Message


def png(path: Path) -> Path:
    """A 4x4 red PNG at ``path`` (parents created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), (255, 0, 0)).save(path)
    return path


def read(kind: str, path: Path, **options):
    """(samples, DatasetReport) of reader ``kind`` over ``path``; ``options``: further DatasetConfig fields."""
    report = DatasetReport(kind)
    samples = list(READERS.get(kind)(DatasetConfig(kind=kind, path=str(path), **options), report))
    return samples, report


def chat(*pairs) -> list[Message]:
    """Messages from (role, content) pairs."""
    return [Message(role, content) for role, content in pairs]


def human(value):
    """A LLaVA-format human turn."""
    return {"from": "human", "value": value}


def gpt(value):
    """A LLaVA-format model turn."""
    return {"from": "gpt", "value": value}


def assert_counts(report, kept, skipped):
    """``report`` kept ``kept`` samples and skipped exactly ``skipped`` (reason -> count)."""
    assert report.skipped == Counter(skipped)
    assert report.total == kept + sum(skipped.values())
