"""Placing encoder tokens into the LLM's input embeddings, and modality keys per sample.

Contract: the data pipeline expands each placeholder into exactly as many placeholder tokens as
the connector yields per item; items of one encoder appear in batch order. Counts are checked
before anything is scattered, and a mismatch names the samples.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


class SpliceError(ValueError):
    """Placeholder tokens and encoder features disagree; the message names the samples."""


def _names(sample_ids: Sequence | None, rows: torch.Tensor) -> str:
    rows = rows.tolist()
    if sample_ids is None:
        return ", ".join(f"batch row {r}" for r in rows)
    return ", ".join(f"sample {sample_ids[r]!r}" for r in rows)


def splice_features(
    embeds: torch.Tensor,
    input_ids: torch.Tensor,
    placeholder_id: int,
    features: torch.Tensor | None,
    name: str,
    sample_ids: Sequence | None = None,
) -> torch.Tensor:
    """Writes ``features`` [items, n, D] into ``embeds`` [B, S, D] where ``input_ids`` [B, S] == placeholder.

    Returns a new tensor (differentiable with respect to ``features``).
    """
    mask = input_ids == placeholder_id
    per_sample = mask.sum(1)
    total = int(per_sample.sum())
    if features is None:
        if total:
            raise SpliceError(f"{_names(sample_ids, per_sample.nonzero().flatten())} contain {name} placeholders but no {name} inputs were given")
        return embeds
    items, per_item = features.shape[0], features.shape[1]
    bad = (per_sample % max(per_item, 1)).nonzero().flatten()
    if len(bad) or total != items * per_item:
        rows = bad if len(bad) else per_sample.nonzero().flatten()
        raise SpliceError(
            f"{name}: {total} placeholder tokens in the batch but {items} items x {per_item} tokens = "
            f"{items * per_item} features (per-row counts {per_sample.tolist()}); check {_names(sample_ids, rows)}"
        )
    return embeds.masked_scatter(mask.unsqueeze(-1), features.to(embeds.dtype))


def modality_codes(input_ids: torch.Tensor, placeholder_ids: Sequence[int]) -> torch.Tensor:
    """Bit code per sample [B] (bit i set when encoder i's placeholder occurs in the row)."""
    codes = torch.zeros(input_ids.shape[0], dtype=torch.long, device=input_ids.device)
    for bit, token_id in enumerate(placeholder_ids):
        codes |= (input_ids == token_id).any(1).long() << bit
    return codes


def inline_attention_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """LaVIN's mask for a sequence with the modality row at position 0: [B, S] -> additive [B, 1, S+1, S+1].

    Causal, padded keys hidden, and column 0 hidden from every row >= 1 (the modality row only
    attends to itself and no text token attends to it). Uses the dtype's minimum, not -inf, so a
    fully padded query row stays finite.
    """
    b, s = attention_mask.shape
    keys = torch.cat([attention_mask.new_ones(b, 1), attention_mask], 1).bool()  # [B, S+1]
    causal = torch.ones(s + 1, s + 1, dtype=torch.bool, device=attention_mask.device).tril()
    causal[1:, 0] = False
    allowed = causal[None] & keys[:, None, :]
    mask = torch.zeros(b, 1, s + 1, s + 1, dtype=dtype, device=attention_mask.device)
    return mask.masked_fill(~allowed[:, None], torch.finfo(dtype).min)
