"""``audioqa``: synthetic audio clips with questions about what they sound like (ClothoAQA-style CSVs).

Output, read by the ``audioqa`` reader::

    <out>/train.csv, <out>/test.csv   id,file_name,QuestionText,answer,question_type,description
    <out>/audio/<split>-<k>.wav       16 kHz mono 16-bit, 1-2 s, one clip per question

Six properties, each asked in two forms (12 question types): a choice form answered by one word
and a yes/no form (``question_type`` ``pitch`` and ``pitch-yes-no``):

| property | answers | clip |
|---|---|---|
| pitch | high, low | a steady tone, 150-350 Hz or 2-4 kHz |
| beeps | one .. four | 0.10-0.16 s beeps of one tone, 0.14-0.22 s apart |
| loudness | loud, quiet | a tone or noise burst, RMS 0.15-0.25 or 0.006-0.010 |
| duration | long, short | a tone or noise burst of 1.2-1.7 s or 0.2-0.4 s |
| sweep | rising, falling | an exponential chirp between ~300 Hz and ~3 kHz |
| source | tone, noise | a steady tone or a white-noise burst |

``description`` is the clip's value of the property asked (``low`` for "Is the tone high-pitched?"
when the answer is no): what ``targets: describe`` trains a yes/no answer to say first.

Each clip is made for its question (the property asked is set by the answer, the rest is drawn at
random), so every answer is unambiguous. Question types cycle through each split and answers
through each type in shuffled order, so no answer is the majority of its type by more than one.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from pathlib import Path

import numpy as np

from cotune.config import ConfigError
from cotune.data.synth import SYNTHESIZERS
from cotune.data.synth.common import check_count, deck, pick, prepare_out, split_sizes, summary, write_wav
from cotune.data.synth.sounds import Event, render
from cotune.fileio import atomic_write_text

DEFAULT_COUNT = 1000
SPLITS = {"train": 0.8, "test": 0.2}
CLIP_SECONDS = (1.0, 2.0)

VALUES = {
    "pitch": ("high", "low"),
    "beeps": ("one", "two", "three", "four"),
    "loudness": ("loud", "quiet"),
    "duration": ("long", "short"),
    "sweep": ("rising", "falling"),
    "source": ("tone", "noise"),
}

#: Format fields of each value for the yes/no templates (``v`` is the value itself).
FIELDS = {
    "one": {"beeps": "one beep", "times": "once"}, "two": {"beeps": "two beeps", "times": "twice"},
    "three": {"beeps": "three beeps", "times": "three times"}, "four": {"beeps": "four beeps", "times": "four times"},
    "rising": {"dir": "up", "verb": "rise"}, "falling": {"dir": "down", "verb": "fall"},
    "tone": {"a": "a tone", "long": "a pure tone"}, "noise": {"a": "noise", "long": "a burst of noise"},
}

CHOICE = {
    "pitch": ("Is the tone high or low?", "Is the pitch of the sound high or low?", "Is this a high or a low sound?",
              "Would you call the pitch high or low?"),
    "beeps": ("How many beeps are there?", "How many beeps do you hear?", "Count the beeps. How many are there?",
              "How many times does it beep?"),
    "loudness": ("Is the sound loud or quiet?", "Is this sound quiet or loud?", "How loud is the sound, loud or quiet?"),
    "duration": ("Is the sound long or short?", "Is the sound short or long?", "Does the sound last long or is it short?"),
    "sweep": ("Is the pitch rising or falling?", "Is the tone rising or falling in pitch?", "Is this a rising or a falling sweep?"),
    "source": ("Is this a tone or noise?", "Is it a tone or a noise burst?", "Is the sound a pure tone or noise?"),
}

YES_NO = {
    "pitch": ("Is the tone {v}-pitched?", "Is this a {v} sound?", "Is the pitch {v}?"),
    "beeps": ("Are there {beeps}?", "Do you hear exactly {beeps}?", "Does it beep {times}?"),
    "loudness": ("Is the sound {v}?", "Is this a {v} sound?", "Would you say the sound is {v}?"),
    "duration": ("Is the sound {v}?", "Is this a {v} sound?", "Does the sound seem {v}?"),
    "sweep": ("Is the pitch {v}?", "Does the pitch go {dir}?", "Does the tone {verb} in pitch?"),
    "source": ("Is this {a}?", "Is the sound {long}?", "Do you hear {a}?"),
}

#: Question types: (property, yes/no form).
TYPES = tuple((prop, yes_no) for prop in VALUES for yes_no in (False, True))


def type_name(prop: str, yes_no: bool) -> str:
    return f"{prop}-yes-no" if yes_no else prop


@SYNTHESIZERS.register("audioqa")
def synthesize(out_dir: Path, *, seed: int, count: int | None = None, test_seed: int | None = None,
               test_count: int | None = None) -> dict:
    """Writes ``count`` (default 1000) clips and questions, 80% train / 20% test; returns the summary.
    ``test_seed``: the test split from a random stream of its own, so runs whose ``seed`` differs
    are tested on the same clips (the train split is the same either way); None: the test split
    continues the train split's stream. ``test_count`` (with ``test_seed``): the test split's size
    instead of 20% of ``count``; the train split stays 80% of ``count``, byte for byte."""
    # 5 x 12: the 20% test split still gets every question type.
    total = check_count(count, DEFAULT_COUNT, 5 * len(TYPES), "audioqa (every question type in every split)")
    sizes = split_sizes(total, SPLITS)
    if test_count is not None:
        if test_seed is None:
            raise ConfigError("audioqa: test_count needs test_seed (the test split's own random stream)")
        sizes["test"] = check_count(test_count, sizes["test"], len(TYPES), "audioqa's test split (every question type)",
                                    "test_count")
    out_dir = prepare_out(out_dir)
    rng = np.random.default_rng(seed)
    answers: Counter = Counter()
    for split, n in sizes.items():
        if split == "test" and test_seed is not None:
            rng = np.random.default_rng([test_seed, 1])  # not default_rng(test_seed): that is seed test_seed's train stream
        rows = []
        for k, (prop, yes_no, value, asked) in enumerate(_plan(rng, n)):
            file = f"{split}-{k:05d}.wav"
            event = _event(prop, value, rng)
            clip_seconds = float(np.round(rng.uniform(max(CLIP_SECONDS[0], event.length + 0.15), CLIP_SECONDS[1]), 3))
            onset = float(rng.uniform(0.05, clip_seconds - event.length - 0.05))
            write_wav(out_dir / "audio" / file, render(event, clip_seconds, onset, rng))
            question, answer = _question(prop, yes_no, value, asked, rng)
            rows.append((f"{split}-{k:05d}", file, question, answer, type_name(prop, yes_no), value))
            answers[answer] += 1
        _write_csv(out_dir / f"{split}.csv", rows)
    return summary("audioqa", out_dir, seed, sizes, answers=dict(sorted(answers.items())), test_seed=test_seed,
                   **({"test_count": test_count} if test_count is not None else {}))


def _plan(rng: np.random.Generator, n: int) -> list[tuple[str, bool, str, str | None]]:
    """(property, yes/no, true value, asked value or None) for ``n`` questions, balanced by type and answer."""
    types = deck(rng, TYPES, n)
    per_type = Counter(types)
    values = {t: iter(deck(rng, VALUES[t[0]], per_type[t])) for t in per_type}
    replies = {t: iter(deck(rng, (True, False), per_type[t])) for t in per_type if t[1]}
    plan = []
    for prop, yes_no in types:
        value = next(values[(prop, yes_no)])
        if not yes_no:
            plan.append((prop, False, value, None))
            continue
        # The asked value is balanced through the deck; a "no" clip gets some other value.
        asked = value
        if not next(replies[(prop, yes_no)]):
            value = pick(rng, [v for v in VALUES[prop] if v != asked])
        plan.append((prop, True, value, asked))
    return plan


def _question(prop: str, yes_no: bool, value: str, asked: str | None, rng: np.random.Generator) -> tuple[str, str]:
    if not yes_no:
        return pick(rng, CHOICE[prop]), value
    text = pick(rng, YES_NO[prop]).format(v=asked, **FIELDS.get(asked, {}))
    return text, "yes" if value == asked else "no"


def _mid_rms(rng: np.random.Generator) -> float:
    """A level between the quiet and loud ranges, for clips whose loudness is not asked."""
    return float(np.exp(rng.uniform(np.log(0.03), np.log(0.12))))


def _event(prop: str, value: str, rng: np.random.Generator) -> Event:
    """The sound of a clip whose ``prop`` is ``value``; its other properties drawn at random."""
    rms, seconds, freq = _mid_rms(rng), float(rng.uniform(0.5, 1.2)), float(rng.uniform(300, 3000))
    either = "tone" if rng.random() < 0.5 else "noise"
    if prop == "pitch":
        freq = float(rng.uniform(150, 350) if value == "low" else rng.uniform(2000, 4000))
        return Event("tone", rms, seconds=seconds, freq=freq)
    if prop == "beeps":
        beeps = VALUES["beeps"].index(value) + 1
        return Event("tone", rms, freq=float(rng.uniform(500, 1500)), beeps=beeps,
                     beep=float(rng.uniform(0.10, 0.16)), gap=float(rng.uniform(0.14, 0.22)))
    if prop == "loudness":
        rms = float(rng.uniform(0.15, 0.25) if value == "loud" else rng.uniform(0.006, 0.010))
        return Event(either, rms, seconds=seconds, freq=freq)
    if prop == "duration":
        seconds = float(rng.uniform(1.2, 1.7) if value == "long" else rng.uniform(0.2, 0.4))
        return Event(either, rms, seconds=seconds, freq=freq)
    if prop == "sweep":
        low, high = float(rng.uniform(250, 400)), float(rng.uniform(2500, 4000))
        start, end = (low, high) if value == "rising" else (high, low)
        return Event("chirp", rms, seconds=float(rng.uniform(0.6, 1.4)), freq=start, freq_end=end)
    if prop == "source":
        return Event(value, rms, seconds=seconds, freq=freq)
    raise ValueError(f"unknown property {prop!r}; valid: {', '.join(VALUES)}")


def _write_csv(path: Path, rows: list[tuple[str, ...]]) -> None:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(("id", "file_name", "QuestionText", "answer", "question_type", "description"))
    writer.writerows(rows)
    atomic_write_text(path, text.getvalue())
