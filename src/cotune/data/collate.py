"""Batching prepared items: right padding, labels, stacked media per encoder, dropped-item records."""

from __future__ import annotations

import torch

from cotune.data.templates import IGNORE_INDEX


class Collator:
    """Items from :class:`PreparedDataset` -> a batch for :meth:`CotuneModel.forward`.

    Batch: ``input_ids``/``attention_mask``/``labels`` [B, T] (right padded; labels -100 on padding),
    ``media`` {encoder name: [items, ...]} in batch order, ``features`` {encoder name: [items, n,
    D_enc]} for cached encoders, ``sample_ids`` and ``datasets`` [B],
    ``num_supervised`` (tokens with a label, for token-normalised loss), and ``skipped``: a list of
    (dataset, sample id, reason, detail) for items whose media failed to decode (dropped here).
    """

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, items: list[dict]) -> dict:
        skipped = [(it["dataset"], it["id"], *it["skip"]) for it in items if "skip" in it]
        items = [it for it in items if "skip" not in it]
        width = max((len(it["input_ids"]) for it in items), default=0)
        input_ids = torch.full((len(items), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(items), width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(items), width), dtype=torch.long)
        media: dict[str, list[torch.Tensor]] = {}
        features: dict[str, list[torch.Tensor]] = {}
        for row, item in enumerate(items):
            n = len(item["input_ids"])
            input_ids[row, :n] = item["input_ids"]
            labels[row, :n] = item["labels"]
            attention_mask[row, :n] = 1
            for name, tensors in item["media"].items():
                media.setdefault(name, []).extend(tensors)
            for name, tensors in item.get("features", {}).items():
                features.setdefault(name, []).extend(tensors)
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "media": {name: torch.stack(tensors) for name, tensors in media.items()},
            "features": {name: torch.stack(tensors) for name, tensors in features.items()},
            "sample_ids": [it["id"] for it in items],
            "datasets": [it["dataset"] for it in items],
            "num_supervised": int((labels[:, 1:] != IGNORE_INDEX).sum()),
            "skipped": skipped,
        }
