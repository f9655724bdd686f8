"""Validation during training: token-normalised loss per eval dataset (task metrics come from
``cotune.eval`` once that lands)."""

from __future__ import annotations

import torch

from cotune.data.collate import Collator, model_inputs
from cotune.data.dataset import prepare_dataset


@torch.no_grad()
def evaluate_loss(trainer) -> dict[str, float]:
    """``eval/<dataset>/loss`` and ``eval/loss`` over ``data.eval`` (each process a strided share)."""
    if not hasattr(trainer, "_eval_sets"):
        trainer._eval_sets = [prepare_dataset(c, trainer.spec, trainer.data.report, trainer.config.data.max_skip_fraction) for c in trainer.config.data.eval]
    model, device = trainer.model, trainer.accelerator.device
    model.eval()
    results, total_loss, total_tokens = {}, 0.0, 0.0
    for dataset in trainer._eval_sets:
        indices = list(range(trainer.rank, len(dataset), trainer.world))
        loader = torch.utils.data.DataLoader(
            torch.utils.data.Subset(dataset, indices), batch_size=trainer.config.data.batch_size,
            collate_fn=Collator(trainer.spec.pad_id), generator=torch.Generator(),
        )
        loss_sum, tokens = 0.0, 0
        for batch in loader:
            if not batch["sample_ids"]:
                continue
            with trainer.autocast():
                out = model(**model_inputs(batch, device), supervised_logits=True)
            loss_sum += float(out.loss_sum)
            tokens += int(out.num_tokens)
        loss_sum, tokens = trainer._reduce(loss_sum), trainer._reduce(tokens)
        results[f"eval/{dataset.name}/loss"] = loss_sum / max(tokens, 1.0)
        total_loss, total_tokens = total_loss + loss_sum, total_tokens + tokens
    results["eval/loss"] = total_loss / max(total_tokens, 1.0)
    return results
