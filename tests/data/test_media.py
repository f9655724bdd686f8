"""Media decoding and per-encoder preprocessing; every input file is generated here."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import soundfile
import torch
import transformers
from PIL import Image

from cotune.data.media import MediaPreprocessor, load_audio, load_image, square_resize_tensor
from cotune.data.schema import SkipSample
from cotune.testing import tiny

RATE = 16000


def skip_reason(fn, *args) -> SkipSample:
    with pytest.raises(SkipSample) as info:
        fn(*args)
    return info.value


def noise_image(width: int, height: int, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB")


def sine(freq: float, seconds: float, rate: int, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def write_sine(path, freq: float = 440.0, seconds: float = 1.0, rate: int = RATE, channels: int = 1):
    """Channel 0 carries a 0.8-amplitude sine, further channels silence (so the mono mix is 0.8 / channels)."""
    data = np.zeros((round(seconds * rate), channels), np.float32)
    data[:, 0] = sine(freq, seconds, rate, 0.8)
    soundfile.write(path, data, rate)
    return path


# ---- images ----------------------------------------------------------------------------------


def test_exif_orientation_6_rotates_clockwise(tmp_path):
    source = noise_image(40, 20)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / "rotated.png"
    source.save(path, exif=exif)
    image = load_image(path, "s1")
    assert image.size == (20, 40)
    np.testing.assert_array_equal(np.asarray(image), np.rot90(np.asarray(source), k=-1))


def test_transparency_is_composited_on_white(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 200  # red-ish everywhere
    rgba[:2, :, 3] = 255  # top half opaque, bottom half fully transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    out = np.asarray(load_image(tmp_path / "rgba.png", "s"))
    assert (out[:2] == (200, 0, 0)).all() and (out[2:] == 255).all()

    palette = Image.new("P", (4, 4), 1)
    palette.putpalette([0, 0, 255, 255, 0, 0] + [0] * 762)
    palette.putpixel((0, 0), 0)
    palette.save(tmp_path / "p.png", transparency=0)  # index 0 (blue) is transparent
    out = np.asarray(load_image(tmp_path / "p.png", "s"))
    assert tuple(out[0, 0]) == (255, 255, 255) and tuple(out[3, 3]) == (255, 0, 0)


@pytest.mark.parametrize(
    ("mode", "colour", "suffix", "expected"),
    [
        ("P", None, "png", (0, 255, 0)),
        ("L", 100, "png", (100, 100, 100)),
        ("LA", (100, 255), "png", (100, 100, 100)),
        ("CMYK", (0, 255, 255, 0), "tiff", (255, 0, 0)),
        ("I;16", 128 * 257, "png", (128, 128, 128)),
    ],
)
def test_modes_become_rgb(tmp_path, mode, colour, suffix, expected):
    if mode == "P":
        image = Image.new("P", (5, 3), 0)
        image.putpalette([0, 255, 0] + [0] * 765)
    else:
        image = Image.new(mode, (5, 3), colour)
    path = tmp_path / f"image.{suffix}"
    image.save(path)
    out = load_image(path, "s")
    assert out.mode == "RGB" and out.size == (5, 3)
    assert (np.asarray(out) == expected).all()


@pytest.mark.parametrize("suffix", ["png", "jpg"])
def test_truncated_image_is_unreadable(tmp_path, suffix):
    full = tmp_path / f"full.{suffix}"
    noise_image(64, 64).save(full)
    cut = tmp_path / f"cut.{suffix}"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    err = skip_reason(load_image, cut, "s7")
    assert err.reason == "unreadable_media" and str(cut) in err.detail and "s7" in err.detail


def test_not_an_image_empty_and_missing(tmp_path):
    text = tmp_path / "text.png"
    text.write_text("this is not a png")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    assert skip_reason(load_image, text, "s").reason == "unreadable_media"
    assert skip_reason(load_image, empty, "s").reason == "unreadable_media"
    assert skip_reason(load_image, tmp_path / "absent.png", "s").reason == "missing_media"


def test_decompression_bomb_is_refused(tmp_path, monkeypatch):
    noise_image(20, 20).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 300)  # 400 pixels: over the limit, warning range
    err = skip_reason(load_image, tmp_path / "big.png", "s")
    assert err.reason == "unreadable_media" and "DecompressionBomb" in err.detail


def test_square_resize_matches_manual_reference():
    image = noise_image(37, 23)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    out = square_resize_tensor(image, 16, mean, std)
    reference = np.asarray(image.resize((16, 16), Image.BICUBIC), np.float64) / 255.0
    reference = ((reference - mean) / std).transpose(2, 0, 1)
    assert out.shape == (3, 16, 16) and out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), reference, atol=1e-5)


@pytest.fixture(scope="module")
def clip_processor(tiny_root):
    return transformers.AutoImageProcessor.from_pretrained(tiny.save_encoder(tiny_root, "clip"))


@pytest.mark.parametrize("size", [(50, 20), (20, 50), (7, 7), (300, 200)])
def test_clip_processor_gives_fixed_shape(tmp_path, clip_processor, size):
    path = tmp_path / "image.png"
    noise_image(*size).save(path)
    prep = MediaPreprocessor("image", clip_processor, name="clip")
    assert prep.item_shape == (3, 30, 30) and prep.input_length is None and prep.sampling_rate is None
    out = prep(path, "s")
    assert out.shape == (3, 30, 30)
    torch.testing.assert_close(out, clip_processor(images=load_image(path, "s"), return_tensors="pt")["pixel_values"][0])


def test_square_transform_keeps_whole_image(tmp_path, clip_processor):
    path = tmp_path / "wide.png"
    image = noise_image(60, 20)
    image.save(path)
    prep = MediaPreprocessor("image", clip_processor, image_transform="square", name="clip")
    assert prep.item_shape == (3, 30, 30)
    reference = np.asarray(image.resize((30, 30), Image.BICUBIC), np.float64) / 255.0
    reference = ((reference - clip_processor.image_mean) / clip_processor.image_std).transpose(2, 0, 1)
    np.testing.assert_allclose(prep(path, "s").numpy(), reference, atol=1e-5)


def test_square_size_falls_back_to_image_size():
    processor = SimpleNamespace(image_mean=[0.5] * 3, image_std=[0.5] * 3, size={"shortest_edge": 64})
    encoder = SimpleNamespace(modality="image", processor=processor, backbone=SimpleNamespace(config=SimpleNamespace(image_size=48)))
    prep = MediaPreprocessor.from_encoder("enc", encoder, image_transform="square")
    assert prep.item_shape == (3, 48, 48)


def test_missing_processor_and_bad_options_raise(clip_processor):
    with pytest.raises(ValueError, match="encoder 'vision' has no processor; save one beside the checkpoint"):
        MediaPreprocessor("image", None, name="vision")
    with pytest.raises(ValueError, match="image_transform"):
        MediaPreprocessor("image", clip_processor, image_transform="crop")
    with pytest.raises(ValueError, match="unsupported feature extractor"):
        MediaPreprocessor("audio", SimpleNamespace(sampling_rate=RATE), name="odd")


# ---- audio -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rate", "channels", "fmt"),
    [(8000, 1, "wav"), (8000, 2, "wav"), (16000, 1, "wav"), (16000, 2, "flac"), (44100, 1, "flac"), (44100, 2, "wav")],
)
def test_resampled_to_16k_keeps_frequency(tmp_path, rate, channels, fmt):
    path = write_sine(tmp_path / f"tone.{fmt}", freq=440.0, seconds=1.0, rate=rate, channels=channels)
    audio = load_audio(path, "s", RATE, None)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(len(audio) - RATE) <= 1
    spectrum = np.abs(np.fft.rfft(audio))
    peak_hz = np.argmax(spectrum) * RATE / len(audio)
    assert abs(peak_hz - 440.0) <= 1.0
    middle = audio[1000:-1000]  # away from the resampler's edges
    expected_rms = 0.8 / channels / np.sqrt(2)
    assert abs(np.sqrt(np.mean(middle**2)) - expected_rms) < 0.01 * expected_rms + 1e-3
    assert np.abs(audio).max() <= 1.0


def test_max_seconds_crops(tmp_path):
    path = write_sine(tmp_path / "long.wav", seconds=2.0, rate=44100)
    assert len(load_audio(path, "s", RATE, 0.5)) == 8000
    assert len(load_audio(path, "s", RATE, 5.0)) == 32000
    full = load_audio(path, "s", RATE, None)
    np.testing.assert_allclose(load_audio(path, "s", RATE, 0.5), full[:8000], atol=1e-4)


def test_zero_length_audio(tmp_path):
    soundfile.write(tmp_path / "empty.wav", np.zeros(0, np.float32), RATE)
    assert skip_reason(load_audio, tmp_path / "empty.wav", "s", RATE, None).reason == "zero_length_audio"
    write_sine(tmp_path / "short.wav", seconds=0.1)
    assert skip_reason(load_audio, tmp_path / "short.wav", "s", RATE, 1e-6).reason == "zero_length_audio"


def test_corrupt_and_missing_audio(tmp_path):
    real = write_sine(tmp_path / "real.wav")
    header = tmp_path / "header.wav"
    header.write_bytes(real.read_bytes()[:20])
    junk = tmp_path / "junk.wav"
    junk.write_bytes(np.random.default_rng(0).bytes(4000))
    for path in (header, junk):
        err = skip_reason(load_audio, path, "a1", RATE, None)
        assert err.reason == "unreadable_media" and str(path) in err.detail
    assert skip_reason(load_audio, tmp_path / "absent.wav", "a1", RATE, None).reason == "missing_media"


@pytest.fixture(scope="module")
def tiny_whisper(tiny_root):
    return transformers.AutoFeatureExtractor.from_pretrained(tiny.save_encoder(tiny_root, "whisper"))


def test_tiny_whisper_features_fixed_shape(tmp_path, tiny_whisper):
    prep = MediaPreprocessor("audio", tiny_whisper, name="whisper")
    assert prep.item_shape == (8, 32) and prep.input_length == 32 and prep.sampling_rate == RATE
    short = write_sine(tmp_path / "short.wav", seconds=0.3, rate=8000)
    long = write_sine(tmp_path / "long.wav", seconds=2.5, rate=RATE)
    first_second = tmp_path / "first.wav"
    soundfile.write(first_second, soundfile.read(long)[0][:RATE], RATE)
    for path in (short, long):
        out = prep(path, "s")
        assert out.shape == (8, 32) and out.dtype == torch.float32 and torch.isfinite(out).all()
    torch.testing.assert_close(prep(long, "s"), prep(first_second, "s"), atol=1e-4, rtol=0)
    assert MediaPreprocessor("audio", tiny_whisper, audio_seconds=2.0).item_shape == (8, 64)
    assert prep(long, "s").shape == (8, 32)


def test_real_size_whisper_features(tmp_path):
    extractor = transformers.WhisperFeatureExtractor()  # 80 mels, 30 s chunks, hop 160: no download
    prep = MediaPreprocessor("audio", extractor, name="whisper")
    assert prep.item_shape == (80, 3000) and prep.audio_seconds == 30.0
    out = prep(write_sine(tmp_path / "clip.wav", seconds=2.0, rate=22050, channels=2), "s")
    assert out.shape == (80, 3000)


def test_wav2vec2_input_values_fixed_length(tmp_path):
    extractor = transformers.Wav2Vec2FeatureExtractor()  # 16 kHz, do_normalize=True
    prep = MediaPreprocessor("audio", extractor, audio_seconds=0.5, name="wav2vec2")
    assert prep.item_shape == (8000,) and prep.input_length == 8000
    assert MediaPreprocessor("audio", extractor).item_shape == (160000,)  # 10 s default
    long = write_sine(tmp_path / "long.wav", seconds=1.0, rate=44100)
    out = prep(long, "s")
    assert out.shape == (8000,)
    assert abs(out.mean().item()) < 1e-3 and abs(out.std().item() - 1.0) < 1e-2
    short = write_sine(tmp_path / "short.wav", seconds=0.2, rate=RATE)
    raw = MediaPreprocessor("audio", transformers.Wav2Vec2FeatureExtractor(do_normalize=False), audio_seconds=0.5)
    out = raw(short, "s")
    assert out.shape == (8000,) and (out[3200:] == 0).all()
    np.testing.assert_allclose(out[:3200].numpy(), load_audio(short, "s", RATE, 0.5), atol=1e-6)


def test_audio_preprocessor_skips_propagate(tmp_path, tiny_whisper):
    soundfile.write(tmp_path / "empty.wav", np.zeros(0, np.float32), RATE)
    prep = MediaPreprocessor("audio", tiny_whisper)
    assert skip_reason(prep, tmp_path / "empty.wav", "s").reason == "zero_length_audio"
