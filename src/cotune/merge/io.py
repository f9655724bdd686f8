"""The directory of a merged model: writing it (staged, then renamed into place) and loading it.

Layout::

    llm/                 the LLM with its LoRA merged (save_pretrained, safetensors) and its tokenizer,
                         placeholder tokens included. Without adapters folded into the LLM
                         (manifest ``merged.llm_standalone``) this is the complete merged LLM and
                         ``transformers.AutoModelForCausalLM.from_pretrained`` loads it alone; otherwise
                         its folded layers are rebuilt from folds.safetensors by cotune.
    folds.safetensors    per folded layer ``<path>.fold_down`` [h, in], ``.fold_up`` [S, out, h],
                         ``.fold_shift`` [S, out] (float32) and ``.fold_rows`` [K] (weight set per
                         modality row, only with several sets).
    weights.safetensors  what the backbones' sources lack: connectors, adapters kept unmerged, and
                         encoder weights changed by LoRA or full training (values before folding).
    config.yaml          the merged model's config; ``model.llm.name_or_path`` is ``llm``, relative to
                         the directory, so the directory can be moved.
    manifest.json        format version, config hash, parameter counts and the ``merged`` record.

Encoders are read from their configured ``name_or_path``, as for any saved cotune model; nothing
refers to the run directory the model came from.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from cotune.adapters.routing import RoutingState
from cotune.adapters.sites import AdaptedInput
from cotune.config import CotuneConfig, config_hash, load_config, save_config
from cotune.fileio import atomic_write_text
from cotune.merge.fold import FoldFactors, ModalitySelection
from cotune.merge.model import MergedCotuneModel, MergeSummary, fold_layers
from cotune.model.build import build_model
from cotune.model.fused import CotuneModel
from cotune.model.io import CONFIG, FORMAT_VERSION, MANIFEST
from cotune.zoo.sources import resolve_sources

LLM_DIR = "llm"
FOLDS = "folds.safetensors"
WEIGHTS = "weights.safetensors"


def merged_record(directory: str | Path) -> dict | None:
    """The ``merged`` record of a directory's manifest, or None when it holds no merged model."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        return None
    return json.loads(path.read_text()).get("merged")


def backbone_extras(model: CotuneModel, summary: MergeSummary) -> dict[str, torch.Tensor]:
    """Tensors a merged directory stores beside llm/ (before folding): connectors, kept adapters,
    encoder layers whose LoRA was merged, and whole encoders that were trained ``full``."""
    prefixes = ["connectors."]
    prefixes += [f"{site}.adapter." for site in summary.kept]
    prefixes += [f"{path}." for path in summary.lora_layers if not path.startswith("llm.")]
    prefixes += [f"encoders.{name}." for name, enc in model.config.encoders.items() if enc.trainable == "full"]
    state = model.state_dict()
    return {k: v.detach().cpu().contiguous().clone() for k, v in state.items() if k.startswith(tuple(prefixes))}


class MergeWriter:
    """Writes a merged directory into a hidden sibling and renames it into place when complete."""

    def __init__(self, directory: Path) -> None:
        if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
            raise FileExistsError(f"{directory} exists and is not empty; choose another output directory")
        self.directory = directory
        self.staging = directory.parent / f".{directory.name}.tmp-{os.getpid()}"
        shutil.rmtree(self.staging, ignore_errors=True)
        self.staging.mkdir(parents=True)

    def write_backbones(self, model: CotuneModel, summary: MergeSummary) -> None:
        """Saves the LLM (LoRA merged, adapters not yet folded) and the extras; call before folding."""
        model.llm.save_pretrained(self.staging / LLM_DIR)
        if model.tokenizer is not None:
            model.tokenizer.save_pretrained(self.staging / LLM_DIR)
        save_file(backbone_extras(model, summary), self.staging / WEIGHTS)

    def finish(self, saved: CotuneConfig, source: CotuneConfig, factors: dict[str, FoldFactors],
               summary: MergeSummary, merged: MergedCotuneModel) -> None:
        """Writes folds, config and manifest, then moves the directory into place."""
        import peft
        import transformers

        save_file({k: v for path, f in factors.items() for k, v in f.tensors(path).items()}, self.staging / FOLDS)
        save_config(saved, self.staging / CONFIG)
        record = {k: v for k, v in dataclasses.asdict(summary).items() if k != "directory"}
        record.update(
            source_config_hash=config_hash(source),
            llm_standalone=not any(path.startswith("llm.") for path in summary.folded_layers),
            routing_layers=None if merged.routing_state is None else merged.routing_state.num_layers,
            versions={"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__},
        )
        manifest = {"format_version": FORMAT_VERSION, "config_hash": config_hash(saved),
                    "components": merged.parameter_counts(), "merged": record}
        atomic_write_text(self.staging / MANIFEST, json.dumps(manifest, indent=2))
        os.replace(self.staging, self.directory)  # also replaces an empty directory

    def close(self) -> None:
        """Removes the staging directory if the merge did not finish."""
        shutil.rmtree(self.staging, ignore_errors=True)


def _load_exact(model: torch.nn.Module, tensors: dict[str, torch.Tensor], source: Path) -> None:
    own = model.state_dict()
    unknown = sorted(set(tensors) - set(own))
    if unknown:
        raise KeyError(f"{source}: {len(unknown)} tensors match no parameter of the rebuilt model (e.g. {unknown[:3]})")
    with torch.no_grad():
        for key, value in tensors.items():
            if own[key].shape != value.shape:
                raise ValueError(f"{source}: {key} has shape {tuple(value.shape)}, the model {tuple(own[key].shape)}")
            own[key].copy_(value)


def load_merged(directory: str | Path, device=None) -> tuple[MergedCotuneModel, CotuneConfig]:
    """Rebuilds the merged model of ``directory`` -> (model in eval mode, config with resolved paths)."""
    directory = Path(directory)
    info = merged_record(directory)
    if info is None:
        raise FileNotFoundError(f"{directory} is not a merged cotune model (no 'merged' record in {MANIFEST})")
    version = json.loads((directory / MANIFEST).read_text()).get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(f"{directory}: merged format version {version} is not supported (expected {FORMAT_VERSION})")
    saved = load_config(directory / CONFIG)
    llm_path = Path(saved.model.llm.name_or_path)
    llm_path = llm_path if llm_path.is_absolute() else directory / llm_path
    config = replace(saved, model=replace(saved.model, llm=replace(saved.model.llm, name_or_path=str(llm_path))))
    model = build_model(config, device=device, sources=resolve_sources(config.model))
    for path in info["folded_sites"]:  # encoders with kept sites were re-injected everywhere
        module = model.get_submodule(path)
        if isinstance(module, AdaptedInput):
            parent, _, child = path.rpartition(".")
            setattr(model.get_submodule(parent), child, module.module)
    _load_exact(model, load_file(directory / WEIGHTS), directory / WEIGHTS)
    tensors = load_file(directory / FOLDS)
    factors = {path: FoldFactors.from_tensors(tensors, path) for path in info["folded_layers"]}
    routing = None if info["routing_layers"] is None else RoutingState(info["routing_layers"])
    selection = None if routing is None else ModalitySelection(routing)
    fold_layers(model, factors, selection)
    fields = {f.name for f in dataclasses.fields(MergeSummary)}
    summary = MergeSummary(**{k: v for k, v in info.items() if k in fields})
    summary.directory = str(directory)
    merged = MergedCotuneModel(model, config.model, routing, selection, summary)
    merged.eval()
    return merged, config
