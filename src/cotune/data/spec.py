"""What the data pipeline needs from the model: tokenizer, placeholders, tokens per item, processors.

Built from a live model (:func:`data_spec_from_model`) or from a config alone
(:func:`data_spec_from_config`: tokenizer and processors are read, the backbones are built on the
meta device for token counts, no weights are loaded).
"""

from __future__ import annotations

from dataclasses import dataclass

from cotune.config import ConfigError, CotuneConfig, DataConfig
from cotune.data.media import MediaPreprocessor
from cotune.data.templates import MediaSlot, resolve_template


@dataclass
class EncoderInput:
    """One encoder as seen by the data: its media kind, placeholder token and id, LLM tokens per
    item, and the preprocessor that turns a file into the encoder's input tensor."""

    name: str
    kind: str
    placeholder: str
    placeholder_id: int
    tokens: int
    preprocess: MediaPreprocessor


@dataclass
class DataSpec:
    tokenizer: object
    encoders: list[EncoderInput]
    template: str
    system_prompt: str | None
    max_length: int

    @property
    def pad_id(self) -> int:
        tok = self.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        if pad is None:
            raise ValueError("the tokenizer has neither a pad nor an EOS token to pad batches with")
        return pad

    def slots(self) -> dict[str, MediaSlot]:
        """Per media kind: the marker token used while rendering and the ids one item expands to."""
        slots = {}
        for kind in dict.fromkeys(e.kind for e in self.encoders):
            encoders = [e for e in self.encoders if e.kind == kind]
            expansion = tuple(i for e in encoders for i in [e.placeholder_id] * e.tokens)
            slots[kind] = MediaSlot(kind, encoders[0].placeholder, expansion)
        return slots


def _encoder_inputs(model, data: DataConfig) -> list[EncoderInput]:
    inputs = []
    for name, encoder in model.encoders.items():
        if encoder.processor is None:
            raise ConfigError(f"model.encoders.{name}: no image processor / feature extractor was found beside the checkpoint")
        try:
            preprocess = MediaPreprocessor.from_encoder(name, encoder, image_transform=data.image_transform, audio_seconds=data.audio_seconds)
        except ValueError as err:  # e.g. a processor whose output size depends on the image
            raise ConfigError(f"model.encoders.{name}: {err}") from None
        tokens = model.num_media_tokens(name, preprocess.input_length)
        if tokens is None:
            raise ConfigError(f"model.encoders.{name}: cannot tell how many tokens one item becomes")
        inputs.append(EncoderInput(name, encoder.modality, model.config.encoders[name].placeholder, model.placeholder_ids[name], tokens, preprocess))
    return inputs


def data_spec_from_model(model, data: DataConfig) -> DataSpec:
    """The spec of a built model (its tokenizer already holds the placeholders)."""
    try:
        template = resolve_template(data.template, model.tokenizer)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    return DataSpec(model.tokenizer, _encoder_inputs(model, data), template, data.system_prompt, data.max_length)


def data_spec_from_config(config: CotuneConfig) -> DataSpec:
    """The spec without loading weights: tokenizer and processors are read, modules built on meta."""
    from cotune.backbones.llm import add_placeholders, load_tokenizer
    from cotune.model import build_model

    from cotune.zoo.sources import resolve_sources

    model = build_model(config, meta=True)
    tokenizer = load_tokenizer(resolve_sources(config.model).llm)
    model.tokenizer = tokenizer
    model.placeholder_ids = add_placeholders(tokenizer, {n: c.placeholder for n, c in config.model.encoders.items()})
    return data_spec_from_model(model, config.data)
