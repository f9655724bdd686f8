"""Prepared datasets: text tokenized once up front into compact arrays, media decoded lazily.

Preparation runs the reader, renders every sample with the template and keeps the ids in flat
numpy arrays (no per-sample Python lists of tokens: host memory stays flat for large corpora).
``__getitem__`` decodes and preprocesses the sample's media (in DataLoader workers); a file that
fails to decode then is not an exception but an item marked ``skip`` that the collator drops and
the trainer counts.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from cotune.config import DataConfig, DatasetConfig
from cotune.data.readers import read_dataset
from cotune.data.report import DatasetReport, DataReport
from cotune.data.schema import DataError, Sample, SkipSample
from cotune.data.spec import DataSpec
from cotune.data.templates import IGNORE_INDEX, encode_sample

log = logging.getLogger(__name__)


class PreparedDataset(torch.utils.data.Dataset):
    """One dataset's kept samples. Item: ``{"id", "dataset", "input_ids" [T], "labels" [T],
    "media": {encoder name: [input tensor per item]}, "features": {encoder name: [features
    [n, D_enc] per item]}}`` (features for encoders read from a feature cache), or
    ``{"id", "dataset", "skip": (reason, detail)}``."""

    def __init__(self, name: str, samples: list[Sample], token_ids: list[list[int]], labels: list[list[int]], spec: DataSpec) -> None:
        self.name = name
        self.spec = spec
        self.lengths = np.array([len(t) for t in token_ids], dtype=np.int32)
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths, dtype=np.int64)])
        self.token_ids = np.fromiter((t for ids in token_ids for t in ids), dtype=np.int32, count=int(self.offsets[-1]))
        self.supervised = np.fromiter((x != IGNORE_INDEX for row in labels for x in row), dtype=bool, count=int(self.offsets[-1]))
        self.sample_ids = [s.id for s in samples]
        self.media = [{k: tuple(str(p) for p in v) for k, v in s.media.items() if v} for s in samples]
        self.metadata = [s.metadata for s in samples]
        self._encoders_by_kind: dict[str, list] = {}
        for encoder in spec.encoders:
            self._encoders_by_kind.setdefault(encoder.kind, []).append(encoder)
        self.feature_caches: dict = {}  # encoder name -> FeatureCache, set by the loader

    def __len__(self) -> int:
        return len(self.sample_ids)

    def tokens(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids [T], labels [T]) of sample ``index`` as int64 tensors."""
        start, stop = self.offsets[index], self.offsets[index + 1]
        ids = torch.from_numpy(self.token_ids[start:stop].astype(np.int64))
        labels = ids.masked_fill(~torch.from_numpy(self.supervised[start:stop]), IGNORE_INDEX)
        return ids, labels

    def __getitem__(self, index: int) -> dict:
        sample_id = self.sample_ids[index]
        item = {"id": sample_id, "dataset": self.name}
        media: dict[str, list[torch.Tensor]] = {}
        features: dict[str, list[torch.Tensor]] = {}
        try:
            for kind, paths in self.media[index].items():
                for path in paths:
                    for encoder in self._encoders_by_kind[kind]:
                        cache = self.feature_caches.get(encoder.name)
                        if cache is not None:
                            features.setdefault(encoder.name, []).append(cache.get(path, sample_id))
                        else:
                            media.setdefault(encoder.name, []).append(encoder.preprocess(Path(path), sample_id))
        except SkipSample as skip:
            item["skip"] = (skip.reason, skip.detail)
            return item
        item["input_ids"], item["labels"] = self.tokens(index)
        item["media"], item["features"] = media, features
        return item


def check_skip_fraction(report: DatasetReport, max_fraction: float) -> None:
    """Raises DataError when nothing is left or more than ``max_fraction`` of the records were skipped."""
    skipped = report.total - report.kept
    if report.total == 0:
        raise DataError(f"dataset {report.name}: no records found")
    if report.kept == 0 or skipped / report.total > max_fraction:
        reason, count = report.skipped.most_common(1)[0]
        example = report.examples.get(reason, ["?"])[0]
        raise DataError(
            f"dataset {report.name}: {skipped} of {report.total} records unusable ({100 * skipped / report.total:.1f}% > "
            f"{100 * max_fraction:g}% allowed by data.max_skip_fraction); by reason {dict(report.skipped)}; "
            f"e.g. {reason} ({count}x): {example}"
        )


def prepare_dataset(config: DatasetConfig, spec: DataSpec, report: DataReport, max_skip_fraction: float = 0.01) -> PreparedDataset:
    """Reads and renders one dataset; bad records are skipped and counted in ``report``."""
    ds_report = report.dataset(config.name)
    slots = spec.slots()
    samples, token_ids, labels = [], [], []
    for sample in read_dataset(config, ds_report):
        try:
            encoded = encode_sample(sample, spec.tokenizer, slots, spec.template, spec.system_prompt, spec.max_length)
        except SkipSample as skip:
            ds_report.skip(skip.reason, skip.detail)
            continue
        except RecursionError:
            ds_report.skip("malformed_record", f"{sample.id}: the template failed on it (nested too deeply)")
            continue
        except Exception as err:  # noqa: BLE001 - tokenizers and templates raise many types on odd text
            ds_report.skip("malformed_record", f"{sample.id}: the template or tokenizer failed on it ({type(err).__name__}: {err})")
            continue
        samples.append(sample)
        token_ids.append(encoded.input_ids)
        labels.append(encoded.labels)
    ds_report.kept = len(samples)
    check_skip_fraction(ds_report, max_skip_fraction)
    log.info("prepared %s: %d of %d records kept", config.name, ds_report.kept, ds_report.total)
    return PreparedDataset(config.name, samples, token_ids, labels, spec)


def prepare_datasets(configs: tuple[DatasetConfig, ...], spec: DataSpec, data: DataConfig, report: DataReport) -> list[PreparedDataset]:
    return [prepare_dataset(c, spec, report, data.max_skip_fraction) for c in configs]
