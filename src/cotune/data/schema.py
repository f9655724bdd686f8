"""The one sample schema every reader produces, and the skip signal for bad records.

A :class:`Sample` is a conversation (``messages``) whose text may contain media markers
(``<image>``, ``<audio>``) plus the media files they refer to, in marker order per kind. Readers
need not place markers: a sample with media but no markers gets them in front of its first user
message when rendered (or in LaVIN's ``Image: `` header with the ``lavin`` template).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROLES = ("system", "user", "assistant")
#: Media kinds and the marker a reader writes into message text for one item of that kind.
MEDIA_MARKERS = {"image": "<image>", "audio": "<audio>"}


@dataclass
class Message:
    role: str
    content: str


@dataclass
class Sample:
    """One instruction sample.

    id: unique within its dataset (used in every error and skip report).
    messages: system/user/assistant turns; assistant turns are the supervised targets.
    media: kind (``image``/``audio``) -> file paths, in the order of that kind's markers.
    metadata: reader-specific fields kept for evaluation (e.g. ScienceQA subject, grade, answer).
    """

    id: str
    messages: list[Message]
    media: dict[str, list[Path]] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def kinds(self) -> list[str]:
        """Media kinds present, in MEDIA_MARKERS order."""
        return [k for k in MEDIA_MARKERS if self.media.get(k)]


class DataError(ValueError):
    """A dataset is unusable as a whole (a data file that cannot be read, too many bad samples,
    nothing left); the message names the dataset and the file, and shows examples."""


class SkipSample(Exception):
    """A record cannot be used; ``reason`` is a short stable code, ``detail`` says what and where."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


#: Stable skip reasons (reports and tests key on these strings).
SKIP_REASONS = (
    "malformed_record",      # JSON/CSV record that cannot be parsed or has wrong types
    "missing_field",         # a required field is absent or empty
    "empty_answer",          # the supervised answer is empty
    "missing_media",         # the media file does not exist
    "unreadable_media",      # the file exists but cannot be decoded (corrupt, truncated, not media)
    "zero_length_audio",     # audio with no samples
    "path_escapes_root",     # a media path that resolves outside the dataset root
    "too_long",              # would not fit max_length without cutting the answer
    "no_supervised_tokens",  # the template left no supervised token (LLaVA's tokenization mismatch)
    "template_mismatch",     # the template's renderings are not prefixes of each other
    "marker_mismatch",       # media markers in the text and media files disagree
    "unsupported_media",     # the sample has a media kind that no encoder of the model reads
)


def shown(text: str) -> str:
    """``text`` safe to print and log: a lone surrogate becomes its ``\\udXXX`` escape."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def check_text(sample: Sample) -> None:
    """SkipSample (``malformed_record``) when the id or a message of ``sample`` is not valid Unicode:
    JSON may spell lone surrogates (``"\\ud800"``), which no tokenizer and no UTF-8 file accepts."""
    fields = [("id", sample.id)] + [(f"message {i} ({m.role})", m.content) for i, m in enumerate(sample.messages)]
    for where, text in fields:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as err:
            raise SkipSample("malformed_record", f"{shown(sample.id)}: {where} holds a lone surrogate "
                                                 f"({ascii(text[err.start])} at character {err.start}), not valid Unicode") from None


def resolve_media_path(root: Path, relative: str, sample_id: str) -> Path:
    """``root / relative`` resolved; raises SkipSample if it escapes ``root`` or does not exist."""
    root = root.resolve()
    path = (root / relative).resolve()
    if path != root and root not in path.parents:
        raise SkipSample("path_escapes_root", f"{sample_id}: {relative!r} resolves outside {root}")
    if not path.is_file():
        raise SkipSample("missing_media", f"{sample_id}: {path} does not exist")
    return path
