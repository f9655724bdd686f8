"""A checked request -> what the model worker runs: prompt ids and media inputs.

The prompt is rendered by :func:`~cotune.data.templates.encode_prompt` with the run's template and
system prompt, exactly as ``cotune predict`` and ``cotune chat`` render it; media go through the
run's own preprocessors (:class:`~cotune.data.media.MediaPreprocessor`), so a request and a
``cotune predict`` call on the same text and files give the same model inputs. Uploaded bytes are
checked (PNG/JPEG/WAV/FLAC signature, pixel count, duration) before they are decoded, and written
to a private temporary directory for the preprocessors, removed afterwards. Nothing here has
parameters.
"""

from __future__ import annotations

import io
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from cotune.data.schema import Sample, SkipSample
from cotune.data.spec import DataSpec
from cotune.data.templates import encode_prompt
from cotune.serve.config import ServeConfig
from cotune.serve.schema import ChatRequest, MediaItem, RequestError

SIGNATURES = {"png": (b"\x89PNG\r\n\x1a\n",), "jpeg": (b"\xff\xd8\xff",), "wav": (b"RIFF", b"RF64"), "flac": (b"fLaC",)}


@dataclass
class GenerationRequest:
    """One generation for the worker: prompt ids [T], media {encoder name: input [n, ...]} and the
    sampling settings (temperature 0 is greedy)."""

    prompt_ids: list[int]
    media: dict[str, torch.Tensor]
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None


def prepare(request: ChatRequest, spec: DataSpec, config: ServeConfig) -> GenerationRequest:
    """Renders the prompt and decodes the media of ``request``; RequestError (400/413) for media
    the model cannot read and prompts longer than the run's ``max_length``."""
    kinds = {e.kind for e in spec.encoders}
    for item in request.media:
        if item.kind not in kinds:
            reads = ", ".join(sorted(kinds)) or "text only"
            raise RequestError(400, f"{item.where}: this model has no {item.kind} encoder (it reads: {reads})", item.where)
    with tempfile.TemporaryDirectory(prefix="cotune-serve-") as tmp:
        paths = [_write(item, Path(tmp) / f"{n}.{item.format}", config) for n, item in enumerate(request.media)]
        sample = Sample("request", request.messages, {kind: [p for p, item in zip(paths, request.media) if item.kind == kind]
                                                      for kind in kinds if any(item.kind == kind for item in request.media)})
        try:
            ids = encode_prompt(sample, spec.tokenizer, spec.slots(), spec.template, spec.system_prompt, spec.max_length)
        except SkipSample as skip:
            detail = skip.detail.removeprefix("request: ")
            if skip.reason == "too_long":
                detail = f"{detail.replace('prompt', 'the conversation', 1)}; shorten it or send fewer media items"
            raise RequestError(400, f"messages: {detail}", "messages") from None
        media = _inputs(request.media, paths, spec, tmp)
    return GenerationRequest(ids, media, request.max_tokens, request.temperature, request.top_p, request.stop, request.seed)


def _inputs(items: list[MediaItem], paths: list[Path], spec: DataSpec, tmp: str) -> dict[str, torch.Tensor]:
    """Every item through every encoder of its kind, stacked per encoder in marker order."""
    inputs: dict[str, list[torch.Tensor]] = {}
    for item, path in zip(items, paths):
        for encoder in spec.encoders:
            if encoder.kind != item.kind:
                continue
            try:
                inputs.setdefault(encoder.name, []).append(encoder.preprocess(path, item.where))
            except SkipSample as skip:
                detail = skip.detail.replace(f"{item.where}: ", "", 1).replace(f"{path}: ", "").replace(str(path), "the upload")
                detail = detail.replace(tmp, "")
                raise RequestError(400, f"{item.where}: not a readable {item.kind} ({skip.reason}: {detail})", item.where) from None
            except Exception as err:  # noqa: BLE001 - processors raise many types on odd input
                message = f"{item.where}: the {item.kind} could not be processed ({type(err).__name__})"
                raise RequestError(400, message, item.where) from None
    return {name: torch.stack(tensors) for name, tensors in inputs.items()}


def _write(item: MediaItem, path: Path, config: ServeConfig) -> Path:
    """Checks ``item``'s signature and size limits, then writes its bytes to ``path``."""
    data = item.data
    if len(data) > config.max_media_bytes:
        raise RequestError(413, f"{item.where}: {len(data):,} bytes; the limit is {config.max_media_bytes:,} bytes per item", item.where)
    if item.kind == "image":
        found = next((fmt for fmt in ("png", "jpeg") if data.startswith(SIGNATURES[fmt])), None)
        if found is None:
            raise RequestError(400, f"{item.where}: not a PNG or JPEG image", item.where)
        path = path.with_suffix(f".{found}")
        _check_pixels(item, data, config)
    else:
        if not data.startswith(SIGNATURES[item.format]):
            raise RequestError(400, f"{item.where}: not a {item.format.upper()} file", item.where)
        _check_duration(item, data, config)
    path.write_bytes(data)
    return path


def _check_pixels(item: MediaItem, data: bytes, config: ServeConfig) -> None:
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:  # reads the header only
                width, height = image.size
    except Exception as err:  # noqa: BLE001 - Pillow raises many types on malformed headers
        raise RequestError(400, f"{item.where}: not a readable image ({type(err).__name__})", item.where) from None
    if width * height > config.max_image_pixels:
        raise RequestError(413, f"{item.where}: {width}x{height} pixels; the limit is {config.max_image_pixels:,} pixels", item.where)


def _check_duration(item: MediaItem, data: bytes, config: ServeConfig) -> None:
    import soundfile

    try:
        info = soundfile.info(io.BytesIO(data))
        seconds = info.frames / info.samplerate
    except Exception as err:  # noqa: BLE001 - libsndfile reports malformed files in several ways
        raise RequestError(400, f"{item.where}: not a readable {item.format.upper()} file ({type(err).__name__})", item.where) from None
    if seconds > config.max_audio_seconds:
        raise RequestError(400, f"{item.where}: audio is {seconds:.1f} s long; the limit is {config.max_audio_seconds:g} s", item.where)
