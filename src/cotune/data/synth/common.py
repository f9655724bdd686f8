"""What the generators share: the output folder, byte-stable writers, splits and the summary.

Byte-stable: the same seed must give the same bytes, so JSON keys keep insertion order, PNGs come
from Pillow with fixed options, WAVs from the standard ``wave`` module (16-bit PCM, no metadata
chunks), and nothing records a time or a path. Media files are written without fsync (thousands of
small files); the index files (JSON/CSV) are written last and synced, so an interrupted run leaves
no index that names a missing file.
"""

from __future__ import annotations

import hashlib
import json
import wave
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from cotune.config import ConfigError
from cotune.fileio import atomic_write, atomic_write_text

SAMPLE_RATE = 16000


def prepare_out(out_dir: Path) -> Path:
    """``out_dir``, created; FileExistsError if it already holds files (so old files cannot mix in)."""
    out_dir = Path(out_dir).expanduser()
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"--out: {out_dir} exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        raise FileExistsError(f"--out: {out_dir} is not empty; remove it or choose another directory")
    out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir


def check_count(count: int | None, default: int, minimum: int, what: str, name: str = "--count") -> int:
    """``count`` (or ``default``); ConfigError (a user error: the CLI reports it in one line, naming
    the setting ``name``) below ``minimum``."""
    value = default if count is None else count
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name}: {what} needs at least {minimum}, got {count!r}")
    return value


def split_sizes(count: int, fractions: dict[str, float]) -> dict[str, int]:
    """``count`` divided by ``fractions`` (the first split takes the rest); every split gets >= 1."""
    names = list(fractions)
    sizes = {name: max(1, round(count * fractions[name])) for name in names[1:]}
    sizes = {names[0]: count - sum(sizes.values()), **sizes}
    if sizes[names[0]] < 1:
        raise ConfigError(f"--count: {count} is too small for the splits {', '.join(names)}")
    return sizes


def deck(rng: np.random.Generator, values: Sequence[Any], n: int) -> list[Any]:
    """``n`` values cycling through ``values`` in a fresh random order each cycle: every value
    appears ``n // len(values)`` or one more times, so answers stay balanced in any split size."""
    out: list[Any] = []
    while len(out) < n:
        out.extend(values[i] for i in rng.permutation(len(values)))
    return out[:n]


def pick(rng: np.random.Generator, options: Sequence[Any]) -> Any:
    return options[int(rng.integers(len(options)))]


def write_json(path: Path, value: Any) -> None:
    atomic_write_text(path, json.dumps(value, indent=1, ensure_ascii=False) + "\n")


def write_png(path: Path, image: Image.Image) -> None:
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG"), fsync=False)


def write_wav(path: Path, samples: np.ndarray, rate: int = SAMPLE_RATE) -> None:
    """Mono 16-bit PCM of ``samples`` [n], float in [-1, 1] (clipped)."""
    pcm = np.round(np.clip(samples, -1.0, 1.0) * 32767).astype("<i2").tobytes()

    def write(tmp: Path) -> None:
        with wave.open(str(tmp), "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(rate)
            out.writeframes(pcm)

    atomic_write(path, write, fsync=False)


def tree_digest(root: Path) -> tuple[int, str]:
    """(file count, sha256 over every file's relative path and bytes, in sorted order)."""
    digest = hashlib.sha256()
    files = sorted(p for p in Path(root).rglob("*") if p.is_file())
    for path in files:
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return len(files), digest.hexdigest()


def summary(kind: str, out_dir: Path, seed: int, splits: dict[str, int], **extra: Any) -> dict:
    """The generators' return value: kind, out, seed, samples per split, files and their digest."""
    files, digest = tree_digest(out_dir)
    return {"kind": kind, "out": str(out_dir), "seed": seed, "splits": dict(splits), "files": files, "sha256": digest, **extra}
