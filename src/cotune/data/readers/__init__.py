"""Dataset readers, registered by exact name.

A reader is ``read(config: DatasetConfig, report: DatasetReport) -> Iterator[Sample]``. It counts
every record it sees in ``report.total``, yields the usable ones as :class:`Sample`, and reports
each unusable record with ``report.skip(reason, detail)`` (reasons from ``SKIP_REASONS``; the
detail names the file and the record). A reader never raises on a bad record; it raises
``FileNotFoundError``/``ValueError`` only when the dataset as a whole cannot be read (no such
directory, not the expected layout), naming the path. :func:`read_dataset` runs a reader and turns
whatever a whole file raises (not UTF-8, not JSON, nested too deep, unreadable) into one
:class:`~cotune.data.schema.DataError` naming the dataset.
"""

from __future__ import annotations

from collections.abc import Iterator

from cotune.config.io import ConfigError, check_choice
from cotune.registry import Registry

READERS: Registry = Registry("dataset reader")

# Reader modules register themselves on import; the import list is explicit (no auto-discovery).
from cotune.data.readers import alpaca, audio, easyvqa, hf, jsonl, llava, mme, scienceqa  # noqa: E402,F401


def check_reader_names(data) -> None:
    """ConfigError naming the key (``data.train[0].kind``) for a dataset of ``data`` (a DataConfig)
    whose ``kind`` is no registered reader, or a ScienceQA dataset whose ``prompt_format`` does not
    exist. The config itself imports no reader; this runs before anything is loaded."""
    from cotune.data.scienceqa_prompt import PROMPT_FORMATS

    for part in ("train", "eval"):
        for i, dataset in enumerate(getattr(data, part)):
            key = f"data.{part}[{i}]"
            if dataset.kind not in READERS:
                raise ConfigError(READERS.unknown_message(dataset.kind, f"{key}.kind"))
            if dataset.kind == "scienceqa":
                check_choice(f"{key}.prompt_format", dataset.prompt_format, PROMPT_FORMATS)


def read_dataset(config, report, key: str = "data.kind") -> Iterator:
    """The samples of ``config`` through its reader (skips counted in ``report``). A data file that
    cannot be read as a whole is one DataError naming the dataset, the file and the problem; a
    missing file stays a FileNotFoundError."""
    from cotune.data.schema import DataError

    reader = READERS.get(config.kind, key=key)
    try:
        yield from reader(config, report)
    except (DataError, FileNotFoundError):
        raise
    except RecursionError:
        raise DataError(f"dataset {config.name}: {config.path}: nested too deeply to read") from None
    except (ValueError, OSError) as err:  # UnicodeDecodeError, JSON and CSV errors, permissions
        message = " ".join(str(err).split()) or type(err).__name__
        if str(config.path) not in message:
            message = f"{config.path}: {message}"
        raise DataError(f"dataset {config.name}: {message}") from None


__all__ = ["READERS", "check_reader_names", "read_dataset"]
