"""The next-token loss of a causal LM: labels shifted by one position, -100 where unsupervised,
optionally only at the positions whose logits were computed (``logits_to_keep``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cotune.data.templates import IGNORE_INDEX

__all__ = ["IGNORE_INDEX", "next_token_loss", "next_token_targets"]


def next_token_targets(labels: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
    """labels [B, S] -> the token each position predicts [B, S] (-100 at the last position), or
    only at ``positions`` [K]: [B, K]."""
    shifted = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)
    return shifted if positions is None else shifted[:, positions]


def next_token_loss(logits: torch.Tensor, labels: torch.Tensor, positions: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed cross-entropy of logits [B, S, V] (or [B, K, V] at ``positions``) predicting labels
    [B, S] shifted by one, and the number of supervised positions (labels != -100). Computed in float32."""
    # Shift the labels, not the logits: slicing [B, S, V] logits would copy them (and their gradient).
    targets = next_token_targets(labels, positions)
    loss_sum = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")
    return loss_sum, (targets != IGNORE_INDEX).sum()
