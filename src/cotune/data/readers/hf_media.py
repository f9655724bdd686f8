"""Media stored inside a Hugging Face dataset (bytes, or ``datasets`` Image/Audio values) as files.

Every later stage of cotune (loading workers, the feature cache, evaluation records, the server)
names media by a file path, so bytes found in a dataset are written once to a content-addressed
folder, ``<cotune cache>/media/<sha256[:2]>/<sha256><ext>`` (the cache is ``$COTUNE_CACHE``, else
``~/.cache/cotune``), and the sample refers to that file. The same bytes always give the same path:
a second read of the dataset writes nothing, and the feature cache finds its entries again. The
extension comes from the value's ``path`` when it has one, else from the bytes' signature; decoding
does not depend on it (Pillow and libsndfile read the header).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from cotune.data.readers.common import path_list
from cotune.data.schema import SkipSample
from cotune.fileio import atomic_write, cache_root

#: Leading bytes -> extension, for values without a path.
SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", ".png"), (b"\xff\xd8\xff", ".jpg"), (b"GIF8", ".gif"), (b"BM", ".bmp"),
    (b"fLaC", ".flac"), (b"OggS", ".ogg"), (b"ID3", ".mp3"),
)


def _extension(data: bytes, hint: Any) -> str:
    if isinstance(hint, str) and Path(hint).suffix and len(Path(hint).suffix) <= 6:
        return Path(hint).suffix.lower()
    if data[:4] == b"RIFF" and data[8:12] in (b"WAVE", b"WEBP"):
        return ".wav" if data[8:12] == b"WAVE" else ".webp"
    return next((ext for magic, ext in SIGNATURES if data.startswith(magic)), ".bin")


def spool(data: bytes, hint: Any = None, root: Path | None = None) -> Path:
    """Writes ``data`` under ``root`` (default ``<cotune cache>/media``) unless it is there already;
    returns the absolute path of the file (named by the bytes' SHA-256)."""
    digest = hashlib.sha256(data).hexdigest()
    root = (root or cache_root() / "media").resolve()
    path = root / digest[:2] / f"{digest}{_extension(data, hint)}"
    if not path.is_file() or path.stat().st_size != len(data):
        atomic_write(path, lambda tmp: tmp.write_bytes(data), fsync=False)
    return path


def media_cell(value: Any, column: str) -> tuple[list[str], list[Path]]:
    """One media cell -> (paths relative to the media root, files written from embedded bytes).

    A cell is None, a path, a ``{"bytes", "path"}`` value (``datasets`` Image/Audio, or raw bytes),
    raw ``bytes``, or a list of these; bytes win over a path in the same value (the Hub's parquet
    keeps the original file name beside the bytes). Mixing both kinds in one cell is refused, since
    the markers' order could not be kept across two lists."""
    items = value if isinstance(value, list) else [] if value is None else [value]
    paths: list[str] = []
    files: list[Path] = []
    for item in items:
        if isinstance(item, dict):
            data, hint = item.get("bytes"), item.get("path")
        else:
            data, hint = (item, None) if isinstance(item, (bytes, bytearray)) else (None, item)
        if data is not None:
            if not isinstance(data, (bytes, bytearray)) or not data:
                raise SkipSample("malformed_record", f"{column!r} holds empty or non-byte media ({type(data).__name__})")
            files.append(spool(bytes(data), hint))
        else:
            paths.append(hint)
    if paths and files:
        raise SkipSample("malformed_record", f"{column!r} mixes embedded bytes and file paths in one cell")
    return (path_list(paths, column) if paths else []), files
