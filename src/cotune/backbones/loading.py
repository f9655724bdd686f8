"""``from_pretrained`` with the checks a long run needs.

transformers happily returns a model whose weights were *not* in the checkpoint (it initialises
them randomly and prints a report). For frozen backbones that is a silent disaster, so every load
here asks for the loading info and fails when any weight is missing.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import torch

log = logging.getLogger(__name__)

TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class LoadError(RuntimeError):
    """A backbone could not be loaded, or loaded with missing weights."""


def _hub_kwargs(revision: str | None, trust_remote_code: bool) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if revision is not None:
        kwargs["revision"] = revision
    return kwargs


def load_config_only(config_class, name_or_path: str, *, revision: str | None = None, trust_remote_code: bool = False, **kwargs):
    """The backbone's config (reads only ``config.json``; works from a config-only hub cache)."""
    try:
        return config_class.from_pretrained(name_or_path, **_hub_kwargs(revision, trust_remote_code), **kwargs)
    except (OSError, ValueError) as err:
        raise LoadError(f"cannot read the config of {name_or_path!r}: {err}") from None


def load_pretrained(
    model_class,
    name_or_path: str,
    *,
    dtype: str = "float32",
    revision: str | None = None,
    trust_remote_code: bool = False,
    allow_missing: tuple[str, ...] = (),
    **kwargs,
):
    """``model_class.from_pretrained`` that raises :class:`LoadError` if any weight was missing.

    ``allow_missing``: exact key names that may legitimately be absent (e.g. tied weights).
    """
    try:
        model, info = model_class.from_pretrained(
            name_or_path,
            dtype=TORCH_DTYPES[dtype],
            output_loading_info=True,
            **_hub_kwargs(revision, trust_remote_code),
            **kwargs,
        )
    except (OSError, ValueError) as err:
        raise LoadError(f"cannot load {model_class.__name__} from {name_or_path!r}: {err}") from None
    missing = [k for k in info.get("missing_keys", []) if k not in allow_missing]
    if missing:
        shown = ", ".join(sorted(missing)[:8])
        raise LoadError(
            f"{name_or_path!r} does not hold the weights {model_class.__name__} needs "
            f"({len(missing)} missing, e.g. {shown}); refusing to use randomly initialised backbone weights"
        )
    return model


@contextlib.contextmanager
def meta_device():
    """Context in which modules are created on the meta device (shapes only, no memory)."""
    with torch.device("meta"):
        yield
