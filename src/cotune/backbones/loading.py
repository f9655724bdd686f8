"""``from_pretrained`` with the checks a long run needs.

transformers happily returns a model whose weights were *not* in the checkpoint (it initialises
them randomly and prints a report). For frozen backbones that is a silent disaster, so every load
here asks for the loading info and fails when any weight is missing.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import torch

from cotune.config.model import QuantizationConfig

log = logging.getLogger(__name__)

TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class LoadError(RuntimeError):
    """A backbone could not be loaded, or loaded with missing weights."""


def _hub_kwargs(revision: str | None, trust_remote_code: bool) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if revision is not None:
        kwargs["revision"] = revision
    return kwargs


def load_config_only(config_class, name_or_path: str, *, revision: str | None = None, trust_remote_code: bool = False, **kwargs):
    """The backbone's config (reads only ``config.json``; works from a config-only hub cache)."""
    try:
        return config_class.from_pretrained(name_or_path, **_hub_kwargs(revision, trust_remote_code), **kwargs)
    except (OSError, ValueError) as err:
        raise LoadError(f"cannot read the config of {name_or_path!r}: {err}") from None


def bitsandbytes_config(quantization: QuantizationConfig):
    """transformers' ``BitsAndBytesConfig`` for ``quantization`` (bitsandbytes must be installed)."""
    try:
        import bitsandbytes  # noqa: F401  (transformers would fail later, with a longer message)
    except ImportError:
        raise LoadError("quantization needs bitsandbytes, which is not installed: pip install 'cotune[quant]'") from None
    from transformers import BitsAndBytesConfig

    if quantization.bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quantization.type,
        bnb_4bit_use_double_quant=quantization.double_quant,
        bnb_4bit_compute_dtype=TORCH_DTYPES[quantization.compute_dtype],
    )


def quantized_layers(model: torch.nn.Module) -> dict[int, int]:
    """Number of bitsandbytes linear layers in ``model`` per bit width ({4: n, 8: m}; empty if none)."""
    counts: dict[int, int] = {}
    for module in model.modules():
        bits = {"Linear4bit": 4, "Linear8bitLt": 8}.get(type(module).__name__)
        if bits is not None and type(module).__module__.startswith("bitsandbytes"):
            counts[bits] = counts.get(bits, 0) + 1
    return counts


def keep_cpu_layout(model: torch.nn.Module) -> None:
    """Stops bitsandbytes (0.50) from repacking 4-bit weights for its AVX512-BF16 CPU kernel.

    On such CPUs a 4-bit layer's first forward in eval mode without gradients rewrites its weight
    in place into an inference layout: the block scales are rounded to bfloat16 (the frozen weights
    change) and every later forward, in training too, runs a kernel without a backward, so nothing
    upstream of the layer (adapters, necks, modality rows) gets its gradient through it. A run
    evaluates or estimates balance in eval mode between training steps, so the repack is refused
    for every layer: forward then always takes the dequantize-and-matmul path with a backward.
    """
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def load_pretrained(
    model_class,
    name_or_path: str,
    *,
    dtype: str = "float32",
    revision: str | None = None,
    trust_remote_code: bool = False,
    allow_missing: tuple[str, ...] = (),
    quantization: QuantizationConfig | None = None,
    **kwargs,
):
    """``model_class.from_pretrained`` that raises :class:`LoadError` if any weight was missing.

    ``allow_missing``: exact key names that may legitimately be absent (e.g. tied weights).
    ``quantization``: load the linear layers in 4 or 8 bits; a load that quantizes nothing (for
    example because the model class has no linear layers bitsandbytes replaces) is an error, never
    a silent full-precision fallback.
    """
    if quantization is not None:
        kwargs["quantization_config"] = bitsandbytes_config(quantization)
    try:
        model, info = model_class.from_pretrained(
            name_or_path,
            dtype=TORCH_DTYPES[dtype],
            output_loading_info=True,
            **_hub_kwargs(revision, trust_remote_code),
            **kwargs,
        )
    except (OSError, ValueError, ImportError) as err:
        raise LoadError(f"cannot load {model_class.__name__} from {name_or_path!r}: {err}") from None
    if quantization is not None:
        if quantization.bits not in quantized_layers(model):
            raise LoadError(
                f"{name_or_path!r}: asked for {quantization.bits}-bit weights, but no layer of {model_class.__name__} was quantized"
            )
        keep_cpu_layout(model)
    missing = [k for k in info.get("missing_keys", []) if k not in allow_missing]
    if missing:
        shown = ", ".join(sorted(missing)[:8])
        raise LoadError(
            f"{name_or_path!r} does not hold the weights {model_class.__name__} needs "
            f"({len(missing)} missing, e.g. {shown}); refusing to use randomly initialised backbone weights"
        )
    return model


@contextlib.contextmanager
def meta_device():
    """Context in which modules are created on the meta device (shapes only, no memory)."""
    with torch.device("meta"):
        yield
