"""Per-call routing state shared by the LLM's mixture-of-modality adapters.

The model owns one :class:`RoutingState`; every LLM-side MM-Adapter holds a reference to it and
its own layer index. A forward pass is either *computing* routing weights from the first token of
the adapter's input (the modality row) or *applying* weights computed earlier, so cached decoding
and the cheap "separate" routing reuse weights without recomputing them per token.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


class RoutingError(RuntimeError):
    """An MM-Adapter ran without routing weights (e.g. the LLM was called directly)."""


class RoutingState:
    """Routing weights per LLM layer for the current forward pass.

    Modes: ``idle`` (no weights: an MM-Adapter running now is an error), ``compute`` (each adapter
    derives weights [B, E] from its input's first token and records them), ``apply`` (each adapter
    reads precomputed weights [B, E] for its layer).
    """

    def __init__(self, num_layers: int) -> None:
        self.num_layers = num_layers
        self.mode = "idle"
        self.use_dropout = True
        self.recorded: dict[int, torch.Tensor] = {}
        self.weights: torch.Tensor | None = None  # [L, B, E]

    @contextlib.contextmanager
    def computing(self, use_dropout: bool) -> Iterator[dict[int, torch.Tensor]]:
        """Adapters compute weights from x[:, 0]; yields the dict that collects them per layer."""
        self.mode, self.use_dropout, self.recorded = "compute", use_dropout, {}
        try:
            yield self.recorded
        finally:
            self.mode, self.use_dropout = "idle", True

    @contextlib.contextmanager
    def applying(self, weights: torch.Tensor) -> Iterator[None]:
        """Adapters use ``weights`` [L, B, E] (layer-major) instead of computing their own."""
        if weights.dim() != 3 or weights.shape[0] != self.num_layers:
            raise ValueError(f"routing weights must be [L={self.num_layers}, B, E], got {tuple(weights.shape)}")
        self.mode, self.weights = "apply", weights
        try:
            yield
        finally:
            self.mode, self.weights = "idle", None

    def checkpoint_contexts(self):
        """``context_fn`` for ``torch.utils.checkpoint``: activation recomputation runs in the backward
        pass, after the forward's routing context has closed, so the recompute context restores the
        routing mode and weights the block saw in its forward."""
        snapshot = (self.mode, self.use_dropout, self.recorded, self.weights)

        @contextlib.contextmanager
        def restored():
            saved = (self.mode, self.use_dropout, self.recorded, self.weights)
            self.mode, self.use_dropout, self.recorded, self.weights = snapshot
            try:
                yield
            finally:
                self.mode, self.use_dropout, self.recorded, self.weights = saved

        return contextlib.nullcontext(), restored()

    def stacked(self, recorded: dict[int, torch.Tensor]) -> torch.Tensor:
        """Recorded per-layer weights as one tensor [L, R, E]; every layer must have recorded."""
        missing = [i for i in range(self.num_layers) if i not in recorded]
        if missing:
            raise RoutingError(f"no routing weights were recorded for LLM layers {missing}")
        return torch.stack([recorded[i] for i in range(self.num_layers)])
