"""Validation during training: token-normalised loss per eval dataset (task metrics come from
``cotune.eval`` once that lands)."""

from __future__ import annotations

import math

import torch

from cotune.data.collate import Collator, model_inputs
from cotune.data.dataset import prepare_dataset


@torch.no_grad()
def evaluate_loss(trainer) -> dict[str, float]:
    """``eval/<dataset>/loss`` and ``eval/loss`` over ``data.eval`` (each process a strided share).

    Under FSDP every forward gathers shards with all processes, so each process runs the same
    number of forwards: one whose share is shorter repeats its first batch and drops the result."""
    if not hasattr(trainer, "_eval_sets"):
        trainer._eval_sets = [prepare_dataset(c, trainer.spec, trainer.data.report, trainer.config.data.max_skip_fraction) for c in trainer.config.data.eval]
    sharded, device = trainer.sharding.sharded, trainer.accelerator.device
    model = trainer.ddp_model if sharded else trainer.model
    trainer.model.eval()
    results, total_loss, total_tokens = {}, 0.0, 0.0
    size = trainer.config.data.batch_size
    for dataset in trainer._eval_sets:
        indices = list(range(trainer.rank, len(dataset), trainer.world))
        loader = torch.utils.data.DataLoader(
            torch.utils.data.Subset(dataset, indices or [0]), batch_size=size,
            collate_fn=Collator(trainer.spec.pad_id), generator=torch.Generator(),
        )
        # The longest share (process 0's) in batches: ceil(ceil(n / world) / batch size).
        forwards = math.ceil(math.ceil(len(dataset) / trainer.world) / size) if sharded else 0
        loss_sum, tokens, runs, first = 0.0, 0, 0, None
        for batch in loader:
            if not batch["sample_ids"] or not indices:
                continue
            first = first or batch
            with trainer.autocast():
                out = model(**model_inputs(batch, device), supervised_logits=True, touch_all=sharded)
            loss_sum += float(out.loss_sum)
            tokens += int(out.num_tokens)
            runs += 1
        while runs < forwards:
            filler = first or next(b for b in loader if b["sample_ids"])
            with trainer.autocast():
                model(**model_inputs(filler, device), supervised_logits=True, touch_all=True)
            runs += 1
        loss_sum, tokens = trainer._reduce(loss_sum), trainer._reduce(tokens)
        results[f"eval/{dataset.name}/loss"] = loss_sum / max(tokens, 1.0)
        total_loss, total_tokens = total_loss + loss_sum, total_tokens + tokens
    results["eval/loss"] = total_loss / max(total_tokens, 1.0)
    return results
