"""Validation during training: token-normalised loss per eval dataset (task metrics: :mod:`cotune.eval`)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable

import torch

from cotune.config.data import DataConfig
from cotune.data.collate import Collator
from cotune.data.dataset import prepare_dataset
from cotune.data.report import DataReport
from cotune.data.spec import DataSpec
from cotune.model.inputs import model_inputs


class Evaluator:
    """``eval/<dataset>/loss`` and ``eval/loss`` over ``data.eval``, each process a strided share.

    ``model``: the model whose mode is switched to eval (and back to train after); ``forward``: what
    is called for a batch (the FSDP-wrapped model when sharded; default ``model``); ``reduce(x)``
    sums a float over processes; ``autocast()``: the training precision's context. The eval sets are
    read on first use, their skips counted in ``report``.

    Under FSDP every forward gathers shards with all processes, so each process runs the same number
    of forwards: one whose share is shorter repeats its first batch and drops the result."""

    def __init__(self, model, spec: DataSpec, data: DataConfig, report: DataReport, reduce: Callable[[float], float] = float, *,
                 autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext, device=None,
                 rank: int = 0, world: int = 1, sharded: bool = False, forward=None) -> None:
        self.model, self.spec, self.data, self.report, self.reduce = model, spec, data, report, reduce
        self.autocast, self.device, self.rank, self.world, self.sharded = autocast, device, rank, world, sharded
        self.forward = forward or model
        self._datasets = None

    @property
    def datasets(self) -> list:
        if self._datasets is None:
            self._datasets = [prepare_dataset(c, self.spec, self.report, self.data.max_skip_fraction) for c in self.data.eval]
        return self._datasets

    @torch.no_grad()
    def __call__(self) -> dict[str, float]:
        was_training = self.model.training
        self.model.eval()
        try:
            results, total_loss, total_tokens = {}, 0.0, 0.0
            for dataset in self.datasets:
                loss_sum, tokens = self._dataset_loss(dataset)
                results[f"eval/{dataset.name}/loss"] = loss_sum / max(tokens, 1.0)
                total_loss, total_tokens = total_loss + loss_sum, total_tokens + tokens
            results["eval/loss"] = total_loss / max(total_tokens, 1.0)
            return results
        finally:
            self.model.train(was_training)

    def _dataset_loss(self, dataset) -> tuple[float, float]:
        """(summed loss, supervised tokens) over all processes."""
        size = self.data.batch_size
        indices = list(range(self.rank, len(dataset), self.world))
        loader = torch.utils.data.DataLoader(
            torch.utils.data.Subset(dataset, indices or [0]), batch_size=size,
            collate_fn=Collator(self.spec.pad_id), generator=torch.Generator(),
        )
        # The longest share (process 0's) in batches: ceil(ceil(n / world) / batch size).
        forwards = math.ceil(math.ceil(len(dataset) / self.world) / size) if self.sharded else 0
        loss_sum, tokens, runs, first = 0.0, 0, 0, None
        for batch in loader:
            if not batch["sample_ids"] or not indices:
                continue
            first = first or batch
            with self.autocast():
                out = self.forward(**model_inputs(batch, self.device), supervised_logits=True, touch_all=self.sharded)
            loss_sum += float(out.loss_sum)
            tokens += int(out.num_tokens)
            runs += 1
        while runs < forwards:
            filler = first or next(b for b in loader if b["sample_ids"])
            with self.autocast():
                self.forward(**model_inputs(filler, self.device), supervised_logits=True, touch_all=True)
            runs += 1
        return self.reduce(loss_sum), self.reduce(tokens)
