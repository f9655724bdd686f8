"""Counting what was kept and skipped, with examples, for ``data_report.json`` and the log."""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from cotune.fileio import atomic_write_text

log = logging.getLogger(__name__)

EXAMPLES_PER_REASON = 5


@dataclass
class DatasetReport:
    """Counts for one dataset: records seen, samples kept, skips by reason with a few examples."""

    name: str
    total: int = 0
    kept: int = 0
    filtered: int = 0  # left out on purpose (``DatasetConfig.answers``), not part of ``total``
    skipped: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    dropped_at_load: dict[str, str] = field(default_factory=dict)  # sample id -> reason

    def skip_at_load(self, sample_id: str, reason: str, detail: str) -> None:
        """A kept sample whose media failed to decode while loading; counted once per sample
        however many epochs meet it."""
        if sample_id not in self.dropped_at_load:
            self.dropped_at_load[sample_id] = reason
            self.kept -= 1
            self.skip(reason, detail)

    def skip(self, reason: str, detail: str) -> None:
        self.skipped[reason] += 1
        shown = self.examples.setdefault(reason, [])
        if len(shown) < EXAMPLES_PER_REASON:
            shown.append(detail)

    def merge(self, other: "DatasetReport") -> None:
        self.total += other.total
        self.kept += other.kept
        self.filtered += other.filtered
        self.skipped.update(other.skipped)
        for reason, details in other.examples.items():
            shown = self.examples.setdefault(reason, [])
            shown.extend(details[: EXAMPLES_PER_REASON - len(shown)])

    def as_dict(self) -> dict:
        return {
            "total": self.total,
            "kept": self.kept,
            "filtered": self.filtered,
            "skipped": dict(sorted(self.skipped.items())),
            "examples": {k: v for k, v in sorted(self.examples.items())},
        }


@dataclass
class DataReport:
    """Reports of all datasets of a run; ``as_dict`` is the ``data_report.json`` content."""

    datasets: dict[str, DatasetReport] = field(default_factory=dict)

    def dataset(self, name: str) -> DatasetReport:
        return self.datasets.setdefault(name, DatasetReport(name))

    def record_batch(self, batch: dict) -> None:
        """Counts the items a collated batch dropped (``batch["skipped"]``)."""
        for dataset, sample_id, reason, detail in batch.get("skipped", ()):
            self.dataset(dataset).skip_at_load(sample_id, reason, detail)

    def as_dict(self) -> dict:
        total = DatasetReport("all")
        for report in self.datasets.values():
            total.merge(report)
        summary = total.as_dict()
        return {
            "total": summary["total"],
            "kept": summary["kept"],
            "filtered": summary["filtered"],
            "skipped": summary["skipped"],
            "datasets": {name: r.as_dict() for name, r in self.datasets.items()},
        }

    def write(self, path: str | Path) -> Path:
        return atomic_write_text(path, json.dumps(self.as_dict(), indent=2))

    def log_summary(self) -> None:
        for name, report in self.datasets.items():
            skipped = sum(report.skipped.values())
            filtered = f" ({report.filtered} more left out by answers:)" if report.filtered else ""
            log.info("data %s: %d records, %d kept, %d skipped %s%s", name, report.total, report.kept, skipped, dict(report.skipped), filtered)
