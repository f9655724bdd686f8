"""A checked request -> what the model worker runs: prompt ids and media inputs.

The prompt is rendered by :func:`~cotune.data.templates.encode_prompt` with the run's template and
system prompt, exactly as ``cotune predict`` and ``cotune chat`` render it; media go through the
run's own preprocessors (:class:`~cotune.data.media.MediaPreprocessor`), so a request and a
``cotune predict`` call on the same text and files give the same model inputs. Uploaded bytes are
checked before they are decoded (PNG/JPEG/WAV/FLAC signature; an image's pixels, aspect ratio and
the size the run's image processor would resize it to; a clip's duration and samples per second),
so decoding and resizing allocate at most a bounded amount whatever a few bytes of header claim,
and written to a private temporary directory for the preprocessors, removed afterwards. Text may
not hold the model's placeholder tokens. Nothing here has parameters.
"""

from __future__ import annotations

import io
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from cotune.data.schema import MEDIA_MARKERS, Sample, SkipSample
from cotune.data.spec import DataSpec
from cotune.data.templates import encode_prompt
from cotune.serve.config import ServeConfig
from cotune.serve.schema import ChatRequest, MediaItem, RequestError

SIGNATURES = {"png": (b"\x89PNG\r\n\x1a\n",), "jpeg": (b"\xff\xd8\xff",), "wav": (b"RIFF", b"RF64"), "flac": (b"fLaC",)}
#: Most samples per second of audio over all its channels (192 kHz stereo, 48 kHz with 8 channels):
#: decoding keeps at most the encoder's window of them, 4 bytes each.
MAX_AUDIO_SAMPLES_PER_SECOND = 384_000
#: Most characters of text per token of the run's ``max_length``: a longer conversation cannot fit
#: and is refused before it is tokenized.
MAX_CHARS_PER_TOKEN = 64


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
    modality_row: int | None = None  # the model's modality row for these inputs (set by Engine.submit)


def prepare(request: ChatRequest, spec: DataSpec, config: ServeConfig, positions: int | None = None) -> GenerationRequest:
    """Renders the prompt and decodes the media of ``request``; RequestError (400/413) for media
    the model cannot read and prompts longer than the run's ``max_length``. ``positions``: the
    most positions the model can embed (:func:`cotune.serve.engine.position_limit`); a request
    that set no ``max_tokens`` gets the server's default lowered to what fits (one that set it is
    refused by the engine instead, as OpenAI refuses it)."""
    kinds = {e.kind for e in spec.encoders}
    for item in request.media:
        if item.kind not in kinds:
            reads = ", ".join(sorted(kinds)) or "text only"
            raise RequestError(400, f"{item.where}: this model has no {item.kind} encoder (it reads: {reads})", item.where)
    _check_text(request, spec)
    with tempfile.TemporaryDirectory(prefix="cotune-serve-") as tmp:
        paths = [_write(item, Path(tmp) / f"{n}.{item.format}", config, spec) for n, item in enumerate(request.media)]
        sample = Sample("request", request.messages, {kind: [p for p, item in zip(paths, request.media) if item.kind == kind]
                                                      for kind in kinds if any(item.kind == kind for item in request.media)})
        try:
            ids = encode_prompt(sample, spec.tokenizer, spec.slots(), spec.template, spec.system_prompt, spec.max_length)
        except SkipSample as skip:
            detail = skip.detail.removeprefix("request: ")
            if skip.reason == "too_long":
                detail = f"{detail.replace('prompt', 'the conversation', 1)}; shorten it or send fewer media items"
            raise RequestError(400, f"messages: {detail}", "messages") from None
        _check_placeholders(ids, request, spec)
        media = _inputs(request.media, paths, spec, tmp)
    max_tokens = request.max_tokens
    if positions is not None and not request.max_tokens_given:
        max_tokens = max(1, min(max_tokens, positions - len(ids)))  # a prompt that fills the context is refused by the engine
    return GenerationRequest(ids, media, max_tokens, request.temperature, request.top_p, request.stop, request.seed)


def _check_text(request: ChatRequest, spec: DataSpec) -> None:
    """No placeholder token of the model in the text (it would stand for encoder tokens that are not
    there); no more text than the run's ``max_length`` could hold (refused before tokenizing)."""
    markers = set(MEDIA_MARKERS.values())  # placed by the schema, refused in the text there
    for n, message in enumerate(request.messages):
        for encoder in spec.encoders:
            if encoder.placeholder not in markers and encoder.placeholder in message.content:
                raise RequestError(400, f"messages[{n}]: contains {encoder.placeholder!r}, this model's placeholder for "
                                        f"{encoder.kind} inputs; send media as content parts", f"messages[{n}]")
    chars = sum(len(m.content) for m in request.messages)
    if spec.max_length and chars > MAX_CHARS_PER_TOKEN * spec.max_length:
        raise RequestError(400, f"messages: {chars:,} characters of text cannot fit max_length {spec.max_length} tokens; "
                                "shorten the conversation", "messages")


def _check_placeholders(ids: list[int], request: ChatRequest, spec: DataSpec) -> None:
    """Each encoder's placeholder ids in the prompt are exactly its items' tokens (else the text made
    some: a tokenizer that forms them from other text)."""
    for encoder in spec.encoders:
        expected = encoder.tokens * sum(item.kind == encoder.kind for item in request.media)
        if ids.count(encoder.placeholder_id) != expected:
            raise RequestError(400, f"messages: the text forms {encoder.placeholder!r} tokens, this model's placeholder for "
                                    f"{encoder.kind} inputs; send media as content parts", "messages")


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


def _write(item: MediaItem, path: Path, config: ServeConfig, spec: DataSpec) -> Path:
    """Checks ``item``'s signature and size limits, then writes its bytes to ``path``."""
    data = item.data
    if len(data) > config.max_media_bytes:
        raise RequestError(413, f"{item.where}: {len(data):,} bytes; the limit is {config.max_media_bytes:,} bytes per item", item.where)
    if item.kind == "image":
        found = next((fmt for fmt in ("png", "jpeg") if data.startswith(SIGNATURES[fmt])), None)
        if found is None:
            raise RequestError(400, f"{item.where}: not a PNG or JPEG image", item.where)
        path = path.with_suffix(f".{found}")
        _check_image(item, data, config, spec)
    else:
        if not data.startswith(SIGNATURES[item.format]):
            raise RequestError(400, f"{item.where}: not a {item.format.upper()} file", item.where)
        _check_duration(item, data, config)
    path.write_bytes(data)
    return path


def _check_image(item: MediaItem, data: bytes, config: ServeConfig, spec: DataSpec) -> None:
    """From the header: pixels, aspect ratio, and the size each image processor would resize to."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:  # reads the header only
                width, height = image.size
    except Exception as err:  # noqa: BLE001 - Pillow raises many types on malformed headers
        raise RequestError(400, f"{item.where}: not a readable image ({type(err).__name__})", item.where) from None
    if width < 1 or height < 1:
        raise RequestError(400, f"{item.where}: the image is {width}x{height} pixels", item.where)
    if width * height > config.max_image_pixels:
        raise RequestError(413, f"{item.where}: {width}x{height} pixels; the limit is {config.max_image_pixels:,} pixels", item.where)
    aspect = max(width, height) / min(width, height)
    if aspect > config.max_image_aspect:
        shown = f"{aspect:,.1f}".removesuffix(".0")
        raise RequestError(413, f"{item.where}: {width}x{height} pixels, an aspect ratio of {shown}:1; the limit is "
                                f"{config.max_image_aspect:g}:1", item.where)
    for encoder in spec.encoders:
        if encoder.kind != "image":
            continue
        resized = resized_pixels(encoder.preprocess, width, height)
        if resized is not None and resized > config.max_image_pixels:
            raise RequestError(413, f"{item.where}: {width}x{height} pixels would be resized to {resized:,} pixels for encoder "
                                    f"{encoder.name!r}; the limit is {config.max_image_pixels:,} pixels", item.where)


def resized_pixels(preprocess, width: int, height: int) -> int | None:
    """Pixels of the image ``preprocess`` (a :class:`~cotune.data.media.MediaPreprocessor`) resizes
    a ``width`` x ``height`` image to before any crop, from its processor's ``size`` setting
    (``shortest_edge`` [+ ``longest_edge``], ``height`` + ``width``, ``longest_edge``); None when
    the setting is of another kind (the aspect-ratio limit still bounds it then)."""
    if preprocess.image_transform == "square":
        return preprocess.item_shape[1] * preprocess.item_shape[2]
    processor = preprocess.processor
    if not getattr(processor, "do_resize", True):
        return width * height
    size = getattr(processor, "size", None)

    def get(key: str) -> int | None:
        if isinstance(size, int):  # an int size is the shortest edge
            value = size if key == "shortest_edge" else None
        else:
            value = size.get(key) if isinstance(size, dict) else getattr(size, key, None)
        return value if isinstance(value, int) and value > 0 else None

    if get("height") and get("width"):
        return get("height") * get("width")
    short, long = min(width, height), max(width, height)
    if get("shortest_edge"):
        new_short, new_long = get("shortest_edge"), int(get("shortest_edge") * long / short)
        if get("longest_edge") and new_long > get("longest_edge"):
            new_short, new_long = int(new_short * get("longest_edge") / new_long), get("longest_edge")
        return max(new_short, 1) * new_long
    if get("longest_edge"):
        return get("longest_edge") * max(int(get("longest_edge") * short / long), 1)
    return None


def _check_duration(item: MediaItem, data: bytes, config: ServeConfig) -> None:
    import soundfile

    try:
        info = soundfile.info(io.BytesIO(data))
        seconds = info.frames / info.samplerate
    except Exception as err:  # noqa: BLE001 - libsndfile reports malformed files in several ways
        raise RequestError(400, f"{item.where}: not a readable {item.format.upper()} file ({type(err).__name__})", item.where) from None
    if info.samplerate * info.channels > MAX_AUDIO_SAMPLES_PER_SECOND:
        raise RequestError(413, f"{item.where}: {info.samplerate:,} Hz x {info.channels} channels; the limit is "
                                f"{MAX_AUDIO_SAMPLES_PER_SECOND:,} samples per second over all channels", item.where)
    if seconds > config.max_audio_seconds:
        raise RequestError(400, f"{item.where}: audio is {seconds:.1f} s long; the limit is {config.max_audio_seconds:g} s", item.where)
