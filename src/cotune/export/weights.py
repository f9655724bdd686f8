"""Filling a model built on the meta device: what its state dict leaves out comes from the run."""

from __future__ import annotations

import torch

from cotune.export.errors import ExportError


def fill_buffers(model: torch.nn.Module, sources: dict[str, torch.nn.Module], dtype: torch.dtype) -> None:
    """Buffers a state dict leaves out (rotary frequencies, position ids) copied from the modules
    they were built in: the meta-device model has no values for them."""
    found = {prefix + name: buffer for prefix, module in sources.items() for name, buffer in module.named_buffers()}
    device = next((p.device for p in model.parameters() if not p.is_meta), torch.device("cpu"))
    for name, buffer in list(model.named_buffers()):
        if not buffer.is_meta:
            continue
        if name not in found:
            raise ExportError(f"the exported model's buffer {name} has no counterpart in the run's model")
        parent, _, child = name.rpartition(".")
        value = found[name].detach().to(device, copy=True)
        model.get_submodule(parent)._buffers[child] = value if not value.is_floating_point() or child == "inv_freq" else value.to(dtype)
