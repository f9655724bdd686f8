"""Estimating how much each side's update moved the output distribution (the KLs behind kappa).

``exact``: after an optimizer step, the supervised-position next-token distributions are computed
for the parameters before the step, with only one side moved (for each side), and with all moved;
KL_X compares each with "before". Parameters are swapped by copying saved clones and restored
bit-exactly. ``jvp``: first order, KL_X ~ 1/2 mean_i Var_{p_i}(J_i Delta_X) from forward-mode JVPs
of the logits along each side's update, evaluated after the step (no swapping).
Both run in eval mode (dropout off), without autocast, under no_grad.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from cotune.model.loss import IGNORE_INDEX, next_token_targets
from cotune.model.inputs import model_inputs


@dataclass
class Estimate:
    """KL sums and the position count over which they were summed (reduce across processes
    before dividing). ``kl[side]``: only that side moved; ``kl_joint``: all moved."""

    kl: dict[str, float] = field(default_factory=dict)
    kl_joint: float = 0.0
    positions: int = 0
    seconds: float = 0.0


@contextlib.contextmanager
def evaluation(model):
    """Eval mode, no grad, no autocast, RNG untouched; restores the training mode."""
    was_training = model.training
    rng = torch.get_rng_state()
    model.eval()
    try:
        with torch.no_grad(), torch.autocast(device_type="cuda", enabled=False), torch.autocast(device_type="cpu", enabled=False):
            yield
    finally:
        torch.set_rng_state(rng)
        model.train(was_training)


def _row_mask(model, batch: dict, samples: str, device) -> torch.Tensor:
    ids = batch["input_ids"].to(device)
    if samples == "all" or not model.placeholder_ids:
        return torch.ones(ids.shape[0], dtype=torch.bool, device=device)
    return model.placeholder_mask(ids).any(1)


def select_supervised(model, batch: dict, logits: torch.Tensor, samples: str, positions: torch.Tensor | None = None) -> torch.Tensor:
    """Logits [B, S, V] (or [B, K, V] at ``positions``) -> [N, V] float32 at the supervised
    next-token positions of the kept rows, in row-major order."""
    targets = next_token_targets(batch["labels"].to(logits.device), positions)
    keep = (targets != IGNORE_INDEX) & _row_mask(model, batch, samples, logits.device)[:, None]
    return logits[keep].float()


def supervised_logits(model, batch: dict, samples: str) -> torch.Tensor:
    """Logits [N, V] (float32) at the supervised next-token positions of ``batch``'s rows
    (multimodal rows only with ``samples: multimodal_only``); the LM head runs at those positions only."""
    out = model(**model_inputs(batch, next(model.parameters()).device), use_cache=False, supervised_logits=True)
    return select_supervised(model, batch, out.logits, samples, out.logit_positions)


def kl_sum(ref_logp: torch.Tensor, logp: torch.Tensor, direction: str) -> float:
    """Sum over positions of KL(ref || other) (forward), KL(other || ref) (reverse) or their mean."""
    forward = (ref_logp.exp() * (ref_logp - logp)).sum(-1)
    if direction == "forward":
        return float(forward.sum())
    reverse = (logp.exp() * (logp - ref_logp)).sum(-1)
    return float(reverse.sum() if direction == "reverse" else 0.5 * (forward + reverse).sum())


def snapshot(params: dict[str, list[torch.Tensor]]) -> dict[str, list[torch.Tensor]]:
    return {side: [p.detach().clone() for p in ps] for side, ps in params.items()}


def _load(params: dict[str, list[torch.Tensor]], values: dict[str, list[torch.Tensor]], sides) -> None:
    for side in sides:
        for p, v in zip(params[side], values[side]):
            p.data.copy_(v)


def exact_estimate(model, batch, params, before, after, samples: str, direction: str, before_logits: torch.Tensor | None = None) -> Estimate:
    """``params``: side -> trainable tensors; ``before`` / ``after``: their values around the step.
    ``before_logits``: the training forward's supervised logits, when that forward was
    deterministic (saves one forward). Leaves every tensor at ``after``, bit for bit."""
    started = time.perf_counter()
    estimate = Estimate()
    with evaluation(model):
        try:
            if before_logits is None:
                _load(params, before, params)
                before_logits = supervised_logits(model, batch, samples)
            ref = F.log_softmax(before_logits.float(), -1)
            estimate.positions = ref.shape[0]
            if estimate.positions:
                for side in params:
                    _load(params, before, params)
                    _load(params, after, [side])
                    estimate.kl[side] = kl_sum(ref, F.log_softmax(supervised_logits(model, batch, samples), -1), direction)
                _load(params, after, params)
                estimate.kl_joint = kl_sum(ref, F.log_softmax(supervised_logits(model, batch, samples), -1), direction)
        finally:
            _load(params, after, params)
    estimate.seconds = time.perf_counter() - started
    return estimate


def jvp_estimate(model, batch, params, before, after, samples: str, direction: str) -> Estimate:
    """First-order KLs from one forward-mode JVP per side at the post-step parameters
    (``direction`` does not matter at this order: every direction gives 1/2 Delta^T F Delta).
    Attention runs on PyTorch's math SDPA kernel (the fused ones have no forward-mode derivative);
    models loaded with ``attn_implementation: flash_attention_2`` need ``exact`` instead."""
    from torch.func import functional_call, jvp

    started = time.perf_counter()
    names = {id(p): n for n, p in model.named_parameters()}
    side_of = [side for side, ps in params.items() for _ in ps]
    keys = [names[id(p)] for ps in params.values() for p in ps]
    primals = tuple(p.detach() for ps in params.values() for p in ps)
    deltas = [a - b for a, b in zip(_flatten(after, params), _flatten(before, params))]
    kwargs = {**model_inputs(batch, primals[0].device, labels=False), "use_cache": False}

    def logits_of(*values):
        out = functional_call(model, dict(zip(keys, values)), (), kwargs, strict=False)
        return select_supervised(model, batch, out.logits, samples)

    from torch.nn.attention import SDPBackend, sdpa_kernel

    estimate = Estimate()
    # Fused attention kernels have no forward-mode derivative; the math kernel does.
    with evaluation(model), sdpa_kernel(SDPBackend.MATH):
        tangents = {}
        for side in params:
            tangent = tuple(d if s == side else torch.zeros_like(d) for s, d in zip(side_of, deltas))
            logits, tangents[side] = jvp(logits_of, primals, tangent)
        probs = F.softmax(logits, -1)
        estimate.positions = logits.shape[0]

        def half_variance(u: torch.Tensor) -> float:
            mean = (probs * u).sum(-1)
            return float(0.5 * ((probs * u * u).sum(-1) - mean * mean).sum())

        for side, u in tangents.items():
            estimate.kl[side] = half_variance(u)
        estimate.kl_joint = half_variance(sum(tangents.values()))
    estimate.seconds = time.perf_counter() - started
    return estimate


def _flatten(values: dict[str, list[torch.Tensor]], params) -> list[torch.Tensor]:
    return [v for side in params for v in values[side]]


ESTIMATORS = {"exact": exact_estimate, "jvp": jvp_estimate}
