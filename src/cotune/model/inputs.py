"""From a collated batch (:class:`cotune.data.collate.Collator`) to the model's forward arguments."""

from __future__ import annotations


def model_inputs(batch: dict, device, labels: bool = True) -> dict:
    """Keyword arguments of :meth:`CotuneModel.forward` for a collated ``batch`` (token tensors on
    ``device``; media and features are moved by the model to their encoder's device)."""
    inputs = {
        "input_ids": batch["input_ids"].to(device),
        "attention_mask": batch["attention_mask"].to(device),
        "media": batch["media"],
        "features": batch.get("features"),
        "sample_ids": batch.get("sample_ids"),
    }
    if labels:
        inputs["labels"] = batch["labels"].to(device)
    return inputs
