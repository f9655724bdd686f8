"""Dataset readers, registered by exact name.

A reader is ``read(config: DatasetConfig, report: DatasetReport) -> Iterator[Sample]``. It counts
every record it sees in ``report.total``, yields the usable ones as :class:`Sample`, and reports
each unusable record with ``report.skip(reason, detail)`` (reasons from ``SKIP_REASONS``; the
detail names the file and the record). A reader never raises on a bad record; it raises
``FileNotFoundError``/``ValueError`` only when the dataset as a whole cannot be read (no such
directory, not the expected layout), naming the path.
"""

from __future__ import annotations

from cotune.registry import Registry

READERS: Registry = Registry("dataset reader")

# Reader modules register themselves on import; the import list is explicit (no auto-discovery).
from cotune.data.readers import alpaca, audio, easyvqa, hf, jsonl, llava, scienceqa  # noqa: E402,F401

__all__ = ["READERS"]
