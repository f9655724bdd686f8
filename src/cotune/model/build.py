"""Building a CotuneModel from a config: backbones, adapters, connectors, trainability."""

from __future__ import annotations

import contextlib
import logging

import torch
from torch import nn

from cotune.adapters import ADAPTERS, AdapterHost, LoraGate, RoutingState, find_blocks
from cotune.backbones.llm import add_placeholders, load_llm
from cotune.backbones.loading import meta_device
from cotune.config.io import ConfigError
from cotune.config.model import CotuneConfig, EncoderConfig, ModelConfig
from cotune.connectors import CONNECTORS
from cotune.data.readers import check_reader_names
from cotune.encoders import ENCODERS, FeatureSelector
from cotune.model.fused import CotuneModel

log = logging.getLogger(__name__)


def _inject(component: str, host: AdapterHost, adapter_cfg, routing_state=None) -> list[nn.Module]:
    try:
        return ADAPTERS.get(adapter_cfg.type)(host, adapter_cfg, routing_state)
    except ValueError as err:
        raise ConfigError(f"{component}.adapter: {err}") from None


def _build_encoder(name: str, cfg: EncoderConfig, d_llm: int, meta: bool):
    key = f"model.encoders.{name}"
    encoder = ENCODERS.get(cfg.type, key=f"{key}.type")(cfg, meta)
    try:
        selector = FeatureSelector(encoder, cfg)
    except ValueError as err:
        raise ConfigError(f"{key}.{err}") from None
    router = "per_token" if cfg.adapter.router == "auto" else cfg.adapter.router
    if cfg.adapter.type == "mm_adapter" and router == "cls" and encoder.num_prefix_tokens < 1:
        raise ConfigError(f"{key}.adapter.router: 'cls' needs a [cls] token, but {cfg.type} has none; use mean")
    host = encoder.adapter_host(router)
    # Blocks after the deepest selected hidden state never influence the features: no adapters there.
    deepest = max(selector.layers)
    host.blocks, host.widths = host.blocks[:deepest], host.widths[:deepest]
    adapters = _inject(key, host, cfg.adapter)
    with meta_device() if meta else contextlib.nullcontext():
        connector = CONNECTORS.get(cfg.connector.type, key=f"{key}.connector.type")(cfg.connector, selector.width, d_llm)
    return encoder, selector, connector, adapters


def check_component_names(config: ModelConfig | CotuneConfig) -> None:
    """ConfigError naming the key and the valid names when an encoder, connector or adapter type
    (and, for a whole CotuneConfig, a dataset reader kind) is not registered.

    Configs are plain data and do not import the components; :func:`build_model` runs this first,
    and the CLI right after reading a config, so a misspelt name fails before any weight is read.
    """
    if isinstance(config, CotuneConfig):
        check_reader_names(config.data)
        config = config.model
    checks = [(ADAPTERS, "model.llm.adapter.type", config.llm.adapter.type)]
    for name, encoder in config.encoders.items():
        key = f"model.encoders.{name}"
        checks += [(ENCODERS, f"{key}.type", encoder.type), (CONNECTORS, f"{key}.connector.type", encoder.connector.type),
                   (ADAPTERS, f"{key}.adapter.type", encoder.adapter.type)]
    for registry, key, name in checks:
        if name not in registry:
            raise ConfigError(registry.unknown_message(name, key))


def build_model(config: ModelConfig | CotuneConfig, *, meta: bool = False, device: str | torch.device | None = None,
                sources: ModelConfig | None = None) -> CotuneModel:
    """Loads the backbones named in ``config`` and assembles the model, on ``device`` if given.

    ``meta=True`` reads only config.json files and builds every module on the meta device (for
    parameter counts of models that do not fit in memory); such a model cannot run forward.
    ``sources``: ``config`` with each ``name_or_path`` replaced by the copy to read
    (:func:`cotune.zoo.resolve_sources`: a cached snapshot or the zoo's copy when the hub cannot be
    reached); None reads the names as written. The model keeps the names as written.
    """
    if isinstance(config, CotuneConfig):
        config = config.model
    check_component_names(config)
    as_written = config  # the model keeps the config's own names (hub ids), not where they resolved
    if sources is not None:
        config = sources
    llm, tokenizer = load_llm(config.llm, meta)
    text_config = llm.config.get_text_config()
    d_llm, n_layers = text_config.hidden_size, text_config.num_hidden_layers

    adapter_modules: dict[str, list[nn.Module]] = {}
    routing_state = lora_gate = None
    llm_adapter = config.llm.adapter
    if llm_adapter.type != "none":
        try:
            _path, blocks = find_blocks(llm, n_layers)
        except ValueError as err:
            raise ConfigError(f"model.llm.adapter: {err}") from None
        if llm_adapter.type == "mm_adapter":
            routing_state = RoutingState(n_layers)
        host = AdapterHost(llm, [(blocks, str(i)) for i in range(len(blocks))], [d_llm] * len(blocks), router="modality")
        adapter_modules["llm"] = _inject("model.llm", host, llm_adapter, routing_state)
        if llm_adapter.gate == "media":
            lora_gate = LoraGate()
            lora_gate.attach(llm)

    encoders, selectors, connectors = {}, {}, {}
    for name, enc_cfg in config.encoders.items():
        encoders[name], selectors[name], connectors[name], adapters = _build_encoder(name, enc_cfg, d_llm, meta)
        adapter_modules[f"encoder.{name}"] = adapters

    modality_embedding = None
    if routing_state is not None:
        with meta_device() if meta else contextlib.nullcontext():
            modality_embedding = nn.Embedding(len(config.resolved_modality_keys()), d_llm)
        if not meta:
            nn.init.normal_(modality_embedding.weight)  # LaVIN: N(0, 1)
    if not meta:
        device = llm.get_input_embeddings().weight.device
        for module in (*connectors.values(), modality_embedding):
            if module is not None:
                module.to(device)

    placeholder_ids = None
    if tokenizer is not None:
        placeholder_ids = add_placeholders(tokenizer, {n: c.placeholder for n, c in config.encoders.items()})
    model = CotuneModel(
        as_written, llm, tokenizer, encoders, selectors, connectors, modality_embedding, routing_state,
        adapter_modules, placeholder_ids, lora_gate,
    )
    apply_trainability(model)
    model.train(False)
    if device is not None and not meta:
        model.to(device)
    return model


def apply_trainability(model: CotuneModel) -> None:
    """Sets ``requires_grad`` per component from the config (adapters asked for their parameters)."""
    config = model.config
    sides = {"llm": (model.llm, config.llm.trainable)}
    for name, enc_cfg in config.encoders.items():
        sides[f"encoder.{name}"] = (model.encoders[name], enc_cfg.trainable)
        model.connectors[name].requires_grad_(enc_cfg.connector.trainable == "full")
    for component, (module, trainable) in sides.items():
        module.requires_grad_(trainable == "full")
        for adapter in model.adapter_modules.get(component, []):
            adapter.requires_grad_(trainable != "frozen")
    if model.modality_embedding is not None:
        model.modality_embedding.requires_grad_(config.llm.trainable != "frozen")
    # Trainable parameters are kept in float32 even when the frozen backbone is half precision.
    for p in model.parameters():
        if p.requires_grad and p.dtype != torch.float32 and p.device.type != "meta":
            p.data = p.data.float()
