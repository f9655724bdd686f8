"""Synthetic datasets for the offline demo, registered by kind in :data:`SYNTHESIZERS`.

A synthesizer is ``synthesize(out_dir: Path, *, seed: int, count: int | None = None) -> dict``. It
writes a dataset in the layout of an existing reader into ``out_dir`` (which must be empty or
absent) and returns a summary: ``kind``, ``out``, ``seed``, ``splits`` (samples per split),
``files`` and ``sha256`` (a digest of the written tree), plus kind-specific counts. The same seed
writes byte-identical files; another seed gives other content and other wording. ``count``
defaults per kind. Nothing here needs torch or the network.

| kind | reader | what |
|---|---|---|
| ``audioqa`` | ``audioqa`` | tones, beeps, noise bursts and chirps with pitch/count/loudness/duration questions |
| ``scienceqa`` | ``scienceqa`` | rendered shape scenes and text problems in ScienceQA's layout and breakdown |
| ``textqa`` | ``alpaca`` | simple facts the demo's base LLM answers, split by fact into train and held-out test |

docs/data-synth.md describes each one.
"""

from __future__ import annotations

from cotune.registry import Registry

SYNTHESIZERS: Registry = Registry("data synthesizer")

# Generator modules register themselves on import; the import list is explicit (no auto-discovery).
from cotune.data.synth import audioqa, scienceqa, textqa  # noqa: E402,F401

__all__ = ["SYNTHESIZERS"]
