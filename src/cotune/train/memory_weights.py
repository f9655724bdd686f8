"""How much the weights of a training run take: frozen parameters by dtype and bits, per component.

bitsandbytes stores a 4-bit linear weight as packed pairs (0.5 byte per weight) plus one absmax per
block of 64 weights: float32, or with double quantization one byte plus a float32 per 256 blocks
(and a 256-entry code table per layer); an 8-bit weight as int8 plus a float32 scale per output row.
Only the frozen linear layers (``nn.Linear``, GPT-2's ``Conv1D``) of a backbone are quantized:
embeddings, norms, the LM head, biases and everything trainable keep their dtype (trainable
parameters are float32).
"""

from __future__ import annotations

import math

from torch import nn

from cotune.config.model import CotuneConfig, QuantizationConfig
from cotune.train.memory_activations import DTYPE_BYTES, frozen_linears, linear_shape


def component_storage(config: CotuneConfig, name: str) -> tuple[str, QuantizationConfig | None]:
    """(dtype, quantization) of component ``name``'s frozen weights as the config sets them."""
    if name == "llm":
        return config.model.llm.dtype, config.model.llm.quantization
    if name.startswith("encoder."):
        enc = config.model.encoders[name.split(".", 1)[1]]
        return enc.dtype, enc.quantization
    return "float32", None


def weight_formats(config: CotuneConfig, components) -> dict[str, dict]:
    """How each component's weights are stored, from the config: ``{"bits", "format"}`` (the
    quantized linear layers' bits and type, else the dtype's); trained connectors and modality
    rows are float32."""
    formats = {}
    for name in components:
        dtype, quantization = component_storage(config, name)
        if quantization is None:
            formats[name] = {"bits": 8 * DTYPE_BYTES[dtype], "format": dtype}
        else:
            kind = "int8" if quantization.bits == 8 else quantization.type
            formats[name] = {"bits": quantization.bits, "format": kind, "rest": dtype}
    return formats


def quantized_bytes(numel: int, out_features: int, quantization: QuantizationConfig) -> int:
    """Bytes of one bitsandbytes linear weight of ``numel`` elements (module docstring)."""
    if quantization.bits == 8:
        return numel + 4 * out_features
    blocks = math.ceil(numel / 64)
    if not quantization.double_quant:
        return numel // 2 + 4 * blocks + 64
    return numel // 2 + blocks + 4 * math.ceil(blocks / 256) + 4 * 256 + 68


def component_weights(module: nn.Module, dtype: str, quantization, skip: set[int]) -> tuple[int, str]:
    """(bytes of the frozen parameters, their description) of one component."""
    frozen, quantized = 0, set()
    if quantization is not None:
        for sub in frozen_linears(module):
            if id(sub.weight) not in skip:
                frozen += quantized_bytes(sub.weight.numel(), linear_shape(sub)[1], quantization)
                quantized.add(id(sub.weight))
    for p in module.parameters():
        if not p.requires_grad and id(p) not in quantized:
            frozen += p.numel() * DTYPE_BYTES[dtype]
    if quantization is None:
        return frozen, dtype
    label = "int8" if quantization.bits == 8 else f"{quantization.type}{'+dq' if quantization.double_quant else ''}"
    return frozen, f"{quantization.bits}-bit {label} linears, {dtype} rest"
