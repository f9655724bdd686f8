"""Media ablations: the same questions with other media, to measure whether answers use them.

``shuffle`` gives every sample the media of another sample of the evaluated set (per media kind, a
seeded derangement: no sample keeps media identical to its own while another file exists to give
it); ``blank`` gives every sample a
uniform mid-grey image and one second of silence. The text of each sample is unchanged, so the
prompts are token for token those of the normal evaluation. A model whose accuracy does not fall
when its media are shuffled answers from the wording, not from what it sees or hears.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from cotune.config import ConfigError
from cotune.data.schema import Sample

ABLATIONS = ("shuffle", "blank")
#: The blank media: a uniform grey image (its size does not matter: encoders resize) and silence.
BLANK_IMAGE_SIZE, BLANK_GREY, BLANK_SECONDS, BLANK_RATE = 64, 128, 1.0, 16000


@dataclass(frozen=True)
class Ablated:
    """The ablated samples (same order and ids) and what was done: ``kind``, ``seed``, how many
    samples got other media (``changed``) and how many could not (``unchanged``: a kind whose
    samples all share one file cannot be deranged)."""

    kind: str
    seed: int
    samples: list[Sample]
    changed: int
    unchanged: int

    def describe(self) -> dict:
        return {"kind": self.kind, "seed": self.seed, "changed": self.changed, "unchanged": self.unchanged}


def check_ablation(name: str, flag: str = "--ablate") -> str:
    if name not in ABLATIONS:
        raise ConfigError(f"{flag}: unknown ablation {name!r}; choose from {', '.join(ABLATIONS)}")
    return name


def check_ablations(ablate: str | None, ablations: Sequence[str]) -> None:
    """ConfigError for an unknown name or for both ``ablate`` (replace the media) and
    ``ablations`` (add ablated runs) at once."""
    if ablate:
        check_ablation(ablate, "--ablate")
    for name in ablations:
        check_ablation(name, "--ablations")
    if ablate and ablations:
        raise ConfigError("--ablate and --ablations: pass one (--ablate replaces the media; --ablations adds ablated runs)")


def ablate(samples: Sequence[Sample], kind: str, *, seed: int = 0, workdir: Path | None = None) -> Ablated:
    """``samples`` with their media ablated (module docstring). ``blank`` writes its two files
    into ``workdir`` (which must exist). ConfigError if no sample has media."""
    check_ablation(kind)
    if not any(s.media for s in samples):
        raise ConfigError(f"--ablate {kind}: the evaluated samples have no media to ablate")
    if kind == "shuffle":
        return _shuffle(list(samples), seed)
    if workdir is None:
        raise ValueError("ablate('blank') needs a workdir for the blank media files")
    blank = blank_media(Path(workdir))
    out = [replace(s, media={k: [blank[k]] * len(v) for k, v in s.media.items()}) if s.media else s for s in samples]
    changed = sum(1 for s in samples if s.media)
    return Ablated(kind, seed, out, changed, 0)


def blank_media(workdir: Path) -> dict[str, Path]:
    """Writes ``blank.png`` (grey) and ``silence.wav`` into ``workdir``; kind -> path."""
    from PIL import Image

    image = workdir / "blank.png"
    Image.new("RGB", (BLANK_IMAGE_SIZE, BLANK_IMAGE_SIZE), (BLANK_GREY,) * 3).save(image)
    audio = workdir / "silence.wav"
    _write_silence(audio)
    return {"image": image, "audio": audio}


def _write_silence(path: Path) -> None:
    """One second of 16-bit mono zeros, written with the standard library (no soundfile needed)."""
    import wave

    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(BLANK_RATE)
        out.writeframes(b"\x00\x00" * int(BLANK_SECONDS * BLANK_RATE))


def _shuffle(samples: list[Sample], seed: int) -> Ablated:
    """Per (media kind, item count) group, each sample takes the media of another sample of the
    group through a seeded derangement that also avoids identical files (easy-VQA asks several
    questions about one image)."""
    media = [dict(s.media) for s in samples]
    changed = [False] * len(samples)
    groups: dict[tuple[str, int], list[int]] = {}
    for index, sample in enumerate(samples):
        for kind, paths in sample.media.items():
            if paths:
                groups.setdefault((kind, len(paths)), []).append(index)
    rng = random.Random(seed)
    for (kind, _), members in sorted(groups.items()):
        keys = [tuple(samples[i].media[kind]) for i in members]
        for position, source in enumerate(derangement(keys, rng)):
            if keys[source] != keys[position]:
                media[members[position]][kind] = list(keys[source])
                changed[members[position]] = True
    out = [replace(s, media=m) for s, m in zip(samples, media)]
    with_media = sum(1 for s in samples if s.media)
    done = sum(changed)
    return Ablated("shuffle", seed, out, done, with_media - done)


def derangement(keys: Sequence, rng: random.Random) -> list[int]:
    """A permutation ``p`` of ``range(len(keys))`` with ``keys[p[i]] != keys[i]`` wherever
    possible: a random single cycle (Sattolo), then swaps that repair positions whose source has
    the same key. Positions that cannot be repaired (one key holds more than half the items) keep
    a same-key source."""
    n = len(keys)
    order = list(range(n))
    for i in range(n - 1, 0, -1):  # Sattolo: j < i gives one cycle through all n, so p[i] != i
        j = rng.randrange(i)
        order[i], order[j] = order[j], order[i]
    for i in range(n):
        if keys[order[i]] != keys[i]:
            continue
        for j in rng.sample(range(n), n):
            if keys[order[j]] != keys[i] and keys[order[i]] != keys[j]:
                order[i], order[j] = order[j], order[i]
                break
    return order
