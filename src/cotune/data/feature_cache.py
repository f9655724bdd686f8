"""Disk cache of frozen-encoder features, keyed by file content and encoder configuration.

An encoder with no trainable parameter (frozen, no trained adapter) maps a file to the same
selected features [n, D_enc] every epoch, so they are computed once and read back instead of
decoding and encoding the file again. Keys: a hash of everything that shapes the features (encoder
type, checkpoint, revision, dtype, layers, reduction, preprocessing) names the cache folder; the
SHA-256 of the file's bytes names the entry, so renamed or copied files hit and edited files miss.
Entries are written atomically (temporary file, rename); there is no in-memory cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from cotune.config import DataConfig, EncoderConfig, to_dict
from cotune.data.schema import SkipSample
from cotune.fileio import atomic_write

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


def file_digest(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def encoder_cache_key(encoder_config: EncoderConfig, data: DataConfig) -> str:
    """Hash of the settings that determine an encoder's selected features for a file."""
    settings = to_dict(encoder_config)
    for irrelevant in ("trainable", "adapter", "connector", "placeholder"):
        settings.pop(irrelevant)
    settings.update(image_transform=data.image_transform, audio_seconds=data.audio_seconds, format=FORMAT_VERSION)
    canonical = json.dumps(settings, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


class FeatureCache:
    """Features of one encoder configuration under ``root/<key>/``; one safetensors file per input file."""

    def __init__(self, root: str | Path, key: str) -> None:
        self.folder = Path(root) / key

    def entry(self, digest: str) -> Path:
        return self.folder / digest[:2] / f"{digest}.safetensors"

    def get(self, path: str | Path, sample_id: str) -> torch.Tensor:
        """Cached features [n, D_enc] of ``path``; SkipSample if the file was never cached."""
        try:
            entry = self.entry(file_digest(path))
        except OSError as err:
            raise SkipSample("missing_media", f"{sample_id}: {path}: {err}") from None
        if not entry.is_file():
            raise SkipSample("unreadable_media", f"{sample_id}: {path} has no cached features (it failed to encode)")
        return load_file(entry)["features"]

    def put(self, digest: str, features: torch.Tensor) -> None:
        tensors = {"features": features.detach().to("cpu").contiguous()}
        # No fsync per entry: a lost entry is only recomputed, and thousands of fsyncs would dominate.
        atomic_write(self.entry(digest), lambda tmp: save_file(tensors, tmp), fsync=False)

    def __contains__(self, digest: str) -> bool:
        return self.entry(digest).is_file()


def cacheable_encoders(model) -> list[str]:
    """Encoders whose features cannot change during training (no parameter requires grad)."""
    return [name for name, enc in model.encoders.items() if not any(p.requires_grad for p in enc.parameters())]


@torch.no_grad()
def fill_feature_cache(model, spec, datasets, data: DataConfig, root: str | Path, batch_size: int = 16) -> dict[str, FeatureCache]:
    """Computes and stores the features of every media file of ``datasets`` for each cacheable
    encoder that lacks them. Files that fail to decode are left out (they are skipped, with their
    reason, when a sample needs them). Returns the caches by encoder name."""
    caches = {}
    was_training = model.training
    model.eval()
    try:
        for name in cacheable_encoders(model):
            cache = FeatureCache(root, encoder_cache_key(model.config.encoders[name], data))
            encoder_input = next(e for e in spec.encoders if e.name == name)
            todo: dict[str, Path] = {}
            for dataset in datasets:
                for media in dataset.media:
                    for path in media.get(encoder_input.kind, ()):
                        digest = file_digest(path)
                        if digest not in cache and digest not in todo:
                            todo[digest] = Path(path)
            _encode_missing(model, name, encoder_input.preprocess, cache, todo, batch_size)
            caches[name] = cache
    finally:
        model.train(was_training)
    return caches


def _encode_missing(model, name, preprocess, cache: FeatureCache, todo: dict[str, Path], batch_size: int) -> None:
    encoder, selector = model.encoders[name], model.selectors[name]
    items = list(todo.items())
    failed = 0
    for start in range(0, len(items), batch_size):
        digests, tensors = [], []
        for digest, path in items[start : start + batch_size]:
            try:
                tensors.append(preprocess(path, path.name))
                digests.append(digest)
            except SkipSample:
                failed += 1
        if tensors:
            features = selector(encoder.hidden_states(torch.stack(tensors)))
            for digest, item in zip(digests, features.float()):
                cache.put(digest, item)
    log.info("feature cache %s: %d files encoded, %d failed to decode", name, len(items) - failed, failed)
