"""PEFT adapter folders: each LoRA-adapted component of a run as ``adapter_config.json`` +
``adapter_model.safetensors``, loadable by ``peft.PeftModel.from_pretrained(base, folder)``.

cotune injects LoRA through PEFT into a component's blocks only (:func:`cotune.adapters.inject.inject_lora`),
so the folder names exactly the layers that carry LoRA: ``target_modules`` is a regular expression
that PEFT full-matches against module names (a list would be matched by suffix and could reach
layers cotune never adapted, e.g. an LM head). Tensor names follow PEFT's saved form,
``base_model.model.<module path>.lora_A.weight``, module paths relative to the component's backbone:

* ``llm``: the causal LM as ``AutoModelForCausalLM`` loads it (``task_type`` CAUSAL_LM). Loaded onto
  that base, it gives cotune's logits on text input (placeholder tokens are outside the base's text).
* ``encoder.<name>``: the encoder class cotune loads (``CLIPVisionModel``, ``SiglipVisionModel``,
  Whisper's encoder, ...).

Nothing here is trainable; the folders are written from the model's modules, or from ``state``
(the whole trainable tensors by model key) when the model's own parameters are shards.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from cotune.config import AdapterConfig, CotuneConfig

ADAPTER_NAME = "default"  # the name cotune's injection gives every LoRA layer
WEIGHT_FACTORS = ("lora_A", "lora_B")
EMBEDDING_FACTORS = ("lora_embedding_A", "lora_embedding_B")


def lora_components(model, config: CotuneConfig) -> dict[str, tuple[nn.Module, str, AdapterConfig, str]]:
    """Components whose adapter is LoRA: name -> (backbone module, its key prefix in the model's
    state dict, adapter config, the backbone's ``name_or_path``)."""
    found = {}
    llm = config.model.llm
    if llm.adapter.type == "lora":
        found["llm"] = (model.llm, "llm.", llm.adapter, llm.name_or_path)
    for name, encoder in config.model.encoders.items():
        if encoder.adapter.type == "lora":
            found[f"encoder.{name}"] = (model.encoders[name].backbone, f"encoders.{name}.backbone.", encoder.adapter, encoder.name_or_path)
    return found


def lora_tensors(module: nn.Module, prefix: str = "", state: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """PEFT-named LoRA tensors of ``module`` (``base_model.model.<path>.lora_A.weight`` ...), read
    from ``state`` by ``prefix + <path>...`` keys when given, else from the layers themselves."""
    from peft.tuners.lora import LoraLayer

    tensors = {}
    for path, layer in module.named_modules():
        if not isinstance(layer, LoraLayer):
            continue
        for factor in (*WEIGHT_FACTORS, *EMBEDDING_FACTORS):
            holder = getattr(layer, factor, None)
            if holder is None or ADAPTER_NAME not in holder:
                continue
            suffix = ".weight" if factor in WEIGHT_FACTORS else ""
            own = f"{path}.{factor}.{ADAPTER_NAME}{suffix}"
            value = state[prefix + own] if state is not None else module.get_submodule(f"{path}.{factor}").state_dict()[
                f"{ADAPTER_NAME}{suffix}"]
            tensors[f"base_model.model.{path}.{factor}{suffix}"] = value.detach().cpu().contiguous()
    return tensors


def _targets(tensors: Mapping[str, torch.Tensor]) -> str:
    """A regular expression full-matching exactly the module paths that carry LoRA."""
    paths = sorted({re.sub(r"^base_model\.model\.|\.lora_\w+$|\.lora_\w+\.weight$", "", key) for key in tensors})
    return "^(" + "|".join(re.escape(p) for p in paths) + ")$"


def write_adapter(folder: Path, tensors: dict[str, torch.Tensor], adapter: AdapterConfig, base: str, task_type: str | None) -> Path:
    """Writes one PEFT folder for ``tensors`` (from :func:`lora_tensors`)."""
    from peft import LoraConfig

    config = LoraConfig(
        r=adapter.lora_r, lora_alpha=adapter.lora_alpha, lora_dropout=adapter.lora_dropout, target_modules=_targets(tensors),
        task_type=task_type, base_model_name_or_path=base, inference_mode=True,
    )
    folder.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(str(folder))
    save_file(tensors, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    return folder


def write_peft_adapters(model, config: CotuneConfig, directory: str | Path,
                        state: Mapping[str, torch.Tensor] | None = None) -> dict[str, Path]:
    """Writes ``<directory>/<component>/`` for every LoRA component (a run's ``RunDir.peft_dir``);
    returns component -> folder."""
    written = {}
    for component, (module, prefix, adapter, base) in lora_components(model, config).items():
        tensors = lora_tensors(module, prefix, state)
        if tensors:
            task = "CAUSAL_LM" if component == "llm" else None
            written[component] = write_adapter(Path(directory) / component, tensors, adapter, base, task)
    return written
