"""Merging a trained model: LoRA and linear adapters folded into the backbones' weights.

* LoRA (LLM and encoders): PEFT's merge, then each LoRA layer is replaced by its base layer.
* RepAdapter, and MM-Adapters whose expert weights do not depend on the input (``modality`` router
  in the LLM, ``constant`` in encoders): folded into the linear layers that read the wrapped
  module's input (see :mod:`cotune.merge.fold` for the maths and
  :mod:`cotune.merge.probe` for how those layers are found and checked). A modality-routed
  adapter gives one weight set per distinct routing; the merged model selects a sample's set from
  its modality row through the routing state, without running the modality rows through the LLM.
* Kept unmerged: encoder adapters with input-dependent routers (``per_token``, ``cls``, ``mean``)
  and encoder sites whose module reads its input outside linear layers (residual conv blocks).
  An LLM site that cannot fold is refused (:class:`MergeError`).

Every merge is verified on a probe batch (one row per modality key): the merged logits must equal
the unmerged ones. The directory layout is in :mod:`cotune.merge.io`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from cotune.adapters.routing import RoutingState
from cotune.adapters.sites import AdaptedInput
from cotune.config import AdapterConfig, ConfigError, CotuneConfig, ModelConfig
from cotune.config.model import is_quantized
from cotune.merge.fold import ModalitySelection, adapter_affine, fold_factors, folded_layer
from cotune.merge.probe import analyse_sites, find_sites, llm_routing_mixes, probe_batch
from cotune.model.fused import CotuneModel, run_inline

log = logging.getLogger(__name__)

#: Largest merged-vs-unmerged logit difference accepted on the probe batch, relative to max(1, |logits|).
#: Float32 rounding alone moves a deep model's logits by more than 1e-4 relative: SmolLM2-135M's
#: unmerged logits differ by 1.8e-3 between 1 and 2 CPU threads and by 3.5-5.3e-3 from float64
#: (|logits| about 35), so a 1e-4 check failed correct merges; a wrong fold is far above 1e-3.
FP32_TOLERANCE = 1e-3
HALF_TOLERANCE = 5e-2


class MergeError(ConfigError):
    """The model or directory cannot be merged (or is merged already); the message says why."""


@dataclass
class MergeSummary:
    """What a merge did. ``folded_layers``: layer path -> weight sets; ``kept``: site -> reason."""

    lora_layers: list[str] = field(default_factory=list)
    folded_sites: list[str] = field(default_factory=list)
    folded_layers: dict[str, int] = field(default_factory=dict)
    kept: dict[str, str] = field(default_factory=dict)
    max_logit_diff: float = 0.0
    directory: str | None = None

    def lines(self) -> list[str]:
        """Human-readable summary, one line per group of kept sites sharing a reason."""
        sets = max(self.folded_layers.values(), default=0)
        out = [f"merged LoRA layers: {len(self.lora_layers)}",
               f"folded adapter sites: {len(self.folded_sites)} into {len(self.folded_layers)} layers"
               + (f" (up to {sets} weight sets per layer, one per modality routing)" if sets > 1 else ""),
               f"kept unmerged: {len(self.kept)} adapter sites"]
        by_reason: dict[str, list[str]] = {}
        for site, reason in self.kept.items():
            by_reason.setdefault(reason, []).append(site)
        out += [f"  {len(sites)} x {reason} (e.g. {sites[0]})" for reason, sites in by_reason.items()]
        out.append(f"max |logit difference| merged vs unmerged on the probe batch: {self.max_logit_diff:.3g}")
        return out


class MergedCotuneModel(CotuneModel):
    """A CotuneModel whose LoRA and foldable adapters live in its backbones' weights.

    With per-modality folded layers the model keeps a routing state: :meth:`compute_routing`
    returns one-hot modality rows [L, B, K] (no LLM pass) and every
    :class:`~cotune.merge.fold.ModalityLinear` picks its weight set from them. Nothing is
    trainable; ``merge_summary`` says what was folded and what was kept.
    """

    is_merged = True

    def __init__(self, model: CotuneModel, config: ModelConfig, routing_state: RoutingState | None,
                 selection: ModalitySelection | None, summary: MergeSummary) -> None:
        kept: dict[str, list] = {}
        for name, part in model.components().items():
            adapters = [m.adapter for m in part.modules() if isinstance(m, AdaptedInput)]
            if adapters:
                kept[name] = adapters
        super().__init__(config, model.llm, model.tokenizer, model.encoders, model.selectors, model.connectors,
                         None, routing_state, kept, model.placeholder_ids)
        self.modality_selection = selection
        self.merge_summary = summary
        self.requires_grad_(False)

    def compute_routing(self, modality_index: torch.Tensor) -> torch.Tensor:
        """modality_index [B] -> one-hot rows [L, B, K], float32 (what the folded layers read)."""
        onehot = F.one_hot(modality_index, len(self.modality_keys)).float()
        return onehot[None].expand(self.routing_state.num_layers, -1, -1)

    def _forward_inline(self, embeds, attention_mask, modality_index, llm_kwargs):
        """LaVIN's inline layout kept exactly (a row at position 0, masked from every text token, so
        text positions start at 1); the row's content never reaches the text, so it is zeros."""
        sequence = torch.cat([embeds.new_zeros(embeds.shape[0], 1, embeds.shape[2]), embeds], 1)
        routing = self.compute_routing(modality_index)
        with self.routing_state.applying(routing):
            logits, out = run_inline(self.llm, sequence, attention_mask, llm_kwargs)
        return logits, routing, out


def merged_config(config: CotuneConfig, kept_components: set[str], llm_path: str) -> CotuneConfig:
    """The config of the merged model: LLM read from ``llm_path`` with no adapter, every component
    frozen, encoder adapters kept only where some of their sites stay unmerged."""
    model = config.model
    llm = replace(model.llm, name_or_path=llm_path, trainable="frozen", adapter=AdapterConfig(), revision=None, gguf_file=None)
    encoders = {}
    for name, enc in model.encoders.items():
        adapter = enc.adapter if f"encoder.{name}" in kept_components else AdapterConfig()
        encoders[name] = replace(enc, trainable="frozen", adapter=adapter, connector=replace(enc.connector, trainable="frozen"))
    return replace(config, model=replace(model, llm=llm, encoders=encoders))


def merge_lora(model: torch.nn.Module, discard: bool = False) -> list[str]:
    """Merges every PEFT LoRA layer into its base layer and puts the base layer in its place.

    The merge adds in place (no copy: peak memory stays that of the model, and the weights keep
    the storage they were loaded into); each merged weight is checked to be finite. ``discard``:
    put the base layers back without the LoRA update (the text path of a media-gated LoRA)."""
    from peft.tuners.lora import LoraLayer

    merged = []
    for path, module in list(model.named_modules()):
        if isinstance(module, LoraLayer):
            if not discard:
                module.merge(safe_merge=False)
            base = module.get_base_layer()
            if not all(torch.isfinite(p).all() for p in base.parameters()):
                raise MergeError(f"{path}: merging its LoRA weights gave non-finite values (a diverged adapter?)")
            parent, _, child = path.rpartition(".")
            setattr(model.get_submodule(parent), child, base)
            merged.append(path)
    return merged


def fold_layers(model: torch.nn.Module, factors: dict, selection: ModalitySelection | None) -> None:
    """Replaces each layer at a path of ``factors`` by its folded version."""
    for path, fold in factors.items():
        parent, _, child = path.rpartition(".")
        setattr(model.get_submodule(parent), child, folded_layer(model.get_submodule(path), fold, selection))


def valid_logits(model: CotuneModel, batch: dict) -> torch.Tensor:
    """Logits at the batch's non-padded positions [n, V], float32."""
    with torch.no_grad():
        logits = model(**batch, use_cache=False).logits
    return logits[batch["attention_mask"].bool()].float()


def merge_model(model: CotuneModel, directory: str | Path | None = None, config: CotuneConfig | None = None) -> MergedCotuneModel:
    """Folds ``model``'s LoRA and linear adapters into its backbones and returns the merged model.

    ``model`` is changed in place and must not be used afterwards. With ``directory`` the merged
    model is also written there (it must not exist or be empty), loadable by ``cotune.load``;
    ``config`` (default: ``model.config`` with default data/train sections) goes into it.
    Raises :class:`MergeError` when an LLM adapter site cannot be folded.
    """
    from cotune.merge.io import MergeWriter

    if getattr(model, "is_merged", False):
        raise MergeError("the model is already merged")
    if is_quantized(model.config):
        raise MergeError(
            "the backbones are stored in 4 or 8 bits and adapters cannot be folded into quantized weights; "
            "dequantize first (cotune merge --dequantize, or cotune.load(..., dequantize=True)): the merged "
            "model then holds full-precision backbones"
        )
    if model.config.llm.adapter.gate == "media":
        raise MergeError(
            "model.llm.adapter.gate is 'media': the LLM's LoRA applies to prompts with media only, and merged into "
            "the LLM's weights it would apply to text-only prompts too; use the run unmerged"
        )
    config = config or CotuneConfig(model=model.config)
    if config.model != model.config:
        raise ValueError("config.model differs from the configuration the model was built from")
    writer = None if directory is None else MergeWriter(Path(directory))
    try:
        merged = _merge(model, config, writer)
    finally:
        if writer is not None:
            writer.close()
    for line in merged.merge_summary.lines():
        log.info("%s", line)
    return merged


def _merge(model: CotuneModel, config: CotuneConfig, writer) -> MergedCotuneModel:
    from cotune.merge.io import LLM_DIR

    model.eval()
    with torch.no_grad():
        batch = probe_batch(model)
        reference = valid_logits(model, batch)
        mixes = llm_routing_mixes(model)
        sites = find_sites(model)
        analyse_sites(model, [s for s in sites if s.reason is None], batch)
        refused = [s for s in sites if s.component == "llm" and s.reason]
        if refused:
            raise MergeError(
                f"model.llm.adapter: the adapter at {refused[0].path} cannot be folded: {refused[0].reason}; "
                f"{len(refused)} of the LLM's adapter sites are affected (adapter.attention_module / ffn_module pick the wrapped module)"
            )
        summary = MergeSummary(lora_layers=merge_lora(model), kept={s.path: s.reason for s in sites if s.reason})
        folds = [s for s in sites if s.reason is None]
        affines = {s.path: adapter_affine(s.adapter, mixes.get(s.adapter)) for s in folds}
        for site in folds:
            site.unwrap()
        names = {module: name for name, module in model.named_modules()}
        factors = {names[c]: fold_factors(affines[s.path], c) for s in folds for c in s.consumers}
        summary.folded_sites = [s.path for s in folds]
        summary.folded_layers = {path: len(f.up) for path, f in factors.items()}
        kept_components = {s.component for s in sites if s.reason}
        llm_path = str(writer.directory / LLM_DIR) if writer else config.model.llm.name_or_path
        if writer:
            writer.write_backbones(model, summary)
        routing = model.routing_state
        selection = ModalitySelection(routing) if routing is not None else None
        fold_layers(model, factors, selection)
        merged = MergedCotuneModel(model, merged_config(config, kept_components, llm_path).model, routing, selection, summary)
        merged.eval()
        summary.max_logit_diff = _verify(merged, batch, reference)
        if writer:
            summary.directory = str(writer.directory)
            writer.finish(merged_config(config, kept_components, LLM_DIR), config, factors, summary, merged)
    return merged


def _verify(merged: MergedCotuneModel, batch: dict, reference: torch.Tensor) -> float:
    """Max |merged - unmerged| logit on the probe batch; raises beyond the tolerance (relative to
    max(1, |logits|): FP32_TOLERANCE for float32 LLMs, HALF_TOLERANCE for half precision, where the
    folded weights are rounded once more than the unmerged path's)."""
    diff = float((valid_logits(merged, batch) - reference).abs().max())
    scale = max(1.0, float(reference.abs().max()))
    half = merged.llm.get_input_embeddings().weight.dtype != torch.float32
    if half:
        log.info("half-precision LLM: merged logits differ by up to %.3g (rounding of the folded weights)", diff)
    if diff > (HALF_TOLERANCE if half else FP32_TOLERANCE) * scale:
        raise MergeError(f"merge check failed: merged logits differ from the unmerged model's by {diff:.3g} on the probe batch")
    return diff
