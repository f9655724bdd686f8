"""Media-gated LoRA: the LLM's LoRA updates apply to rows that carry media, not to text-only rows.

A text-only prompt then runs the untuned LLM exactly (its answers cannot be damaged by tuning),
while prompts with an image or a sound get the tuned LLM. LoRA's update ``B(A(x))`` is linear in
``A(x)``, so scaling ``A``'s output [B, T, r] by a per-row gate [B] (1 with media, 0 without)
switches the whole update per row; the gate rides on forward hooks of the ``lora_A`` layers
(PEFT's public module API, nothing of PEFT is replaced). The gate keeps the autograd graph, so a
text-only batch still backpropagates (to zero gradients).

The model owns one :class:`LoraGate` and sets it around every LLM call (its forward and
generation); a gated LoRA layer running without a gate is an error, never a silent ungated pass.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


class GateError(RuntimeError):
    """A media-gated LoRA layer ran without a gate (e.g. the LLM was called directly)."""


class LoraGate:
    """The per-row gate [B] of the current LLM call (None between calls)."""

    def __init__(self) -> None:
        self.gate: torch.Tensor | None = None

    @contextlib.contextmanager
    def applying(self, gate: torch.Tensor) -> Iterator[None]:
        """Gated LoRA layers scale their update of row b by ``gate[b]`` [B] inside this block."""
        if gate.dim() != 1:
            raise ValueError(f"the LoRA gate must be [B], got {tuple(gate.shape)}")
        self.gate = gate
        try:
            yield
        finally:
            self.gate = None

    def checkpoint_contexts(self):
        """``context_fn`` for ``torch.utils.checkpoint``: recomputation in the backward pass runs
        after the forward's ``applying`` block closed, so it restores the gate the block saw."""
        snapshot = self.gate

        @contextlib.contextmanager
        def restored():
            saved, self.gate = self.gate, snapshot
            try:
                yield
            finally:
                self.gate = saved

        return contextlib.nullcontext(), restored()

    def attach(self, module: nn.Module) -> None:
        """Hooks the ``lora_A`` layers of every PEFT LoRA layer inside ``module``."""
        from peft.tuners.lora import LoraLayer

        for layer in module.modules():
            if isinstance(layer, LoraLayer):
                for lora_a in layer.lora_A.values():
                    lora_a.register_forward_hook(self._scale)

    def _scale(self, module: nn.Module, args, output: torch.Tensor) -> torch.Tensor:
        gate = self.gate
        if gate is None:
            raise GateError("a media-gated LoRA layer ran outside the model's forward or generation (no gate set)")
        if gate.shape[0] != output.shape[0]:
            raise GateError(f"the LoRA gate has {gate.shape[0]} rows, the LLM call {output.shape[0]}")
        return output * gate.to(dtype=output.dtype, device=output.device).view(-1, *[1] * (output.dim() - 1))

