"""Which copy of a backbone a config's ``name_or_path`` means: a local path, the hub, or the zoo.

A config naming a hub id that the zoo also carries (e.g. ``HuggingFaceTB/SmolLM2-135M-Instruct``)
uses the hub when it can: the hub's copy is in the local Hugging Face cache, or the hub answers.
When it cannot (``HF_HUB_OFFLINE=1``, no network) and the zoo copy was fetched, the zoo copy is
used and the log says so. Names that exist only in the zoo (``torchvision/mobilenet_v2``) always
use it. Local paths and names the zoo does not know are returned unchanged.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from cotune.config.model import ModelConfig
from cotune.zoo.entries import ZOO
from cotune.zoo.fetch import fetched_path

log = logging.getLogger(__name__)

HUB_PROBE_TIMEOUT_S = 3.0


def hub_reachable(timeout: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """One quick request to the hub endpoint (no retries); False in offline mode."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
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


def _in_hub_cache(repo_id: str, revision: str | None) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, "config.json", revision=revision), str)


def resolve_path(name_or_path: str, revision: str | None = None, *, key: str = "", cache=None, probe=hub_reachable) -> str:
    """The path to load for ``name_or_path`` (module docstring); ``key`` names it in the log."""
    if Path(name_or_path).expanduser().exists() or name_or_path not in ZOO:
        return name_or_path
    entry = ZOO.get(name_or_path)
    if entry.on_hub and (_in_hub_cache(name_or_path, revision) or probe()):
        return name_or_path
    zoo_copy = fetched_path(name_or_path, cache)
    if zoo_copy is None:
        from cotune.backbones.loading import LoadError

        where = "the hub cannot be reached and " if entry.on_hub else ""
        raise LoadError(f"{key or name_or_path}: {where}{name_or_path!r} is not in the zoo cache; run: cotune zoo fetch {name_or_path}")
    log.info("%s: using the zoo copy of %s at %s", key or "backbone", name_or_path, zoo_copy)
    return str(zoo_copy)


def resolve_sources(config: ModelConfig, cache=None, probe=hub_reachable) -> ModelConfig:
    """``config`` with every backbone ``name_or_path`` resolved by :func:`resolve_path`.

    The hub is probed at most once per call, and only when a zoo-known hub id is not cached.
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
