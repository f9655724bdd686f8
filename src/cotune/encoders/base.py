"""The encoder contract every registered encoder fulfils, and feature selection.

An :class:`Encoder` wraps a backbone (a transformers model or plain PyTorch) and exposes:
its hidden states per block as tokens, the blocks where adapters go, its widths, its number of
prefix ([cls]/register) tokens and its input processor. Feature selection then turns chosen
hidden states into the tokens a connector consumes.
"""

from __future__ import annotations

import torch
from torch import nn

from cotune.adapters.inject import AdapterHost
from cotune.config.model import EncoderConfig


class Encoder(nn.Module):
    """A feature encoder with block discovery and token outputs.

    Attributes:
        backbone: the wrapped model (frozen unless the encoder is trained ``full``).
        modality: ``image`` or ``audio``; decides which processor prepares raw inputs.
        input_name: the keyword the backbone takes (``pixel_values``, ``input_features``, ``input_values``).
        hidden_size: D_enc of the hidden states (the last block's width for CNNs).
        num_prefix_tokens: tokens before the patches/frames ([cls], registers); 0 if none.
        processor: the transformers image processor / feature extractor, or None (dry runs).
    """

    modality: str = "image"
    input_name: str = "pixel_values"
    conv: bool = False

    def __init__(self, backbone: nn.Module, *, hidden_size: int, num_blocks: int, num_prefix_tokens: int, processor=None) -> None:
        super().__init__()
        self.backbone = backbone
        self.hidden_size = hidden_size
        self.num_blocks = num_blocks
        self.num_prefix_tokens = num_prefix_tokens
        self.processor = processor

    def block_sites(self) -> list[tuple[nn.Module, str]]:
        """(parent, child name) of every adapted block, in depth order."""
        raise NotImplementedError

    def block_widths(self) -> list[int]:
        """Input width C of each adapted block (all ``hidden_size`` for transformers)."""
        return [self.hidden_size] * self.num_blocks

    def hidden_states(self, inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """inputs (a batch of processed items) -> L + 1 tensors [B, N, D]: embeddings, then each block."""
        raise NotImplementedError

    def layer_width(self, layer: int) -> int:
        """D of hidden state ``layer`` (non-negative index)."""
        return self.hidden_size

    def num_tokens(self, input_length: int | None = None) -> int | None:
        """Tokens per item in every hidden state: fixed for fixed-size inputs, else computed from
        ``input_length`` (samples or frames of one item), None if that is not given."""
        return None

    def dummy_input(self) -> torch.Tensor:
        """One all-zero item of the encoder's input shape (keeps the encoder in a step's graph
        when a process's batch has none of its media; see CotuneModel.forward ``touch_all``)."""
        raise NotImplementedError

    def adapter_host(self, router: str) -> AdapterHost:
        return AdapterHost(self.backbone, self.block_sites(), self.block_widths(), conv=self.conv, router=router)


def resolve_layers(layers: tuple[int, ...], num_blocks: int, key: str = "layers") -> list[int]:
    """Normalises layer indices to [0, num_blocks]; 0 = embeddings, -1 = the last block."""
    resolved = []
    for layer in layers:
        index = layer if layer >= 0 else num_blocks + 1 + layer
        if not 0 <= index <= num_blocks:
            raise ValueError(f"{key}: layer {layer} is out of range for an encoder with {num_blocks} blocks")
        resolved.append(index)
    if len(set(resolved)) != len(resolved):
        raise ValueError(f"{key}: {list(layers)} select the same hidden state twice")
    return resolved


def reduce_tokens(hidden: torch.Tensor, reduce: str, num_prefix_tokens: int, window: int) -> torch.Tensor:
    """One hidden state [B, N, D] -> selected tokens [B, n, D] (see EncoderConfig.reduce)."""
    if reduce == "cls":
        if num_prefix_tokens < 1:
            raise ValueError("reduce 'cls' needs an encoder with a [cls] token; use 'mean' for this encoder")
        return hidden[:, :1]
    if reduce == "all":
        return hidden
    body = hidden[:, num_prefix_tokens:]
    if reduce == "patches":
        return body
    if reduce == "mean":
        return body.mean(1, keepdim=True)
    # windows: average pool `window` consecutive tokens; a trailing partial window is averaged too.
    n = body.shape[1]
    full = (n // window) * window
    pooled = body[:, :full].unflatten(1, (n // window, window)).mean(2)
    if full < n:
        pooled = torch.cat([pooled, body[:, full:].mean(1, keepdim=True)], 1)
    return pooled


def reduced_count(n: int, reduce: str, num_prefix_tokens: int, window: int) -> int:
    """Token count :func:`reduce_tokens` yields for a hidden state of n tokens."""
    if reduce == "cls" or reduce == "mean":
        return 1
    if reduce == "all":
        return n
    body = n - num_prefix_tokens
    return body if reduce == "patches" else -(-body // window)


class FeatureSelector(nn.Module):
    """Selects and reduces hidden states of an :class:`Encoder` (no parameters).

    Output: tokens [B, n_layers * n, D_enc] (``layer_merge: tokens``) or [B, n, n_layers * D_enc]
    (``features``), layers in config order.
    """

    def __init__(self, encoder: Encoder, config: EncoderConfig) -> None:
        super().__init__()
        self.layers = resolve_layers(config.layers, encoder.num_blocks, "layers")
        widths = {encoder.layer_width(i) for i in self.layers}
        if len(widths) != 1:
            raise ValueError(f"layers: selected hidden states have different widths {sorted(widths)}")
        self.merge_features = config.layer_merge == "features"
        self.width = widths.pop() * (len(self.layers) if self.merge_features else 1)
        if config.reduce == "cls" and encoder.num_prefix_tokens < 1:
            raise ValueError(f"reduce: 'cls' needs a [cls] token, but {config.type} has none; use 'mean'")
        self.reduce, self.window, self.prefix = config.reduce, config.window, encoder.num_prefix_tokens

    def num_tokens(self, encoder_tokens: int) -> int:
        per_layer = reduced_count(encoder_tokens, self.reduce, self.prefix, self.window)
        return per_layer if self.merge_features else len(self.layers) * per_layer

    def forward(self, hidden_states: tuple[torch.Tensor, ...]) -> torch.Tensor:
        parts = [reduce_tokens(hidden_states[i], self.reduce, self.prefix, self.window) for i in self.layers]
        return parts[0] if len(parts) == 1 else torch.cat(parts, -1 if self.merge_features else 1)
