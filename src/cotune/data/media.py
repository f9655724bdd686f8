"""Decoding media files and turning them into one encoder's fixed-shape input.

Images are decoded with Pillow (fully, EXIF orientation applied, transparency flattened onto
white) and prepared either by the encoder's own image processor or by LaVIN's square transform
(bicubic resize to a square, no crop, mean/std normalisation). Audio is decoded with soundfile,
mixed down to mono, resampled with soxr and prepared by the encoder's feature extractor, cropped or
padded to a fixed length so every item of one encoder yields the same number of tokens.

Files that cannot be used raise :class:`~cotune.data.schema.SkipSample` with a stable reason
(``missing_media``, ``unreadable_media``, ``zero_length_audio``). Nothing here has parameters.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from transformers import Wav2Vec2FeatureExtractor

from cotune.data.schema import SkipSample

IMAGE_TRANSFORMS = ("processor", "square")
MODALITIES = ("image", "audio")
#: Clip length for wav2vec2/HuBERT-style extractors when ``audio_seconds`` is not set.
DEFAULT_WAVEFORM_SECONDS = 10.0
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
_ORIENTATION = 0x0112  # the EXIF orientation tag
#: Largest ratio of an image's long side to its short side. An image processor resizes the short
#: side up (CLIP: to 224 pixels), so a 96-byte 4000x1 PNG would become 224 x 896,000 float pixels
#: (2.4 GB); the bound is checked from the header, before decoding. ``cotune serve`` applies the
#: same default (``--max-image-aspect``).
MAX_IMAGE_ASPECT = 20.0


def _require_file(path: Path, sample_id: str) -> None:
    if not path.is_file():
        raise SkipSample("missing_media", f"{sample_id}: {path} does not exist or is not a file")


def _unreadable(path: Path, sample_id: str, err: BaseException) -> SkipSample:
    return SkipSample("unreadable_media", f"{sample_id}: {path}: {type(err).__name__}: {err}")


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB; transparent pixels are composited onto white."""
    if image.mode == "RGB":
        return image
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        background.alpha_composite(rgba)
        return background.convert("RGB")
    if image.mode.startswith("I"):
        # 16/32-bit greyscale: Pillow's convert clips at 255, so scale 16-bit ranges down first.
        values = np.asarray(image, dtype=np.float64)
        if image.mode.startswith("I;16") or values.max(initial=0) > 255:
            values = values / 257.0
        image = Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), mode="L")
    return image.convert("RGB")


def load_image(path: str | Path, sample_id: str) -> Image.Image:
    """Decodes an image file fully and returns it in RGB, upright per its EXIF orientation.

    Palette, greyscale, CMYK and 16-bit modes are converted to RGB; alpha (and palette or colour-key
    transparency) is composited onto a white background. Images over Pillow's
    ``Image.MAX_IMAGE_PIXELS`` are refused as decompression bombs, and so are images whose long side
    is more than :data:`MAX_IMAGE_ASPECT` times their short side (read from the header, before
    decoding).

    Raises:
        SkipSample: ``missing_media`` if the file does not exist; ``unreadable_media`` (naming the
            path and the error) if it is not an image, is truncated, empty or too large or too narrow.
    """
    path = Path(path)
    _require_file(path, sample_id)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as opened:
                width, height = opened.size
                if min(width, height) < 1 or max(width, height) / min(width, height) > MAX_IMAGE_ASPECT:
                    raise SkipSample("unreadable_media", f"{sample_id}: {path}: {width}x{height} pixels; the long side may be at "
                                                         f"most {MAX_IMAGE_ASPECT:g} times the short side (an image processor "
                                                         f"would scale it up to a huge image)")
                opened.load()  # full decode here, so truncated files fail now and not in a worker later
                # exif_transpose copies the whole image even without an orientation tag: only when there is one
                oriented = opened.getexif().get(_ORIENTATION, 1) not in (1, None)
                return _to_rgb(ImageOps.exif_transpose(opened) if oriented else opened)
    except SkipSample:
        raise
    # Pillow's format plugins raise many exception types on malformed input (OSError, SyntaxError,
    # ValueError, struct.error, IndexError, ...); every one of them means "this file is unusable".
    except Exception as err:  # noqa: BLE001
        raise _unreadable(path, sample_id, err) from err


def square_resize_tensor(
    image: Image.Image, size: int, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """LaVIN's transform: bicubic resize to size x size (aspect not kept, no crop), /255, normalise.

    Args:
        image: an RGB Pillow image of any size.
        size: output height and width.
        mean, std: per-channel statistics (3 values each) applied after scaling to [0, 1].

    Returns:
        pixel values [3, size, size], float32.
    """
    if image.mode != "RGB":
        raise ValueError(f"square_resize_tensor expects an RGB image, got mode {image.mode!r}")
    resized = image.resize((size, size), Image.Resampling.BICUBIC)
    pixels = np.asarray(resized, dtype=np.float32) / 255.0
    pixels = (pixels - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))


def audio_libraries():
    """(soundfile, soxr): the ``audio`` extra, imported when audio is first needed, so that data
    without audio reads without it; MissingExtra (one line naming the extra) when it is absent."""
    try:
        import soundfile
        import soxr
    except ImportError as err:
        from cotune.extras import missing

        raise missing("decoding audio", err.name or "soundfile", "audio") from err
    return soundfile, soxr


def _read_mono(path: Path, sample_id: str, max_seconds: float | None) -> tuple[np.ndarray, int]:
    """(mono float32 samples at the file's rate, that rate); reads only what cropping keeps."""
    soundfile, _soxr = audio_libraries()
    try:
        with soundfile.SoundFile(path) as sound:
            rate = sound.samplerate
            frames = -1
            if max_seconds is not None:
                frames = math.ceil(max_seconds * rate) + max(64, rate // 100)  # margin for the resampler
            data = sound.read(frames, dtype="float32", always_2d=True)
    except (soundfile.SoundFileError, RuntimeError, OSError, ValueError, EOFError) as err:
        raise _unreadable(path, sample_id, err) from err
    if not np.isfinite(data).all():
        raise SkipSample("unreadable_media", f"{sample_id}: {path}: samples are NaN or infinite")
    if data.shape[1] == 1:
        return np.ascontiguousarray(data[:, 0], dtype=np.float32), rate
    # Summing the channel columns is ~20x faster than ndarray.mean(axis=1) on interleaved frames.
    mono = data[:, 0].astype(np.float32)
    for channel in range(1, data.shape[1]):
        mono += data[:, channel]
    return mono / np.float32(data.shape[1]), rate


def load_audio(path: str | Path, sample_id: str, target_rate: int, max_seconds: float | None = None) -> np.ndarray:
    """Decodes an audio file to mono at ``target_rate``, cropped to at most ``max_seconds``.

    Channels are averaged; resampling uses soxr (high quality) when the file's rate differs.

    Returns:
        samples [n], float32 in [-1, 1], n <= round(max_seconds * target_rate).

    Raises:
        SkipSample: ``missing_media``; ``unreadable_media`` (corrupt, truncated header, not audio,
            non-finite samples); ``zero_length_audio`` if no sample is left before or after cropping.
    """
    path = Path(path)
    _require_file(path, sample_id)
    samples, rate = _read_mono(path, sample_id, max_seconds)
    if samples.size == 0:
        raise SkipSample("zero_length_audio", f"{sample_id}: {path} has no samples")
    if rate != target_rate:
        samples = audio_libraries()[1].resample(samples, rate, target_rate).astype(np.float32, copy=False)
    if max_seconds is not None:
        samples = samples[: round(max_seconds * target_rate)]
    if samples.size == 0:
        raise SkipSample("zero_length_audio", f"{sample_id}: {path} has no samples at {target_rate} Hz (max_seconds {max_seconds})")
    return np.clip(samples, -1.0, 1.0)


def _size_field(value, key: str) -> int | None:
    """``key`` of a processor's size/crop_size (a dict, transformers' SizeDict or an int)."""
    if value is None:
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, dict):
        return value.get(key)
    return getattr(value, key, None)


class MediaPreprocessor:
    """One encoder's file -> processed input, with the same shape for every item.

    Images: ``image_transform="processor"`` runs the processor's own pipeline (its output size must
    not depend on the input's); ``"square"`` applies :func:`square_resize_tensor` at the processor's
    ``crop_size`` height, else its ``size`` height, else ``image_size``, with its mean/std.

    Audio: a Whisper-style extractor (``n_samples``/``nb_max_frames``) yields log-mel features for
    audio padded (``padding="max_length"``) or cropped to ``audio_seconds`` (default: its own chunk,
    ``n_samples / sampling_rate``). Given ``frames`` (the encoder's input length: 2 x Whisper's
    ``max_source_positions``, cropped or not), every item has exactly ``frames`` frames: the clip
    is cut to ``audio_seconds`` (default: ``frames`` worth of audio), then zero-padded to ``frames x
    hop_length`` samples; an ``audio_seconds`` longer than that is an error. Without ``frames``
    the frame count follows ``audio_seconds``. A :class:`~transformers.Wav2Vec2FeatureExtractor` (wav2vec2,
    HuBERT) yields the waveform zero-padded or cropped to ``audio_seconds`` (default 10 s), then
    normalised as the extractor does (``do_normalize``; without an attention mask the padding is
    part of the normalised array).

    Attributes:
        item_shape: shape of every item: (3, H, W), (mels, frames) or (samples,).
        input_length: frames (Whisper) or samples (waveform) per audio item; None for images.
        sampling_rate: the rate files are resampled to; None for images.
        audio_seconds: the fixed clip length in seconds; None for images.
    """

    def __init__(
        self,
        modality: str,
        processor,
        *,
        image_transform: str = "processor",
        audio_seconds: float | None = None,
        image_size: int | None = None,
        name: str = "encoder",
        frames: int | None = None,
    ) -> None:
        if processor is None:
            raise ValueError(f"encoder {name!r} has no processor; save one beside the checkpoint")
        if modality not in MODALITIES:
            raise ValueError(f"encoder {name!r}: modality must be one of {list(MODALITIES)}, got {modality!r}")
        if image_transform not in IMAGE_TRANSFORMS:
            raise ValueError(f"image_transform: must be one of {list(IMAGE_TRANSFORMS)}, got {image_transform!r}")
        if audio_seconds is not None and audio_seconds <= 0:
            raise ValueError(f"audio_seconds: must be > 0, got {audio_seconds}")
        if frames is not None and frames < 1:
            raise ValueError(f"encoder {name!r}: frames must be >= 1, got {frames}")
        self.name, self.modality, self.processor = name, modality, processor
        self.image_transform = image_transform
        self.sampling_rate: int | None = None
        self.audio_seconds: float | None = None
        if modality == "image":
            self._init_image(image_size)
        else:
            self._init_audio(audio_seconds, frames)

    @classmethod
    def from_encoder(
        cls, name: str, encoder, *, image_transform: str = "processor", audio_seconds: float | None = None
    ) -> "MediaPreprocessor":
        """From an :class:`~cotune.encoders.Encoder`: its modality, processor, image size and, for
        Whisper, its input length (2 x ``max_source_positions``) and ``crop_seconds`` (the default
        clip length of a cropped window)."""
        config = getattr(getattr(encoder, "backbone", None), "config", None)
        image_size = getattr(encoder, "image_size", None) or getattr(config, "image_size", None)
        frames = None
        if encoder.modality == "audio" and getattr(encoder, "input_name", None) == "input_features":
            positions = getattr(config, "max_source_positions", None)
            frames = 2 * positions if positions else None  # Whisper's conv stem halves the frames
        if audio_seconds is None:
            audio_seconds = getattr(encoder, "crop_seconds", None)
        return cls(
            encoder.modality, encoder.processor, image_transform=image_transform, audio_seconds=audio_seconds,
            image_size=image_size, name=name, frames=frames,
        )

    def _init_image(self, image_size: int | None) -> None:
        if self.image_transform == "square":
            size = (
                _size_field(getattr(self.processor, "crop_size", None), "height")
                or _size_field(getattr(self.processor, "size", None), "height")
                or image_size
            )
            if not size:
                raise ValueError(
                    f"encoder {self.name!r}: image_transform 'square' needs a size; its processor has no "
                    "crop_size/size height and no image_size was given"
                )
            mean, std = getattr(self.processor, "image_mean", None), getattr(self.processor, "image_std", None)
            if mean is None or std is None:
                raise ValueError(
                    f"encoder {self.name!r}: image_transform 'square' needs the processor's image_mean and image_std"
                )
            self._square = (int(size), tuple(mean), tuple(std))
            self.item_shape: tuple[int, ...] = (3, int(size), int(size))
            return
        # Probe with two blank images of opposite aspect: the output must not depend on the input size.
        shapes = {tuple(self._process_image(Image.new("RGB", wh)).shape) for wh in ((48, 24), (24, 48))}
        if len(shapes) != 1:
            raise ValueError(
                f"encoder {self.name!r}: its image processor's output size depends on the input ({sorted(shapes)}); "
                "use image_transform: square"
            )
        self.item_shape = shapes.pop()

    def _init_audio(self, audio_seconds: float | None, frames: int | None) -> None:
        audio_libraries()  # a missing extra is said when the model is set up, not by a loader worker
        processor = self.processor
        self.sampling_rate = int(processor.sampling_rate)
        if hasattr(processor, "n_samples") and hasattr(processor, "nb_max_frames"):
            hop = int(processor.hop_length)
            window = frames * hop if frames is not None else None  # samples the encoder takes
            seconds = audio_seconds or (window or processor.n_samples) / self.sampling_rate
            self._key = "input_features"
            self._samples = round(seconds * self.sampling_rate)
            if window is not None and self._samples > window:
                raise ValueError(
                    f"audio_seconds: {seconds} s is longer than encoder {self.name!r}'s window of "
                    f"{window / self.sampling_rate:g} s ({frames} frames); shorten it or raise crop_seconds"
                )
            # The extractor yields samples // hop frames; padding to the window makes that `frames`.
            self._padded = window or self._samples
            self.item_shape = (int(processor.feature_size), self._padded // hop)
        elif isinstance(processor, Wav2Vec2FeatureExtractor):
            if frames is not None:
                raise ValueError(f"encoder {self.name!r}: frames applies to Whisper-style log-mel extractors only")
            seconds = audio_seconds or DEFAULT_WAVEFORM_SECONDS
            self._key = "input_values"
            self._samples = self._padded = round(seconds * self.sampling_rate)
            self.item_shape = (self._samples,)
        else:
            raise ValueError(
                f"encoder {self.name!r}: unsupported feature extractor {type(processor).__name__}; "
                "supported: Whisper-style (n_samples, nb_max_frames) and Wav2Vec2FeatureExtractor"
            )
        self.audio_seconds = seconds

    @property
    def input_length(self) -> int | None:
        return self.item_shape[-1] if self.modality == "audio" else None

    def _process_image(self, image: Image.Image) -> torch.Tensor:
        if self.image_transform == "square":
            return square_resize_tensor(image, *self._square)
        return self.processor(images=image, return_tensors="pt")["pixel_values"][0].float()

    def __call__(self, path: str | Path, sample_id: str) -> torch.Tensor:
        """One file -> pixel_values [3, H, W] / input_features [mels, frames] / input_values [samples], float32.

        Raises:
            SkipSample: as :func:`load_image` / :func:`load_audio` do.
        """
        if self.modality == "image":
            item = self._process_image(load_image(path, sample_id))
        else:
            samples = load_audio(path, sample_id, self.sampling_rate, self.audio_seconds)
            features = self.processor(
                samples, sampling_rate=self.sampling_rate, padding="max_length", max_length=self._padded,
                truncation=True, return_tensors="np",
            )[self._key][0]
            item = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
        if tuple(item.shape) != self.item_shape:
            raise ValueError(f"{sample_id}: {path} gave an input of shape {tuple(item.shape)}, expected {self.item_shape}")
        return item
