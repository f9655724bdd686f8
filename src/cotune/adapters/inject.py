"""Adapter injectors, one per registered adapter name.

An injector inserts its adapter into a backbone described by an :class:`AdapterHost` and returns
the inserted modules; every parameter of those modules is an adapter parameter (the single source
of truth for what is trainable and what is saved, instead of name-substring rules).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from cotune.adapters.bottleneck import MMAdapter, RepAdapter
from cotune.adapters.routing import RoutingState
from cotune.adapters.sites import ATTENTION_NAMES, FFN_NAMES, find_child, wrap_child
from cotune.config.model import AdapterConfig
from cotune.registry import Registry

ADAPTERS: Registry = Registry("adapter")


@dataclass
class AdapterHost:
    """Where adapters go: a backbone, its blocks, the input width of each block's sites.

    ``blocks``: (parent, child name) of each block, so a block itself can be wrapped.
    ``conv``: blocks are convolutional; the adapter wraps the block itself and acts on channels.
    ``router``: the MM-Adapter router kind for this side (``modality`` for the LLM).
    """

    module: nn.Module
    blocks: list[tuple[nn.Module, str]]
    widths: list[int]
    conv: bool = False
    router: str = "per_token"


def _device_of(module: nn.Module) -> torch.device:
    for p in module.parameters():
        return p.device
    return torch.device("cpu")


def _wrap_sites(host: AdapterHost, cfg: AdapterConfig, make) -> list[nn.Module]:
    """Creates one adapter per site with ``make(width, layer_index)`` and wraps the site."""
    device = _device_of(host.module)
    inserted: list[nn.Module] = []
    for index, (parent, child) in enumerate(host.blocks):
        width = host.widths[index]
        block = getattr(parent, child)
        if host.conv:
            adapter = make(width, index).to(device)
            wrap_child(parent, child, adapter, channel_dim=1)
            inserted.append(adapter)
            continue
        targets = [find_child(block, ATTENTION_NAMES, cfg.attention_module, "attention")]
        if cfg.sites == "attn+ffn":
            targets.append(find_child(block, FFN_NAMES, cfg.ffn_module, "ffn"))
        for name in targets:
            adapter = make(width, index).to(device)
            wrap_child(block, name, adapter)
            inserted.append(adapter)
    return inserted


@ADAPTERS.register("mm_adapter")
def inject_mm_adapter(host: AdapterHost, cfg: AdapterConfig, routing_state: RoutingState | None = None) -> list[nn.Module]:
    if host.conv and host.router == "cls":
        raise ValueError("adapter.router 'cls' needs token sequences; convolutional encoders have none")

    def make(width: int, index: int) -> nn.Module:
        return MMAdapter(
            width, cfg.dim, cfg.groups, cfg.experts, cfg.temperature, cfg.dropout, cfg.scale,
            router=host.router, routing_state=routing_state if host.router == "modality" else None,
            layer_index=index,
        )

    return _wrap_sites(host, cfg, make)


@ADAPTERS.register("rep_adapter")
def inject_rep_adapter(host: AdapterHost, cfg: AdapterConfig, routing_state: RoutingState | None = None) -> list[nn.Module]:
    return _wrap_sites(host, cfg, lambda width, _index: RepAdapter(width, cfg.dim, cfg.groups, cfg.dropout, cfg.scale))


@ADAPTERS.register("lora")
def inject_lora(host: AdapterHost, cfg: AdapterConfig, routing_state: RoutingState | None = None) -> list[nn.Module]:
    """Injects LoRA through PEFT in place (no PeftModel wrapper) and returns the LoRA weight holders.

    LoRA goes into the host's blocks only, so ``all-linear`` never reaches an LM head, a
    projection outside the blocks, or blocks whose output no selected feature depends on.
    """
    from peft import LoraConfig, inject_adapter_in_model
    from peft.tuners.lora import LoraLayer

    targets = cfg.target_modules
    lora_config = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules="all-linear" if targets == ("all-linear",) else list(targets),
    )
    holders: list[nn.Module] = []
    for parent, child in host.blocks:
        block = getattr(parent, child)
        try:
            inject_adapter_in_model(lora_config, block)
        except ValueError as err:
            raise ValueError(f"adapter.target_modules {list(targets)} in {type(block).__name__}: {err}") from None
    for module in host.module.modules():
        if isinstance(module, LoraLayer):
            for attr in ("lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B"):
                holder = getattr(module, attr, None)
                if holder is not None and len(list(holder.parameters())):
                    holders.append(holder)
    if not holders:
        raise ValueError(f"adapter.target_modules {list(targets)} matched no module in {type(host.module).__name__}")
    return holders


@ADAPTERS.register("none")
def inject_nothing(host: AdapterHost, cfg: AdapterConfig, routing_state: RoutingState | None = None) -> list[nn.Module]:
    return []
