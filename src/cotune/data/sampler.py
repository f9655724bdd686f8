"""Deterministic, resumable ordering of a mixture of datasets.

The order of epoch e is a pure function of (seed, e, sizes, weights, lengths): nothing depends on
how far a previous run got, so a resumed run sees exactly the remaining order. The sampler does
not advance itself while iterating (DataLoader prefetching would make that wrong): the trainer
knows how many samples it consumed and sets the position with :meth:`set_position`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch

from cotune.data.dataset import PreparedDataset

MEGABATCH_FACTOR = 32


class MixtureDataset(torch.utils.data.Dataset):
    """Several prepared datasets behind one global index (dataset after dataset)."""

    def __init__(self, datasets: Sequence[PreparedDataset]) -> None:
        if not datasets:
            raise ValueError("a mixture needs at least one dataset")
        self.datasets = list(datasets)
        self.offsets = np.cumsum([0] + [len(d) for d in self.datasets])
        self.lengths = np.concatenate([d.lengths for d in self.datasets])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def locate(self, index: int) -> tuple[int, int]:
        """(dataset number, index inside it) of global ``index``."""
        which = int(np.searchsorted(self.offsets, index, side="right") - 1)
        return which, int(index - self.offsets[which])

    def __getitem__(self, index: int) -> dict:
        which, local = self.locate(index)
        return self.datasets[which][local]


class MixtureSampler(torch.utils.data.Sampler[int]):
    """Global indices of one epoch at a time, mixing datasets by weight, optionally length-grouped.

    Epoch composition: a weight is a per-sample rate, so dataset i's natural share is
    size_i * w_i (all weights 1: every sample once per epoch, as LaVIN trains; weight 2: each
    sample of that dataset twice). E = ``epoch_size`` or the sum of the shares; dataset i
    contributes round(E * share_i / sum(shares)) samples (fresh permutations, repeated whole when it
    needs more than one pass). All are shuffled together, so text-only and multimodal samples
    share batches.
    ``group_by_length`` sorts each window of ``batch_size * 32`` by length (descending) so batches
    waste little padding while the window order stays random.
    """

    def __init__(
        self,
        mixture: MixtureDataset,
        weights: Sequence[float],
        seed: int,
        epoch_size: int | None = None,
        batch_size: int = 1,
        group_by_length: bool = False,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        if len(weights) != len(mixture.datasets):
            raise ValueError(f"{len(weights)} weights for {len(mixture.datasets)} datasets")
        self.mixture = mixture
        shares = np.asarray([len(d) for d in mixture.datasets], dtype=np.float64) * np.asarray(weights, dtype=np.float64)
        total = epoch_size or int(round(shares.sum()))
        self.counts = np.round(total * shares / shares.sum()).astype(np.int64)
        self.seed, self.batch_size, self.group_by_length = seed, batch_size, group_by_length
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not in [0, {num_replicas})")
        self.num_replicas, self.rank = num_replicas, rank
        self.epoch, self.position = 0, 0

    def epoch_order(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, epoch])
        parts = []
        for which, count in enumerate(self.counts):
            size = len(self.mixture.datasets[which])
            passes = [rng.permutation(size) for _ in range(-(-int(count) // size))]
            parts.append(np.concatenate(passes)[:count] + self.mixture.offsets[which])
        order = rng.permutation(np.concatenate(parts))
        if self.group_by_length:
            window = self.batch_size * MEGABATCH_FACTOR
            lengths = self.mixture.lengths
            order = np.concatenate([
                chunk[np.argsort(-lengths[chunk], kind="stable")] for chunk in np.array_split(order, max(1, -(-len(order) // window)))
            ])
        return order

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.position = epoch, 0

    def set_position(self, position: int) -> None:
        """Start the current epoch at global sample ``position`` (consumed by all processes)."""
        self.position = position

    def global_order(self, epoch: int) -> np.ndarray:
        """The epoch's order over all processes; with several, padded (from its start) to whole
        global batches so every process runs the same number of steps (no collective hangs)."""
        order = self.epoch_order(epoch)
        stride = self.batch_size * self.num_replicas
        if self.num_replicas > 1 and len(order) % stride:
            order = np.concatenate([order, order[: stride - len(order) % stride]])
        return order

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        if state.get("seed", self.seed) != self.seed:
            raise ValueError(f"sampler state was saved with seed {state['seed']}, this run uses {self.seed}")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])

    def global_length(self) -> int:
        """Samples per epoch over all processes (after padding)."""
        stride = self.batch_size * self.num_replicas
        total = int(self.counts.sum())
        return -(-total // stride) * stride if self.num_replicas > 1 else total

    def __len__(self) -> int:
        return max(0, self.global_length() - self.position) // self.num_replicas

    def __iter__(self) -> Iterator[int]:
        remaining = self.global_order(self.epoch)[self.position:]
        if self.num_replicas == 1:
            return iter(remaining.tolist())
        # Global batch k holds batch_size samples per process; this process takes its slice.
        b = self.batch_size
        batches = remaining.reshape(-1, self.num_replicas, b)[:, self.rank]
        return iter(batches.reshape(-1).tolist())
