"""Signal primitives of the synthetic audio clips: tones, beep trains, noise bursts, chirps.

A clip is one :class:`Event` (a tone, a noise burst, a chirp or a train of beeps) placed in
silence with a faint noise floor, 16 kHz mono float in [-1, 1]. Levels are RMS over the sounding
part, so a tone and a noise burst of the same ``rms`` are equally loud.

The ranges the generator draws from are far apart on purpose (low tones below 350 Hz, high ones
above 2 kHz; loud and quiet ~26 dB apart; short events under 0.4 s, long ones over 1.2 s): the
demo's model is a frozen Whisper tiny.en encoder with a small trainable neck, and these
properties must be plainly visible in its log-mel input.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cotune.data.synth.common import SAMPLE_RATE

RAMP_SECONDS = 0.01  # raised-cosine fade in/out: no clicks (a click is a broadband burst)
NOISE_FLOOR_RMS = 0.0005  # about -66 dBFS: no digital silence, well below the quiet events


@dataclass(frozen=True)
class Event:
    """What sounds in a clip.

    source: ``tone``, ``noise`` or ``chirp``; freq: Hz (tone; chirp start); freq_end: Hz (chirp
    end); beep > 0 makes a tone a train of ``beeps`` beeps of ``beep`` seconds, ``gap`` seconds
    apart; seconds: length of a steady tone, burst or chirp; rms: level.
    """

    source: str
    rms: float
    seconds: float = 0.0
    freq: float = 0.0
    freq_end: float = 0.0
    beeps: int = 1
    beep: float = 0.0
    gap: float = 0.0

    @property
    def length(self) -> float:
        """Seconds from the first onset to the last offset."""
        if self.beep > 0:
            return self.beeps * self.beep + (self.beeps - 1) * self.gap
        return self.seconds


def _ramp(n: int) -> np.ndarray:
    """Envelope [n] rising and falling over RAMP_SECONDS at each end."""
    envelope = np.ones(n)
    k = min(int(RAMP_SECONDS * SAMPLE_RATE), n // 2)
    if k:
        rise = 0.5 - 0.5 * np.cos(np.pi * np.arange(k) / k)
        envelope[:k], envelope[n - k :] = rise, rise[::-1]
    return envelope


def _samples(seconds: float) -> int:
    return max(1, int(round(seconds * SAMPLE_RATE)))


def tone(freq: float, seconds: float, phase: float) -> np.ndarray:
    """Unit-RMS sine [n]."""
    t = np.arange(_samples(seconds)) / SAMPLE_RATE
    return np.sqrt(2.0) * np.sin(2 * np.pi * freq * t + phase) * _ramp(t.size)


def chirp(start: float, end: float, seconds: float, phase: float) -> np.ndarray:
    """Unit-RMS exponential sweep [n] from ``start`` to ``end`` Hz (equal time per octave, as heard)."""
    n = _samples(seconds)
    t = np.arange(n) / SAMPLE_RATE
    rate = np.log(end / start) / seconds
    # Phase is the integral of the instantaneous frequency start * exp(rate * t).
    phases = 2 * np.pi * start * (np.exp(rate * t) - 1.0) / rate
    return np.sqrt(2.0) * np.sin(phases + phase) * _ramp(n)


def noise(seconds: float, rng: np.random.Generator) -> np.ndarray:
    """Unit-RMS white noise burst [n]."""
    n = _samples(seconds)
    burst = rng.standard_normal(n)
    return burst / np.sqrt(np.mean(burst**2)) * _ramp(n)


def render(event: Event, clip_seconds: float, onset: float, rng: np.random.Generator) -> np.ndarray:
    """The clip [round(clip_seconds * 16000)], float32 in [-1, 1]: ``event`` starting at ``onset`` s."""
    phase = float(rng.uniform(0, 2 * np.pi))
    if event.source == "noise":
        sound = noise(event.seconds, rng)
    elif event.source == "chirp":
        sound = chirp(event.freq, event.freq_end, event.seconds, phase)
    elif event.source == "tone" and event.beep > 0:
        beep, gap = tone(event.freq, event.beep, phase), np.zeros(_samples(event.gap))
        sound = np.concatenate([part for _ in range(event.beeps) for part in (beep, gap)][:-1])
    elif event.source == "tone":
        sound = tone(event.freq, event.seconds, phase)
    else:
        raise ValueError(f"unknown event source {event.source!r}; valid: tone, noise, chirp")
    clip = NOISE_FLOOR_RMS * rng.standard_normal(_samples(clip_seconds))
    start = _samples(onset) if onset > 0 else 0
    if start + sound.size > clip.size:
        raise ValueError(f"event of {event.length:.2f} s at {onset:.2f} s does not fit a {clip_seconds:.2f} s clip")
    clip[start : start + sound.size] += event.rms * sound
    return np.clip(clip, -1.0, 1.0).astype(np.float32)
