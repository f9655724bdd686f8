"""Connectors: map selected encoder features [B, N, D_enc] to LLM input tokens [B, N', D_llm].

Each registered class takes ``(config, in_dim, out_dim)`` and provides ``num_tokens(n)``, the
number of output tokens for n input tokens (what the data pipeline expands a placeholder into).
All connector parameters are trainable unless the connector's ``trainable`` is ``frozen``.
"""

from __future__ import annotations

import torch
from torch import nn

from cotune.config.model import ConnectorConfig
from cotune.registry import Registry

CONNECTORS: Registry = Registry("connector")


class Connector(nn.Module):
    """Base: token-wise maps keep the token count."""

    def num_tokens(self, n: int) -> int:
        return n


@CONNECTORS.register("lavin-neck")
class LavinNeck(Connector):
    """LaVIN's ``adapter_proj``: Linear(D_enc, hidden=128) -> SiLU -> Linear(hidden, D_llm).

    Xavier-uniform weights and zero biases, as the reference initialises them.
    """

    def __init__(self, config: ConnectorConfig, in_dim: int, out_dim: int) -> None:
        super().__init__()
        hidden = config.hidden or 128
        self.proj_in = nn.Linear(in_dim, hidden)
        self.act = nn.SiLU()
        self.proj_out = nn.Linear(hidden, out_dim)
        for layer in (self.proj_in, self.proj_out):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features [B, N, D_enc] -> [B, N, D_llm]."""
        return self.proj_out(self.act(self.proj_in(features)))


@CONNECTORS.register("linear")
class LinearProjector(Connector):
    """LLaVA-1's projector: one Linear(D_enc, D_llm)."""

    def __init__(self, config: ConnectorConfig, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_dim, out_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features [B, N, D_enc] -> [B, N, D_llm]."""
        return self.proj(features)


@CONNECTORS.register("mlp2x-gelu")
class MLP2xGelu(Connector):
    """LLaVA-1.5's projector: Linear(D_enc, H) -> GELU -> Linear(H, D_llm), H = hidden or D_llm.

    Parameter names follow transformers' ``LlavaMultiModalProjector`` (linear_1, linear_2).
    """

    def __init__(self, config: ConnectorConfig, in_dim: int, out_dim: int) -> None:
        super().__init__()
        hidden = config.hidden or out_dim
        self.linear_1 = nn.Linear(in_dim, hidden)
        self.act = nn.GELU()
        self.linear_2 = nn.Linear(hidden, out_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features [B, N, D_enc] -> [B, N, D_llm]."""
        return self.linear_2(self.act(self.linear_1(features)))


@CONNECTORS.register("audio-pool")
class AudioPool(Connector):
    """Average pool over ``stride`` consecutive frames, then Linear -> GELU -> Linear.

    A 30 s Whisper input (1500 frames) with stride 4 becomes 375 LLM tokens; a trailing partial
    window is dropped (floor), so n frames give n // stride tokens.
    """

    def __init__(self, config: ConnectorConfig, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.stride = config.stride
        hidden = config.hidden or out_dim
        self.linear_1 = nn.Linear(in_dim, hidden)
        self.act = nn.GELU()
        self.linear_2 = nn.Linear(hidden, out_dim)

    def num_tokens(self, n: int) -> int:
        return n // self.stride

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features [B, N, D_enc] -> [B, N // stride, D_llm]."""
        n = features.shape[1]
        if n < self.stride:
            raise ValueError(f"audio-pool: {n} frames are fewer than the pooling stride {self.stride}")
        usable = (n // self.stride) * self.stride
        pooled = features[:, :usable].unflatten(1, (n // self.stride, self.stride)).mean(2)
        return self.linear_2(self.act(self.linear_1(pooled)))


__all__ = ["CONNECTORS", "AudioPool", "Connector", "LavinNeck", "LinearProjector", "MLP2xGelu"]
