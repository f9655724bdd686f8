"""The :class:`~cotune.data.spec.DataSpec` of a model: what the data pipeline needs from it.

Built from a live model (:func:`data_spec_from_model`) or from a config alone
(:func:`data_spec_from_config`: tokenizer and processors are read, the backbones are built on the
meta device for token counts, no weights are loaded).
"""

from __future__ import annotations

from cotune.backbones.llm import add_placeholders, load_tokenizer
from cotune.config import ConfigError, CotuneConfig, DataConfig, ModelConfig
from cotune.data.media import MediaPreprocessor
from cotune.data.spec import DataSpec, EncoderInput
from cotune.data.templates import resolve_template
from cotune.model.build import build_model


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


def data_spec_from_config(config: CotuneConfig, sources: ModelConfig | None = None) -> DataSpec:
    """The spec without loading weights: tokenizer and processors are read, modules built on meta.
    ``sources``: as in :func:`~cotune.model.build.build_model`."""
    model = build_model(config, meta=True, sources=sources)
    tokenizer = load_tokenizer((sources or config.model).llm)
    model.tokenizer = tokenizer
    model.placeholder_ids = add_placeholders(tokenizer, {n: c.placeholder for n, c in config.model.encoders.items()})
    return data_spec_from_model(model, config.data)
