"""Encoders backed by transformers classes: CLIP, SigLIP, ViT, DINOv2 vision; Whisper, wav2vec2, HuBERT audio.

Each registered name maps to an :class:`HFEncoderSpec` (classes, where the blocks live, the input
keyword, the prefix-token count). Loading uses the checked loader (no silent random weights);
``meta=True`` builds the same module tree from ``config.json`` alone, on the meta device.

Whisper's window can be cropped (``EncoderConfig.crop_seconds``): see :func:`crop_whisper_encoder`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import transformers
from torch import nn

from cotune.adapters.sites import find_blocks
from cotune.backbones.loading import LoadError, load_config_only, load_pretrained, meta_device
from cotune.config.io import ConfigError
from cotune.config.model import EncoderConfig
from cotune.encoders.base import Encoder

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Whisper's log-mel frame rate (16 kHz, hop 160) when no feature extractor says otherwise.
WHISPER_FRAMES_PER_SECOND = 100.0


@dataclass(frozen=True)
class HFEncoderSpec:
    """How to load and read one transformers encoder family.

    Blocks are found generically: the list of identical modules whose length is the config's
    layer count (transformers moves them between releases, so no attribute paths are hard-coded).

    ``sub_model``: attribute of the loaded model that is the encoder (Whisper's ``encoder``); the
    checkpoint is loaded through ``model_class`` so its key prefixes match.
    """

    model_class: str
    config_class: str
    input_name: str
    modality: str
    prefix_tokens: Callable[[object], int]
    sub_model: str | None = None
    model_kwargs: tuple[tuple[str, object], ...] = ()

    def tokens(self, config) -> int | None:
        if self.modality == "image":
            return (config.image_size // config.patch_size) ** 2 + self.prefix_tokens(config)
        if hasattr(config, "max_source_positions"):  # Whisper: a fixed window (30 s, or crop_seconds)
            return config.max_source_positions
        return None


HF_ENCODER_SPECS: dict[str, HFEncoderSpec] = {
    "clip": HFEncoderSpec("CLIPVisionModel", "CLIPVisionConfig", "pixel_values", "image", lambda c: 1),
    "siglip": HFEncoderSpec("SiglipVisionModel", "SiglipVisionConfig", "pixel_values", "image", lambda c: 0),
    "vit": HFEncoderSpec("ViTModel", "ViTConfig", "pixel_values", "image", lambda c: 1, model_kwargs=(("add_pooling_layer", False),)),
    "dinov2": HFEncoderSpec("Dinov2Model", "Dinov2Config", "pixel_values", "image", lambda c: 1),
    "whisper": HFEncoderSpec("WhisperModel", "WhisperConfig", "input_features", "audio", lambda c: 0, sub_model="encoder"),
    "wav2vec2": HFEncoderSpec("Wav2Vec2Model", "Wav2Vec2Config", "input_values", "audio", lambda c: 0),
    "hubert": HFEncoderSpec("HubertModel", "HubertConfig", "input_values", "audio", lambda c: 0),
}


def _load_processor(spec: HFEncoderSpec, config: EncoderConfig, quiet: bool = False):
    """The encoder's image processor or feature extractor, or None if the path has none."""
    auto = transformers.AutoImageProcessor if spec.modality == "image" else transformers.AutoFeatureExtractor
    try:
        processor = auto.from_pretrained(
            config.name_or_path, revision=config.revision, trust_remote_code=config.trust_remote_code
        )
    except (OSError, ValueError) as err:
        log.log(logging.DEBUG if quiet else logging.WARNING, "no %s processor found for %s (%s); raw inputs cannot be prepared", spec.modality, config.name_or_path, err)
        return None
    if config.image_norm == "imagenet" and hasattr(processor, "image_mean"):
        # LaVIN normalises CLIP inputs with ImageNet statistics, not CLIP's own.
        processor.image_mean, processor.image_std = list(IMAGENET_MEAN), list(IMAGENET_STD)
    return processor


def mel_frames_per_second(processor=None) -> float:
    """The feature extractor's frame rate (sampling_rate / hop_length), else Whisper's 100."""
    rate, hop = getattr(processor, "sampling_rate", None), getattr(processor, "hop_length", None)
    return rate / hop if rate and hop else WHISPER_FRAMES_PER_SECOND


def crop_positions(crop_seconds: float, frames_per_second: float) -> int:
    """Encoder positions covering ``crop_seconds``: one per two mel frames (conv2 has stride 2)."""
    # Rounded to 1e-6 first so e.g. 0.7 s x 100 frames/s (70.00000000000001) stays 35 positions, not 36.
    return math.ceil(round(crop_seconds * frames_per_second, 6) / 2)


def crop_whisper_encoder(encoder: nn.Module, positions: int) -> None:
    """Shortens a transformers ``WhisperEncoder`` to its first ``positions`` positions, in place.

    The positional table [positions_max, D_enc] is replaced by its first ``positions`` rows and the
    config's ``max_source_positions`` set to ``positions``: WhisperEncoder.forward requires input
    features [B, mels, 2 x max_source_positions] and adds the whole table, so both go together.
    Nothing else changes: the conv stem and blocks run on the shorter sequence as they would on 30 s.
    """
    table = encoder.embed_positions
    if not 1 <= positions <= table.num_embeddings:
        raise ValueError(f"positions: {positions} is outside 1..{table.num_embeddings}")
    cropped = nn.Embedding(positions, table.embedding_dim, device=table.weight.device, dtype=table.weight.dtype)
    with torch.no_grad():
        cropped.weight.copy_(table.weight[:positions])
    cropped.weight.requires_grad_(table.weight.requires_grad)
    encoder.embed_positions = cropped
    encoder.config.max_source_positions = positions
    encoder.max_source_positions = positions  # WhisperEncoder mirrors the config value; keep them equal


def _crop(model: nn.Module, config: EncoderConfig, processor) -> None:
    if not hasattr(model.config, "max_source_positions") or not hasattr(model, "embed_positions"):
        raise ConfigError(f"crop_seconds: {type(model).__name__} has no fixed window of positions to crop")
    fps = mel_frames_per_second(processor)
    positions, window = crop_positions(config.crop_seconds, fps), model.config.max_source_positions
    if positions > window:
        raise ConfigError(
            f"crop_seconds: {config.crop_seconds} s is longer than the window of {config.name_or_path} "
            f"({2 * window / fps:g} s, max_source_positions {window})"
        )
    crop_whisper_encoder(model, positions)
    log.info("whisper window cropped to %g s: %d of %d positions", config.crop_seconds, positions, window)


class HFEncoder(Encoder):
    """A transformers encoder read through ``output_hidden_states`` (hidden_states[k] = after block k).

    Attributes:
        crop_seconds: Whisper's cropped window in seconds (``EncoderConfig.crop_seconds``), else None.
    """

    def __init__(self, spec: HFEncoderSpec, backbone: nn.Module, processor=None, crop_seconds: float | None = None) -> None:
        config = backbone.config
        self_blocks = find_blocks(backbone, getattr(config, "num_hidden_layers", None) or config.encoder_layers)
        num_blocks = len(self_blocks[1])
        super().__init__(
            backbone,
            hidden_size=getattr(config, "hidden_size", None) or config.d_model,
            num_blocks=num_blocks,
            num_prefix_tokens=spec.prefix_tokens(config),
            processor=processor,
        )
        self.spec = spec
        self.blocks_path = self_blocks[0]
        self.modality = spec.modality
        self.input_name = spec.input_name
        self.crop_seconds = crop_seconds

    @classmethod
    def load(cls, spec: HFEncoderSpec, config: EncoderConfig, meta: bool = False) -> "HFEncoder":
        model_class = getattr(transformers, spec.model_class)
        hub = {"revision": config.revision, "trust_remote_code": config.trust_remote_code}
        if meta:
            hf_config = load_config_only(getattr(transformers, spec.config_class), config.name_or_path, **hub)
            with meta_device():
                model = model_class._from_config(hf_config, dtype=torch.float32, **dict(spec.model_kwargs))
            processor = _load_processor(spec, config, quiet=True)  # data checks need it; dry runs may lack it
        else:
            model = load_pretrained(
                model_class, config.name_or_path, dtype=config.dtype, quantization=config.quantization,
                **hub, **dict(spec.model_kwargs),
            )
            processor = _load_processor(spec, config)
        if spec.sub_model is not None:
            model = getattr(model, spec.sub_model)  # the rest (e.g. Whisper's decoder) is dropped
        if config.crop_seconds is not None:
            _crop(model, config, processor)
        return cls(spec, model, processor, config.crop_seconds)

    def block_sites(self) -> list[tuple[nn.Module, str]]:
        blocks = self.backbone.get_submodule(self.blocks_path)
        return [(blocks, str(i)) for i in range(len(blocks))]

    def num_tokens(self, input_length: int | None = None) -> int | None:
        fixed = self.spec.tokens(self.backbone.config)
        if fixed is not None or input_length is None:
            return fixed
        # wav2vec2 / HuBERT: the convolutional front end's output length for input_length samples.
        lengths = self.backbone._get_feat_extract_output_lengths(torch.tensor([input_length]))
        return int(lengths[0])

    def dummy_input(self) -> torch.Tensor:
        config = self.backbone.config
        device = next(self.backbone.parameters()).device
        if self.modality == "image":
            return torch.zeros(1, getattr(config, "num_channels", 3), config.image_size, config.image_size, device=device)
        if self.input_name == "input_features":  # Whisper: mel bins x 2 * positions frames
            return torch.zeros(1, config.num_mel_bins, 2 * config.max_source_positions, device=device)
        return torch.zeros(1, 16000, device=device)  # one second of raw audio

    def hidden_states(self, inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """inputs: pixel_values [B, 3, H, W] / input_features [B, mels, frames] / input_values [B, samples]."""
        # The first floating parameter: a quantized backbone's linear weights are uint8/int8.
        dtype = next(p.dtype for p in self.backbone.parameters() if p.is_floating_point())
        if inputs.is_floating_point():
            inputs = inputs.to(dtype)
        out = self.backbone(**{self.input_name: inputs}, output_hidden_states=True)
        hidden = out.hidden_states
        if hidden is None or len(hidden) != self.num_blocks + 1:
            raise LoadError(
                f"{type(self.backbone).__name__} returned {0 if hidden is None else len(hidden)} hidden states, "
                f"expected {self.num_blocks + 1}"
            )
        return hidden


def make_loader(name: str):
    spec = HF_ENCODER_SPECS[name]

    def load(config: EncoderConfig, meta: bool = False) -> HFEncoder:
        return HFEncoder.load(spec, config, meta)

    load.__doc__ = f"Loads a {spec.model_class} encoder ({spec.modality})."
    return load
