"""Whisper crop (EncoderConfig.crop_seconds): a shorter window, the same maths on what is kept.

The tiny Whisper (cotune.testing.tiny) has a 1 s window: 16 positions, 32 mel frames, 32 frames/s
(16 kHz, hop 500). Cropping to 0.3 s keeps ceil(0.3 x 32 / 2) = 5 positions, 10 frames.
"""

from __future__ import annotations

import numpy as np
import pytest
import soundfile
import torch
from torch.nn import functional as F

from cotune.config import ConfigError, load_config
from cotune.config.model import EncoderConfig
from cotune.data.feature_cache import encoder_cache_key
from cotune.data.media import MediaPreprocessor
from cotune.encoders import ENCODERS
from cotune.encoders.hf import crop_positions
from cotune.model.data_spec import data_spec_from_config
from cotune.testing import tiny

CROP, POSITIONS, FRAMES, RATE = 0.3, 5, 10, 16000


@pytest.fixture(scope="module")
def whisper_path(tiny_root):
    return tiny.save_encoder(tiny_root, "whisper")


def load(path, meta: bool = False, **fields):
    return ENCODERS.get("whisper")(EncoderConfig(type="whisper", name_or_path=str(path), **fields), meta)


def reference_hidden_states(encoder, features: torch.Tensor) -> list[torch.Tensor]:
    """The uncropped encoder's own submodules on a [B, mels, frames] input of any length: conv stem,
    the first frames/2 rows of its positional table, its blocks, its final norm on the last."""
    x = F.gelu(encoder.conv2(F.gelu(encoder.conv1(features)))).permute(0, 2, 1)
    states = [x + encoder.embed_positions.weight[: x.shape[1]]]
    for layer in encoder.layers:
        states.append(layer(states[-1], None))
    states[-1] = encoder.layer_norm(states[-1])
    return states


def test_cropped_encoder_equals_uncropped_submodules_on_the_short_sequence(whisper_path):
    full, cropped = load(whisper_path), load(whisper_path, crop_seconds=CROP)
    features = torch.randn(2, 8, FRAMES, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = cropped.hidden_states(features)
        expected = reference_hidden_states(full.backbone, features)
    assert len(got) == len(expected) == 3
    for k, (a, b) in enumerate(zip(got, expected)):
        assert a.shape == (2, POSITIONS, 24), k
        torch.testing.assert_close(a, b, msg=f"hidden state {k}")
    # The cropped table is the uncropped table's first rows; nothing else changed.
    torch.testing.assert_close(cropped.backbone.embed_positions.weight, full.backbone.embed_positions.weight[:POSITIONS])
    assert cropped.backbone.embed_positions.weight.requires_grad == full.backbone.embed_positions.weight.requires_grad
    full_state = full.backbone.state_dict()
    for key, value in cropped.backbone.state_dict().items():
        if key != "embed_positions.weight":
            assert torch.equal(value, full_state[key]), key


def test_layer0_input_matches_the_padded_window_on_the_shared_prefix(whisper_path):
    full, cropped = load(whisper_path), load(whisper_path, crop_seconds=CROP)
    g = torch.Generator().manual_seed(1)
    clip = torch.randn(1, 8, FRAMES, generator=g)
    with torch.no_grad():
        short = cropped.hidden_states(clip)[0][0]
        # The 30 s-style window with the clip at its start: zero frames after it give conv the same
        # zero padding the short input has, so every kept position matches.
        zero_tail = full.hidden_states(torch.cat([clip, torch.zeros(1, 8, 32 - FRAMES)], -1))[0][0]
        torch.testing.assert_close(short, zero_tail[:POSITIONS])
        # Any other tail (e.g. log-mel silence) reaches only the last kept position (conv1 and the
        # stride-2 conv2 each see one frame past it).
        other_tail = full.hidden_states(torch.cat([clip, torch.randn(1, 8, 32 - FRAMES, generator=g)], -1))[0][0]
    torch.testing.assert_close(short[:-1], other_tail[: POSITIONS - 1])
    assert not torch.allclose(short[-1], other_tail[POSITIONS - 1])


def test_full_window_crop_is_the_uncropped_encoder(whisper_path):
    full, same = load(whisper_path), load(whisper_path, crop_seconds=1.0)
    features = torch.randn(1, 8, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        for a, b in zip(same.hidden_states(features), full.hidden_states(features)):
            assert torch.equal(a, b)


def test_token_counts_dummy_input_and_meta_agree(whisper_path):
    for meta in (False, True):
        encoder = load(whisper_path, meta=meta, crop_seconds=CROP)
        assert encoder.num_tokens() == POSITIONS and encoder.crop_seconds == CROP
        assert encoder.backbone.config.max_source_positions == POSITIONS
        assert tuple(encoder.backbone.embed_positions.weight.shape) == (POSITIONS, 24)
        assert tuple(encoder.dummy_input().shape) == (1, 8, FRAMES)
    assert load(whisper_path, meta=True).num_tokens() == 16
    assert crop_positions(2.0, 100.0) == 100 and crop_positions(0.7, 100.0) == 35 and crop_positions(2.33, 100.0) == 117


def test_model_and_data_spec_use_the_cropped_count(tiny_root):
    encoders = {"audio": {"kind": "whisper", "crop_seconds": CROP}}
    model = tiny.build(tiny_root, encoders=encoders)
    assert model.num_media_tokens("audio") == POSITIONS
    config = load_config(data=tiny.model_config(tiny.save_llm(tiny_root), {
        "audio": {"type": "whisper", "name_or_path": str(tiny.save_encoder(tiny_root, "whisper")), "crop_seconds": CROP},
    }))
    (entry,) = data_spec_from_config(config).encoders  # built on meta: the dry-run path
    assert entry.tokens == POSITIONS and entry.preprocess.item_shape == (8, FRAMES)
    assert entry.preprocess.audio_seconds == CROP
    too_long = load_config(data={**tiny.model_config(tiny.save_llm(tiny_root), {
        "audio": {"type": "whisper", "name_or_path": str(tiny.save_encoder(tiny_root, "whisper")), "crop_seconds": CROP},
    }), "data": {"audio_seconds": 0.5}})
    with pytest.raises(ConfigError, match=r"model\.encoders\.audio: audio_seconds: 0\.5 s is longer than .* 0\.3125 s"):
        data_spec_from_config(too_long)


def write_sine(path, seconds: float, rate: int = RATE):
    t = np.arange(round(seconds * rate)) / rate
    soundfile.write(path, (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), rate)
    return path


def test_preprocessor_yields_exactly_the_cropped_frames(tmp_path, whisper_path):
    full, cropped = load(whisper_path), load(whisper_path, crop_seconds=CROP)
    prep = MediaPreprocessor.from_encoder("audio", cropped)
    assert prep.item_shape == (8, FRAMES) and prep.input_length == FRAMES and prep.audio_seconds == CROP
    for seconds in (0.05, 0.2, 2.5):
        assert prep(write_sine(tmp_path / f"{seconds}.wav", seconds), "s").shape == (8, FRAMES)
    # A clip shorter than the crop: same frames as the first ones of the full 1 s window (the
    # zero tail adds only lower log-mel values, so the normalisation's maximum is unchanged).
    short = write_sine(tmp_path / "short.wav", 0.2)
    uncropped = MediaPreprocessor.from_encoder("audio", full)
    assert uncropped.item_shape == (8, 32) and uncropped.audio_seconds == 1.0
    torch.testing.assert_close(prep(short, "s"), uncropped(short, "s")[:, :FRAMES], atol=1e-5, rtol=0)
    # A shorter audio_seconds cuts the clip but keeps the encoder's frame count.
    shorter = MediaPreprocessor.from_encoder("audio", cropped, audio_seconds=0.1)
    out = shorter(write_sine(tmp_path / "long.wav", 2.5), "s")
    assert out.shape == (8, FRAMES) and shorter.audio_seconds == 0.1
    with pytest.raises(ValueError, match="audio_seconds: 0.5 s is longer than encoder 'audio'"):
        MediaPreprocessor.from_encoder("audio", cropped, audio_seconds=0.5)


def test_uncropped_whisper_pads_short_audio_seconds_to_its_window(whisper_path):
    # Before frames were taken from the encoder, audio_seconds 0.5 gave 16 frames, which
    # WhisperEncoder refuses; now the clip is cut to 0.5 s and padded to the 32-frame window.
    prep = MediaPreprocessor.from_encoder("audio", load(whisper_path), audio_seconds=0.5)
    assert prep.item_shape == (8, 32) and prep.audio_seconds == 0.5


@pytest.mark.parametrize("fields, message", [
    ({"type": "clip", "crop_seconds": 2.0}, "crop_seconds: only whisper encoders have a fixed window"),
    ({"type": "whisper", "crop_seconds": 0.0}, "crop_seconds: must be a number of seconds > 0"),
    ({"type": "whisper", "crop_seconds": -1}, "crop_seconds: must be a number of seconds > 0"),
    ({"type": "whisper", "crop_seconds": float("nan")}, "crop_seconds: must be a number of seconds > 0"),
])
def test_config_rejects_bad_crops(fields, message):
    with pytest.raises(ConfigError, match=message):
        EncoderConfig(name_or_path="x", **fields)


def test_crop_longer_than_the_window_fails_at_load_naming_the_field(tiny_root, whisper_path):
    with pytest.raises(ConfigError, match=r"crop_seconds: 1.5 s is longer than the window of .*\(1 s, max_source_positions 16\)"):
        load(whisper_path, crop_seconds=1.5)
    with pytest.raises(ConfigError, match="crop_seconds: 1.5 s is longer"):
        load(whisper_path, meta=True, crop_seconds=1.5)
    with pytest.raises(ConfigError, match=r"model\.encoders\.audio\.crop_seconds: only whisper"):
        load_config(data=tiny.model_config(tiny.save_llm(tiny_root), {"audio": {"type": "clip", "name_or_path": "x"}}),
                    overrides=["model.encoders.audio.crop_seconds=2"])


def test_crop_changes_the_feature_cache_key():
    from cotune.config.data import DataConfig

    base, cropped = EncoderConfig(type="whisper", name_or_path="w"), EncoderConfig(type="whisper", name_or_path="w", crop_seconds=2)
    assert encoder_cache_key(base, DataConfig()) != encoder_cache_key(cropped, DataConfig())
    assert cropped.crop_seconds == 2.0 and isinstance(cropped.crop_seconds, float)
