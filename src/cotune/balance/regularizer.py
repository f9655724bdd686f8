"""The auxiliary regulariser (reconstruction, option A): a label-free self-prediction loss whose
gradient reaches each side in proportion to how far that side lags in moving the output."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cotune.model.fused import IGNORE_INDEX, next_token_targets


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
