"""Typed configuration of the assembled model: LLM, encoders, connectors, adapters, routing.

Every dataclass validates itself in ``__post_init__``. Configs are plain data and import no
component: the names of encoders, connectors and adapters are checked against their registries where
the model is built (:func:`cotune.model.build.check_component_names`, which the CLI runs right after
reading a config), as are the cross-component checks that need the backbones' own configs (widths,
layer counts).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace

from cotune.config.balance import BalanceConfig
from cotune.config.data import DataConfig
from cotune.config.io import ConfigError, check_choice
from cotune.config.train import TrainConfig

DTYPES = ("float32", "bfloat16", "float16")
TRAINABILITY = ("frozen", "adapter", "lora", "full")
ENCODER_ROUTERS = ("auto", "per_token", "cls", "mean", "constant")
LLM_ROUTERS = ("auto", "modality")
REDUCTIONS = ("cls", "patches", "all", "mean", "windows")
# Encoders with a fixed-length input window (Whisper: 30 s of mel frames) that crop_seconds shortens.
CROPPABLE_ENCODERS = ("whisper",)
TEXT_KEY = "text"


@dataclass(frozen=True)
class AdapterConfig:
    """Which adapter is inserted into a backbone and its hyper-parameters.

    ``type`` is a registered adapter name: ``mm_adapter`` (LaVIN's mixture-of-modality adapter),
    ``rep_adapter`` (plain bottleneck with residual), ``lora`` (PEFT) or ``none``.
    ``gate`` (the LLM's LoRA only): ``media`` applies the LoRA update to samples with media and
    leaves text-only samples on the untuned LLM; ``none`` applies it to every sample.
    """

    type: str = "none"
    dim: int = 8
    groups: int = 2
    experts: int = 2
    temperature: float = 10.0
    dropout: float = 0.1
    scale: float = 1.0
    router: str = "auto"
    sites: str = "attn"
    attention_module: str | None = None
    ffn_module: str | None = None
    lora_r: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.05
    target_modules: tuple[str, ...] = ("all-linear",)
    gate: str = "none"

    def __post_init__(self) -> None:
        check_choice("router", self.router, ENCODER_ROUTERS + LLM_ROUTERS[1:])
        check_choice("gate", self.gate, ("none", "media"))
        check_choice("sites", self.sites, ("attn", "attn+ffn"))
        for name in ("dim", "groups", "experts", "lora_r"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.dim % self.groups:
            raise ConfigError(f"groups: dim {self.dim} is not divisible by groups {self.groups}")
        if self.temperature <= 0:
            raise ConfigError(f"temperature: must be > 0, got {self.temperature}")
        for name in ("dropout", "lora_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"{name}: must be in [0, 1), got {getattr(self, name)}")
        if not self.target_modules:
            raise ConfigError("target_modules: must name at least one module (or 'all-linear')")


def _check_trainability(trainable: str, adapter: AdapterConfig) -> AdapterConfig:
    """Validates ``trainable`` against ``adapter`` and returns the (possibly derived) adapter."""
    check_choice("trainable", trainable, TRAINABILITY)
    if trainable == "lora":
        if adapter.type == "none":
            return replace(adapter, type="lora")
        if adapter.type != "lora":
            raise ConfigError(
                f"trainable: 'lora' trains LoRA weights, but adapter.type is {adapter.type!r}; "
                "use trainable: adapter to train that adapter"
            )
    if trainable == "adapter" and adapter.type == "none":
        raise ConfigError(
            "trainable: 'adapter' needs adapter.type set to one of mm_adapter, rep_adapter, lora"
        )
    return adapter


def _check_full_precision(trainable: str, dtype: str) -> None:
    if trainable == "full" and dtype != "float32":
        raise ConfigError(f"dtype: trainable 'full' keeps the trained weights in float32, got dtype {dtype!r}")


QUANT_TYPES = ("nf4", "fp4")
# Encoders loaded through transformers' from_pretrained, which is where BitsAndBytesConfig applies.
QUANTIZABLE_ENCODERS = ("clip", "siglip", "vit", "dinov2", "whisper", "wav2vec2", "hubert")


@dataclass(frozen=True)
class QuantizationConfig:
    """Frozen backbone weights stored in 4 or 8 bits (bitsandbytes, through transformers'
    ``BitsAndBytesConfig``): QLoRA's and LaVIN-lite's setting.

    Only the backbone's linear layers are quantized; embeddings, norms, the LM head and every
    trainable part (adapters, LoRA, necks, modality rows) keep their own dtype. ``type`` and
    ``double_quant`` apply to 4 bits; ``compute_dtype`` is the dtype 4-bit layers compute in.
    """

    bits: int = 4
    type: str = "nf4"
    double_quant: bool = True
    compute_dtype: str = "float32"

    def __post_init__(self) -> None:
        check_choice("bits", self.bits, (4, 8))
        check_choice("type", self.type, QUANT_TYPES)
        check_choice("compute_dtype", self.compute_dtype, DTYPES)


def _check_quantization(quantization: "QuantizationConfig | None", trainable: str) -> None:
    if quantization is not None and trainable == "full":
        raise ConfigError(
            "quantization: a quantized backbone cannot be trained in full; use trainable adapter or lora (QLoRA)"
        )


@dataclass(frozen=True)
class ConnectorConfig:
    """Maps selected encoder features [B, N, D_enc] to LLM tokens [B, N', D_llm].

    ``type``: ``lavin-neck`` (Linear-SiLU-Linear, ``hidden`` default 128), ``linear``,
    ``mlp2x-gelu`` (LLaVA-1.5), ``audio-pool`` (average pool over ``stride`` frames, then MLP).
    """

    type: str = "mlp2x-gelu"
    hidden: int | None = None
    stride: int = 4
    trainable: str = "full"

    def __post_init__(self) -> None:
        check_choice("trainable", self.trainable, ("full", "frozen"))
        if self.hidden is not None and self.hidden < 1:
            raise ConfigError(f"hidden: must be >= 1, got {self.hidden}")
        if self.stride < 1:
            raise ConfigError(f"stride: must be >= 1, got {self.stride}")


def _check_crop(encoder_type: str, crop_seconds: float | None) -> None:
    if crop_seconds is None:
        return
    if encoder_type not in CROPPABLE_ENCODERS:
        raise ConfigError(
            f"crop_seconds: only {', '.join(CROPPABLE_ENCODERS)} encoders have a fixed window to crop, got type {encoder_type!r}"
        )
    if isinstance(crop_seconds, bool) or not isinstance(crop_seconds, (int, float)) or not crop_seconds > 0:
        raise ConfigError(f"crop_seconds: must be a number of seconds > 0, got {crop_seconds!r}")
    # The upper bound (the checkpoint's window) needs its config.json: checked when the encoder loads.


@dataclass(frozen=True)
class EncoderConfig:
    """One feature encoder, its feature selection, adapter and connector.

    ``layers`` index the encoder's hidden states as transformers reports them: 0 is the embedding
    output, k the output of block k (before any final norm, except Whisper, whose last hidden
    state includes the encoder's final LayerNorm), negative values count from the end (-1 = last).
    ``reduce`` turns each selected layer [B, N, D_enc] into tokens: ``cls`` (first token),
    ``patches`` (all but the prefix tokens), ``all``, ``mean`` (one token), ``windows``
    (average pool of ``window`` tokens, stride ``window``). ``layer_merge`` joins several layers on
    the token axis (``tokens``, LaVIN's 6 [cls] tokens) or the feature axis (``features``, LLaVA's
    multi-layer features: D_enc x n_layers wide).
    ``crop_seconds`` (``whisper`` only): shorten Whisper's fixed 30 s window to this many seconds:
    the encoder keeps the first ceil(crop_seconds x frames-per-second / 2) positions (1 per 20 ms
    at 16 kHz / hop 160) and clips are padded or cut to ``crop_seconds`` (the default clip length;
    ``data.audio_seconds`` may be shorter, never longer). Must not exceed the checkpoint's window.
    """

    type: str
    name_or_path: str
    placeholder: str | None = None
    layers: tuple[int, ...] = (-1,)
    reduce: str = "patches"
    window: int = 1
    layer_merge: str = "tokens"
    dtype: str = "float32"
    trainable: str = "frozen"
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    connector: ConnectorConfig = field(default_factory=ConnectorConfig)
    image_norm: str = "encoder"
    trust_remote_code: bool = False
    revision: str | None = None
    crop_seconds: float | None = None
    quantization: QuantizationConfig | None = None

    def __post_init__(self) -> None:
        _check_crop(self.type, self.crop_seconds)
        _check_quantization(self.quantization, self.trainable)
        if self.quantization is not None and self.type not in QUANTIZABLE_ENCODERS:
            raise ConfigError(
                f"quantization: {self.type!r} encoders are not loaded through transformers and cannot be quantized; "
                f"quantizable types: {', '.join(QUANTIZABLE_ENCODERS)}"
            )
        if self.crop_seconds is not None:
            object.__setattr__(self, "crop_seconds", float(self.crop_seconds))
        check_choice("reduce", self.reduce, REDUCTIONS)
        check_choice("layer_merge", self.layer_merge, ("tokens", "features"))
        check_choice("dtype", self.dtype, DTYPES)
        check_choice("image_norm", self.image_norm, ("encoder", "imagenet"))
        check_choice("adapter.router", self.adapter.router, ENCODER_ROUTERS)
        if self.adapter.type == "mm_adapter" and self.adapter.experts < 1:
            raise ConfigError("adapter.experts: must be >= 1")
        if not self.layers:
            raise ConfigError("layers: select at least one hidden layer")
        if len(set(self.layers)) != len(self.layers):
            raise ConfigError(f"layers: duplicates in {list(self.layers)}")
        if self.window < 1:
            raise ConfigError(f"window: must be >= 1, got {self.window}")
        _check_full_precision(self.trainable, self.dtype)
        if self.placeholder is not None and not self.placeholder.strip():
            raise ConfigError("placeholder: must be a non-empty token string")
        object.__setattr__(self, "adapter", _check_trainability(self.trainable, self.adapter))
        if self.adapter.gate != "none":
            raise ConfigError("adapter.gate: gating by media is for the LLM's LoRA; an encoder only ever sees media")


@dataclass(frozen=True)
class LLMConfig:
    """The causal language model (any ``AutoModelForCausalLM``) and its adaptation."""

    name_or_path: str
    dtype: str = "float32"
    trainable: str = "frozen"
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    trust_remote_code: bool = False
    revision: str | None = None
    gguf_file: str | None = None
    attn_implementation: str | None = None
    quantization: QuantizationConfig | None = None

    def __post_init__(self) -> None:
        check_choice("dtype", self.dtype, DTYPES)
        check_choice("adapter.router", self.adapter.router, LLM_ROUTERS)
        _check_full_precision(self.trainable, self.dtype)
        _check_quantization(self.quantization, self.trainable)
        if self.quantization is not None and self.gguf_file is not None:
            raise ConfigError("quantization: a GGUF checkpoint is dequantized on load; quantize it again or drop gguf_file")
        object.__setattr__(self, "adapter", _check_trainability(self.trainable, self.adapter))
        if self.adapter.gate != "none" and self.adapter.type != "lora":
            raise ConfigError(f"adapter.gate: {self.adapter.gate!r} gates LoRA updates; adapter.type is {self.adapter.type!r}"
                              + (" (MM-Adapters already route by modality)" if self.adapter.type == "mm_adapter" else ""))


@dataclass(frozen=True)
class RoutingConfig:
    """How the modality token drives the LLM's mixture-of-modality adapters.

    ``mode: separate`` (default) runs the modality rows as length-1 sequences and the text without
    them; ``inline`` prepends the row and masks it from every text token (LaVIN's reference).
    ``rows: per_modality`` runs one row per modality key without dropout (deterministic routing);
    ``per_sample`` runs one row per sample with the adapters' dropout (the reference in distribution).
    ``modality_keys``: ``auto`` = text plus every non-empty combination of the encoders, or an
    explicit list such as ``[text, image, audio]`` (combinations written ``audio+image``).
    """

    mode: str = "separate"
    rows: str = "per_modality"
    modality_keys: tuple[str, ...] = ("auto",)

    def __post_init__(self) -> None:
        check_choice("mode", self.mode, ("separate", "inline"))
        check_choice("rows", self.rows, ("per_modality", "per_sample"))
        if self.mode == "inline" and self.rows != "per_sample":
            raise ConfigError("rows: inline routing carries one modality row per sample; use rows: per_sample")


def modality_key(names: "frozenset[str] | set[str]") -> str:
    """Canonical key of a set of encoder names (sorted, '+'-joined); the empty set is 'text'."""
    return "+".join(sorted(names)) if names else TEXT_KEY


@dataclass(frozen=True)
class ModelConfig:
    """The assembled model: one LLM, any number of named encoders (keyed by e.g. ``image``)."""

    llm: LLMConfig
    encoders: dict[str, EncoderConfig] = field(default_factory=dict)
    routing: RoutingConfig = field(default_factory=RoutingConfig)

    def __post_init__(self) -> None:
        resolved = {}
        placeholders: dict[str, str] = {}
        for name, enc in self.encoders.items():
            if not name.isidentifier():
                raise ConfigError(f"encoders.{name}: encoder names must be identifiers (e.g. image, audio)")
            if name == TEXT_KEY:
                raise ConfigError(f"encoders.{name}: {TEXT_KEY!r} is reserved for text-only samples")
            if enc.placeholder is None:
                enc = replace(enc, placeholder=f"<{name}>")
            if enc.placeholder in placeholders:
                raise ConfigError(
                    f"encoders.{name}.placeholder: {enc.placeholder!r} is also used by encoders.{placeholders[enc.placeholder]}"
                )
            placeholders[enc.placeholder] = name
            resolved[name] = enc
        object.__setattr__(self, "encoders", resolved)
        if self.llm.adapter.gate == "media" and not resolved:
            raise ConfigError("llm.adapter.gate: 'media' needs at least one encoder (without one every sample is text-only)")
        keys = self.resolved_modality_keys()
        if self.llm.adapter.type == "mm_adapter" and len(keys) < 1:
            raise ConfigError("routing.modality_keys: needs at least one key")

    def resolved_modality_keys(self) -> list[str]:
        """Modality keys in row order of the modality embedding (text first)."""
        if self.routing.modality_keys == ("auto",):
            names = list(self.encoders)
            combos = [
                modality_key(set(c)) for r in range(1, len(names) + 1) for c in itertools.combinations(names, r)
            ]
            return [TEXT_KEY] + combos
        keys = []
        for key in self.routing.modality_keys:
            parts = key.split("+")
            if key != TEXT_KEY and any(p not in self.encoders for p in parts):
                raise ConfigError(
                    f"routing.modality_keys: {key!r} names no configured encoder; valid parts: "
                    f"{', '.join([TEXT_KEY, *self.encoders])}"
                )
            canonical = TEXT_KEY if key == TEXT_KEY else modality_key(set(parts))
            if canonical in keys:
                raise ConfigError(f"routing.modality_keys: duplicate key {key!r}")
            keys.append(canonical)
        return keys


def is_quantized(config: ModelConfig) -> bool:
    """Whether any backbone of ``config`` is loaded in 4 or 8 bits."""
    return config.llm.quantization is not None or any(e.quantization is not None for e in config.encoders.values())


def dequantized(config: ModelConfig) -> ModelConfig:
    """``config`` with every backbone loaded in its own dtype instead of 4 or 8 bits."""
    encoders = {name: replace(enc, quantization=None) for name, enc in config.encoders.items()}
    return replace(config, llm=replace(config.llm, quantization=None), encoders=encoders)


@dataclass(frozen=True)
class CotuneConfig:
    """Root configuration: model, data, train, balance (evaluation settings join later)."""

    model: ModelConfig
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    balance: BalanceConfig = field(default_factory=BalanceConfig)
    seed: int = 0
