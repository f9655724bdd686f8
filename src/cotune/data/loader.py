"""Putting it together: prepared datasets -> mixture -> seeded sampler -> DataLoader."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cotune.config import DataConfig
from cotune.data.collate import Collator
from cotune.data.dataset import PreparedDataset, prepare_datasets
from cotune.data.report import DataReport
from cotune.data.sampler import MixtureDataset, MixtureSampler
from cotune.data.spec import DataSpec


@dataclass
class TrainData:
    """The training loader with the pieces the trainer needs for resuming and reporting."""

    loader: torch.utils.data.DataLoader
    sampler: MixtureSampler
    mixture: MixtureDataset
    report: DataReport


def make_loader(
    datasets: list[PreparedDataset], weights: list[float], data: DataConfig, spec: DataSpec, seed: int, report: DataReport,
    num_replicas: int = 1, rank: int = 0,
) -> TrainData:
    mixture = MixtureDataset(datasets)
    sampler = MixtureSampler(mixture, weights, seed, data.epoch_size, data.batch_size, data.group_by_length, num_replicas, rank)
    loader = torch.utils.data.DataLoader(
        mixture,
        batch_size=data.batch_size,
        sampler=sampler,
        collate_fn=Collator(spec.pad_id),
        num_workers=data.num_workers,
        persistent_workers=False,
        pin_memory=torch.cuda.is_available(),
        # Its own generator: creating an iterator must not consume the global RNG (dropout masks),
        # or a resumed run, which creates its iterator mid-epoch, would diverge.
        generator=torch.Generator().manual_seed(seed),
    )
    return TrainData(loader, sampler, mixture, report)


def build_train_data(
    data: DataConfig, spec: DataSpec, seed: int, report: DataReport | None = None, model=None, num_replicas: int = 1, rank: int = 0,
) -> TrainData:
    """Prepares ``data.train`` and returns its loader (skips counted in the returned report).

    With ``data.feature_cache`` and a ``model``, features of encoders without trainable parameters
    are computed once into the cache (missing entries only) and read from it while loading.
    """
    if not data.train:
        from cotune.config import ConfigError

        raise ConfigError("data.train: no training datasets configured")
    report = report or DataReport()
    datasets = prepare_datasets(data.train, spec, data, report)
    if data.feature_cache is not None and model is not None:
        from cotune.data.feature_cache import fill_feature_cache

        caches = fill_feature_cache(model, spec, datasets, data, data.feature_cache)
        for dataset in datasets:
            dataset.feature_caches = caches
    return make_loader(datasets, [d.weight for d in data.train], data, spec, seed, report, num_replicas, rank)
