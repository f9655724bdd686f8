"""The memory plan: peak training memory per device, estimated before a run from shapes alone.

The model is built on the meta device (:func:`build_model` with ``meta=True``: config.json files
only), so a 13B recipe is planned in seconds on any machine. The peak of one optimizer step is

    peak = weights + trainable x 4 + AdamW states (2 x trainable x 4)
           + max(start of backward, top layer's backward, encoders' backward, optimizer step)

* weights: frozen parameters in their dtype; quantized linear layers in 4 bits (0.5 byte + one
  absmax per 64 weights: 4 bytes, or 1 byte + 4 per 256 blocks with double quantization) or 8 bits
  (1 byte + a float32 scale per output row); embeddings, norms and the LM head keep the dtype.
  Trainable parameters are float32 (cotune keeps them so), as are their gradients and both AdamW
  moments (the trainer's optimizer).
* start of backward: every kept activation (:mod:`cotune.train.memory_activations`: LLM layers,
  the routing pass, autocast's weight copies, encoders) + the logits and the float32 loss tensors;
* top layer's backward: the kept activations + logits + one layer's gradients (+ with gradient
  checkpointing, the recomputed layer);
* optimizer step: gradients (fused AdamW adds no temporaries).
With ``train.grad_accum`` > 1 the gradients of earlier micro-batches are alive in every phase.

The estimate assumes the worst batch: every row ``seq_len`` tokens long (``data.max_length``),
every sample with one item of every encoder, logits at ``supervised_fraction`` of the positions
(1.0: all). It counts tensors, as ``torch.cuda.max_memory_allocated`` does; the CUDA context and
the caching allocator's slack come on top (:data:`DEVICE_MARGIN`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

import torch
from torch import nn

from cotune.config.model import CotuneConfig, QuantizationConfig
from cotune.train.memory_activations import (
    AUTOCAST_DTYPES, LayerSetup, backward_working_bytes, layer_bytes_per_token, llm_shape, logits_bytes,
    step_dtypes, trace_encoder,
)
from cotune.train.memory_weights import component_storage, component_weights

GIB = 2**30
#: what a device keeps beside tensors: a fraction of its memory (allocator slack) plus the CUDA context.
DEVICE_MARGIN = (0.08, 0.5 * GIB)


@dataclass(frozen=True)
class MemoryTerm:
    """One line of the plan: ``bytes`` of ``name`` (``detail`` says how it was counted)."""

    name: str
    bytes: int
    detail: str = ""


@dataclass(frozen=True)
class StepSettings:
    """The step being planned: batch rows, tokens per row, positions with logits, checkpointing."""

    batch_size: int
    seq_len: int
    supervised_positions: int
    gradient_checkpointing: bool
    precision: str
    grad_accum: int
    media_items: dict[str, int] = field(default_factory=dict)
    device: str = "cuda"


@dataclass(frozen=True)
class MemoryPlan:
    """Static memory (weights, trainable state), activations, the phases' extra bytes and the peak.

    ``peak_without`` / ``peak_with``: the peak with gradient checkpointing off / on (the settings'
    own choice is ``peak``). ``fits`` is None without a device size; ``advice``: what to change.
    """

    settings: StepSettings
    static: tuple[MemoryTerm, ...]
    activations: tuple[MemoryTerm, ...]
    phases: dict[str, int]
    peak: int
    peak_phase: str
    peak_without: int
    peak_with: int
    device_memory: int | None = None
    usable: int | None = None
    fits: bool | None = None
    advice: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return asdict(self)


class MemoryEstimator:
    """Plans steps of one config's model, built once on the meta device (encoder traces cached)."""

    def __init__(self, config: CotuneConfig, model) -> None:
        self.config, self.model = config, model
        self.shape = llm_shape(model)
        self.trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        self._traces: dict[tuple, object] = {}
        from cotune.balance.sides import resolve_sides

        groups = [name for name, module in model.components().items() if any(p.requires_grad for p in module.parameters())]
        self.estimates_kappa = config.balance.estimator != "none" and len(resolve_sides(config.balance, groups)) >= 2
        model.train()
        self.dropout = any(isinstance(m, nn.Dropout) and m.p > 0 and m.training for m in model.modules())

    def settings(self, batch_size=None, seq_len=None, gradient_checkpointing=None, supervised_fraction=1.0,
                 device: str = "cuda") -> StepSettings:
        """Step settings from the config, each overridable (``device``: cuda or cpu)."""
        data, train = self.config.data, self.config.train
        batch = batch_size or data.batch_size
        seq = seq_len or data.max_length
        if not 0 < supervised_fraction <= 1:
            raise ValueError(f"supervised_fraction: must be in (0, 1], got {supervised_fraction}")
        checkpointing = train.gradient_checkpointing if gradient_checkpointing is None else gradient_checkpointing
        return StepSettings(batch, seq, max(1, round(supervised_fraction * seq)), checkpointing, train.precision,
                            train.grad_accum, {name: batch for name in self.config.model.encoders}, device)

    # ------------------------------------------------------------------ static part
    def static_terms(self, config: CotuneConfig) -> list[MemoryTerm]:
        model, terms = self.model, []
        head = model.llm.get_output_embeddings()
        skip = {id(head.weight)} if head is not None else set()
        for name, module in model.components().items():
            frozen, label = component_weights(module, *component_storage(config, name), skip)
            if frozen:
                terms.append(MemoryTerm(f"weights {name}", frozen, label))
        trainable = self.trainable
        terms.append(MemoryTerm("trainable parameters", 4 * trainable, f"{trainable:,} float32"))
        terms.append(MemoryTerm("AdamW states", 8 * trainable, "exp_avg + exp_avg_sq, float32"))
        return terms

    # ------------------------------------------------------------------ activations
    def _encoder_terms(self, settings: StepSettings, checkpointing: bool) -> tuple[list[MemoryTerm], int]:
        """(kept activation terms, the extra bytes of one checkpointed encoder's recompute)."""
        terms, recompute = [], 0
        autocast = AUTOCAST_DTYPES.get(settings.precision)
        for name, enc in self.config.model.encoders.items():
            dtype = getattr(torch, autocast or enc.dtype)
            eight_bit = enc.quantization is not None and enc.quantization.bits == 8
            key = (name, dtype, eight_bit)
            if key not in self._traces:
                self._traces[key] = trace_encoder(self.model, name, dtype, eight_bit)
            trace, items = self._traces[key], settings.media_items.get(name, 0)
            if checkpointing and trace.checkpointable:
                kept = items * trace.blocks * trace.block_input
                recompute = max(recompute, items * trace.saved // max(trace.blocks, 1))
                detail = f"{items} item{'s' * (items != 1)}, checkpointed: {trace.blocks} block inputs"
            else:
                kept = items * trace.saved
                detail = f"{items} item{'s' * (items != 1)} x {trace.saved / 2**20:.1f} MiB kept per item"
            types = step_dtypes(enc.dtype, settings.precision, enc.quantization is not None)
            if types.cast_copies and any(p.requires_grad for p in self.model.encoders[name].parameters()):
                copies = sum(p.numel() for p in self.model.encoders[name].parameters() if not p.requires_grad and p.dim() >= 2)
                kept += 0 if checkpointing and trace.checkpointable else 2 * copies
            terms.append(MemoryTerm(f"activations encoder.{name}", kept, detail))
        return terms, recompute

    def activations(
        self, config: CotuneConfig, settings: StepSettings, checkpointing: bool
    ) -> tuple[list[MemoryTerm], dict[str, int]]:
        """Kept activation terms and each phase's extra bytes (module docstring)."""
        llm, shape = config.model.llm, self.shape
        types = step_dtypes(llm.dtype, settings.precision, llm.quantization is not None)
        setup = LayerSetup(
            keeps_linear_inputs=llm.trainable == "full" or (llm.quantization is not None and llm.quantization.bits == 8),
            lora_r=llm.adapter.lora_r if shape.lora_targets else 0, lora_dropout=llm.adapter.lora_dropout,
            attention=llm.attn_implementation or "sdpa", dropout_mask_bytes=1 if settings.device == "cuda" else 4,
        )
        batch, seq, kept = settings.batch_size, settings.seq_len, settings.supervised_positions
        tokens = batch * seq
        routing = self.model.routing_state is not None and config.model.routing.mode == "separate"
        rows = min(batch, len(config.model.resolved_modality_keys())) if routing else 0
        if routing and config.model.routing.rows == "per_sample":
            rows = batch
        per_token = layer_bytes_per_token(shape, types, setup, seq)
        layer = tokens * per_token + rows * layer_bytes_per_token(shape, types, setup, 1)
        copies = 2 * shape.frozen_linear_params if types.cast_copies else 0
        passes = 2 if routing else 1
        norm_out = tokens * shape.hidden * 4
        mask = batch * seq * seq if setup.padded and setup.attention != "flash_attention_2" else 0  # the boolean mask
        terms = []
        if checkpointing:
            inputs = shape.layers * (tokens + rows) * shape.hidden * types.stream
            terms.append(MemoryTerm("activations llm layers", inputs + norm_out + mask,
                                    f"checkpointed: {shape.layers} layer inputs x {tokens + rows} tokens"))
            recompute_llm = layer + copies
        else:
            terms.append(MemoryTerm("activations llm layers", shape.layers * layer + norm_out + mask,
                                    f"{shape.layers} layers x {tokens} tokens x {per_token:,} B"
                                    + (f" + routing pass ({rows} rows)" if rows else "")))
            if copies:
                terms.append(MemoryTerm("autocast weight copies", shape.layers * passes * copies,
                                        f"{llm.dtype} weights cast to {AUTOCAST_DTYPES[settings.precision]}, kept for backward"
                                        + (" (main and routing pass)" if passes == 2 else "")))
            recompute_llm = 0
        head_copy = 2 * shape.lm_head_params if types.cast_copies else 0
        logits, loss = logits_bytes(shape, types, batch, kept)
        terms.append(MemoryTerm("logits", logits + head_copy, f"{batch} x {kept} positions x {shape.vocab:,} vocabulary"))
        encoder_terms, recompute_encoder = self._encoder_terms(settings, checkpointing)
        terms += encoder_terms
        balance = config.balance
        if self.estimates_kappa and balance.estimator == "exact" and balance.reuse_training_logits != "never" \
                and settings.precision == "fp32" and not self.dropout:
            terms.append(MemoryTerm("balance: captured logits", batch * kept * shape.vocab * 4,
                                    f"every {balance.every_k} steps the kappa estimate keeps the training logits"))
        kept_total = sum(t.bytes for t in terms)
        grads = 4 * self.trainable
        earlier = grads if settings.grad_accum > 1 else 0
        phases = {
            "start of backward": kept_total + loss + earlier,
            "top layer's backward": kept_total + recompute_llm + backward_working_bytes(shape, types, tokens) + earlier,
            "encoders' backward": sum(t.bytes for t in encoder_terms) + recompute_encoder + logits + grads,
            "optimizer step": grads,
        }
        if self.estimates_kappa:
            # Two parameter snapshots; no-grad forwards whose logits (t, then float32 and its
            # log-softmax) meet the reference's (float32 and its log-softmax).
            phases["kappa estimate"] = 8 * self.trainable + batch * kept * shape.vocab * (16 + types.logits)
        return terms, phases

    # ------------------------------------------------------------------ the plan
    def plan(self, settings: StepSettings, config: CotuneConfig | None = None, device_memory: int | None = None) -> MemoryPlan:
        config = config or self.config
        static = self.static_terms(config)
        base = sum(t.bytes for t in static)
        peaks = {}
        for checkpointing in (False, True):
            terms, phases = self.activations(config, settings, checkpointing)
            phase = max(phases, key=phases.get)
            peaks[checkpointing] = (base + phases[phase], phase, terms, phases)
        peak, phase, terms, phases = peaks[settings.gradient_checkpointing]
        plan = MemoryPlan(settings, tuple(static), tuple(terms), phases, peak, phase, peaks[False][0], peaks[True][0])
        if device_memory is None:
            return plan
        usable = int(device_memory * (1 - DEVICE_MARGIN[0]) - DEVICE_MARGIN[1])
        return replace(plan, device_memory=device_memory, usable=usable, fits=peak <= usable,
                       advice=tuple(self.advice(plan, config, usable)))

    def advice(self, plan: MemoryPlan, config: CotuneConfig, usable: int) -> list[str]:
        """What to change: the autocast dtype mismatch, then (when the step does not fit)
        checkpointing, a smaller batch with more accumulation, 4-bit weights."""
        lines, settings, llm = [], plan.settings, config.model.llm
        copies = sum(t.bytes for t in plan.activations if t.name == "autocast weight copies")
        autocast = AUTOCAST_DTYPES.get(settings.precision)
        if autocast and llm.dtype != autocast and llm.quantization is None and llm.trainable != "full":
            matched = self.plan(settings, _with_llm(config, dtype=autocast))
            lines.append(f"model.llm.dtype {llm.dtype} under train.precision {settings.precision}: autocast casts every frozen "
                         f"weight on use{f' and keeps the copies ({_gib(copies)})' if copies else ''}; "
                         f"--set model.llm.dtype={autocast}: {_gib(matched.peak)}")
        if plan.peak <= usable:
            return lines
        checkpointed = replace(settings, gradient_checkpointing=True)
        four_bit = _with_llm(config, quantization=QuantizationConfig())
        options = [("", settings, config)]
        if not settings.gradient_checkpointing:
            options.append(("--set train.gradient_checkpointing=true", checkpointed, config))
        if llm.quantization is None and llm.trainable != "full":
            options.append(("--set model.llm.quantization.bits=4", settings, four_bit))
            if not settings.gradient_checkpointing:
                options.append((f"{options[1][0]} {options[2][0]}", checkpointed, four_bit))
        for flags, changed, cfg in options[1:]:
            peak = self.plan(changed, cfg).peak
            lines.append(f"{flags}: {_gib(peak)}{' (fits)' if peak <= usable else ''}")
        for flags, changed, cfg in options:
            batch = self._largest_batch(changed, cfg, usable)
            if batch == settings.batch_size:
                return lines
            if batch:
                # The largest fitting batch that divides the effective batch keeps it exactly.
                effective = settings.batch_size * settings.grad_accum
                batch = max(b for b in range(1, batch + 1) if effective % b == 0)
                smaller = self.plan(_batch(changed, batch), cfg).peak
                lines.append(f"{flags + ' ' if flags else ''}--set data.batch_size={batch} --set train.grad_accum={effective // batch} "
                             f"(the same effective batch, {effective}): {_gib(smaller)} (fits)")
                return lines
        lines.append("nothing above fits at batch 1: shorten data.max_length (--seq-len) or use a larger device")
        return lines

    def _largest_batch(self, settings: StepSettings, config: CotuneConfig, usable: int) -> int:
        """The largest batch up to the settings' own whose step fits in ``usable`` bytes (0: none)."""
        for batch in range(settings.batch_size, 0, -1):
            if self.plan(_batch(settings, batch), config).peak <= usable:
                return batch
        return 0


def _batch(settings: StepSettings, batch: int) -> StepSettings:
    return replace(settings, batch_size=batch, media_items={n: batch for n in settings.media_items})


def _with_llm(config: CotuneConfig, **fields) -> CotuneConfig:
    model = replace(config.model, llm=replace(config.model.llm, **fields))
    return replace(config, model=model)


def _gib(n: int) -> str:
    return f"{n / GIB:.1f} GiB"


def plan_memory(config: CotuneConfig, model=None, *, batch_size: int | None = None, seq_len: int | None = None,
                gradient_checkpointing: bool | None = None, supervised_fraction: float = 1.0,
                device_memory: int | None = None) -> MemoryPlan:
    """The :class:`MemoryPlan` of ``config`` (its meta-device ``model`` is built unless given)."""
    if model is None:
        from cotune.model.build import build_model
        from cotune.zoo.sources import resolve_sources

        model = build_model(config, meta=True, sources=resolve_sources(config.model))
    estimator = MemoryEstimator(config, model)
    settings = estimator.settings(batch_size, seq_len, gradient_checkpointing, supervised_fraction)
    return estimator.plan(settings, device_memory=device_memory)
