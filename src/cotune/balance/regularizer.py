"""The auxiliary regulariser (reconstruction, option A): a label-free self-prediction loss whose
gradient reaches each side in proportion to how far that side lags in moving the output."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
import torch.nn.functional as F

from cotune.config import BalanceConfig
from cotune.model.loss import IGNORE_INDEX, next_token_targets


def lag_weights(shares: dict[str, float]) -> dict[str, float]:
    """l_X = max(0, 1/N - s_X) / (1/N): 0 for a side at or above its fair share, up to 1."""
    fair = 1.0 / len(shares)
    return {side: max(0.0, fair - s) / fair for side, s in shares.items()}


def aux_loss(logits: torch.Tensor, labels: torch.Tensor, target: str, positions: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over supervised next-token positions of -log p(argmax p) (``self_predict``, the model's
    own prediction as a stop-gradient target) or of the entropy H(p) (``entropy``).
    logits [B, S, V] or [B, K, V] at ``positions``; labels [B, S]."""
    keep = next_token_targets(labels, positions) != IGNORE_INDEX
    z = logits[keep].float()
    if z.numel() == 0:
        return logits.sum() * 0.0
    logp = F.log_softmax(z, -1)
    if target == "entropy":
        return -(logp.exp() * logp).sum(-1).mean()
    return F.nll_loss(logp, z.detach().argmax(-1))


class Regulariser:
    """The regulariser's gradients for the lagging sides: accumulated per micro-batch (the graph is
    kept for the main backward), added into ``.grad`` once the step's backward is done.

    ``params``: side -> its trainable tensors; ``lag``: side -> l_X (0: not lagging), set at window ends."""

    def __init__(self, config: BalanceConfig, params: dict[str, list[torch.nn.Parameter]]) -> None:
        self.config, self.params = config, params
        self.lag = {side: 0.0 for side in params}
        self._grads: dict[int, torch.Tensor] = {}

    @property
    def pending(self) -> dict[int, torch.Tensor]:
        """id(parameter) -> its accumulated gradient, until :meth:`apply` adds them."""
        return self._grads

    def active(self) -> bool:
        return self.config.aux_weight > 0 and any(v > 0 for v in self.lag.values())

    def forward_context(self) -> contextlib.AbstractContextManager:
        """Context for the training forward: ``grad_norm`` back-propagates through a backward, and
        only PyTorch's math attention kernel has a double backward (the fused ones have none)."""
        if self.active() and self.config.aux_target == "grad_norm":
            from torch.nn.attention import SDPBackend, sdpa_kernel

            return sdpa_kernel(SDPBackend.MATH)
        return contextlib.nullcontext()

    def add(self, logits: torch.Tensor, labels: torch.Tensor, fraction: float, positions: torch.Tensor | None = None,
            main_loss: torch.Tensor | None = None) -> float:
        """Accumulates the regulariser's gradient for lagging sides. logits [B, S, V] or [B, K, V] at
        ``positions``; labels [B, S]; ``fraction``: the micro-batch's share of the step's supervised
        tokens; ``main_loss``: its scalar training loss (needed by ``aux_target: grad_norm``).
        Returns the regulariser's value."""
        lagging = {side: [p for p in ps if p.requires_grad] for side, ps in self.params.items() if self.lag[side] > 0}
        if self.config.aux_target == "grad_norm":
            if main_loss is None:
                raise ValueError("aux_target grad_norm needs the micro-batch's training loss (main_loss)")
            return self._add_grad_norm(main_loss, lagging)
        loss = aux_loss(logits, labels, self.config.aux_target, positions) * fraction
        flat = [(side, p) for side, ps in lagging.items() for p in ps]
        grads = torch.autograd.grad(loss, [p for _s, p in flat], retain_graph=True, allow_unused=True)
        for (side, p), g in zip(flat, grads):
            self._accumulate(p, g, self.config.aux_weight * self.lag[side])
        return float(loss.detach())

    def _add_grad_norm(self, main_loss: torch.Tensor, lagging: dict[str, list[torch.nn.Parameter]]) -> float:
        """The ``grad_norm`` variant: L_gn = -sum_X lambda l_X ||grad_X L_main||_2 over lagging sides X,
        its gradient (a Hessian-vector product: one double backward per lagging side) routed to X's
        own parameters only, like option A's. The norm is the micro-batch's (with grad_accum > 1 it is
        not the step's)."""
        value = 0.0
        for side, params in lagging.items():
            grads = torch.autograd.grad(main_loss, params, create_graph=True, allow_unused=True)
            present = [g for g in grads if g is not None]
            if not present:
                continue
            norm = torch.sqrt(sum(g.float().pow(2).sum() for g in present))
            weight = self.config.aux_weight * self.lag[side]
            if norm.requires_grad and float(norm.detach()) > 0:
                hvp = torch.autograd.grad(norm, params, retain_graph=True, allow_unused=True)
                for p, h in zip(params, hvp):
                    self._accumulate(p, h, -weight)
            value -= weight * float(norm.detach())
        return value

    def _accumulate(self, param: torch.nn.Parameter, grad: torch.Tensor | None, scale: float) -> None:
        scaled = torch.zeros_like(param, dtype=torch.float32) if grad is None else grad.detach().float() * scale
        self._grads[id(param)] = self._grads.get(id(param), 0) + scaled

    def apply(self, world: int, all_reduce: Callable[[torch.Tensor], torch.Tensor], loss_scale: float = 1.0) -> None:
        """Adds the accumulated gradients (averaged over processes, times ``loss_scale``, the fp16
        GradScaler's current scale, which the main gradients still carry) into ``.grad``."""
        if not self._grads:
            return
        for params in self.params.values():
            for p in params:
                g = self._grads.get(id(p))
                if g is None:  # same on every process: lag weights and sides are global
                    continue
                g = all_reduce(g) / world if world > 1 else g
                g = g * loss_scale if loss_scale != 1.0 else g
                p.grad = g.to(p.dtype) if p.grad is None else p.grad + g.to(p.grad.dtype)
        self._grads = {}
