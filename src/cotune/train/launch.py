"""What the launcher and ``--device`` asked for, checked against the run before anything is built.

``accelerate launch`` passes its config to the processes as environment variables:
``ACCELERATE_MIXED_PRECISION``, ``ACCELERATE_USE_FSDP`` with the ``FSDP_*`` settings, and
``ACCELERATE_USE_DEEPSPEED``. The trainer reads them here, so that a setting it would not honour
stops the run with one clear line instead of being silently ignored (before this check, a bf16
accelerate config trained in float32 and a DeepSpeed config trained without ZeRO).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from cotune.config import ConfigError, CotuneConfig
from cotune.config.model import is_quantized

DEVICES = ("auto", "cpu", "cuda")

#: accelerate's mixed_precision -> train.precision ("no" is accelerate's default: no statement).
_ACCELERATE_PRECISION = {"bf16": "bf16", "fp16": "fp16", "fp8": None}

DEEPSPEED_REFUSAL = (
    "DeepSpeed configs are not supported by cotune's trainer: its loop does its own backward, per-group "
    "gradient norms, clipping, non-finite-step skipping and optimizer step, which a DeepSpeed engine "
    "would have to own under ZeRO; shard with configs/accelerate/fsdp.yaml (FSDP) or replicate with ddp.yaml"
)


class LaunchError(ConfigError):
    """The launch (accelerate config, ``--device``) does not fit this run or this machine."""


def _flag(environ: Mapping[str, str], name: str) -> bool:
    return environ.get(name, "false").strip().lower() in ("1", "true", "yes")


@dataclass(frozen=True)
class LaunchSettings:
    """The accelerate config the processes were launched with (defaults: not launched by accelerate).

    ``mixed_precision``: accelerate's value (``no``, ``bf16``, ``fp16``, ``fp8``); ``fsdp`` /
    ``deepspeed``: which sharding the config asked for; ``fsdp_sync_module_states``: its
    ``fsdp_sync_module_states``, which accelerate refuses on CPU."""

    mixed_precision: str = "no"
    fsdp: bool = False
    deepspeed: bool = False
    fsdp_sync_module_states: bool = False

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> "LaunchSettings":
        environ = os.environ if environ is None else environ
        return cls(
            mixed_precision=environ.get("ACCELERATE_MIXED_PRECISION", "no").strip().lower(),
            fsdp=_flag(environ, "ACCELERATE_USE_FSDP"),
            deepspeed=_flag(environ, "ACCELERATE_USE_DEEPSPEED"),
            fsdp_sync_module_states=_flag(environ, "FSDP_SYNC_MODULE_STATES"),
        )


def use_cuda(device: str) -> bool:
    """Whether to train on CUDA for ``--device`` ``auto`` (CUDA when torch sees a GPU), ``cpu`` or
    ``cuda``; ``cuda`` without a visible GPU is an error rather than a silent run on the CPU."""
    if device not in DEVICES:
        raise LaunchError(f"--device: {device!r} is not one of {', '.join(DEVICES)}")
    available = torch.cuda.is_available()
    if device == "cuda" and not available:
        why = "this torch build has no CUDA support" if torch.version.cuda is None else "torch sees no GPU (check CUDA_VISIBLE_DEVICES and the driver)"
        raise LaunchError(f"--device cuda: no CUDA device is available ({why}, torch {torch.__version__}); use --device cpu to train on the CPU")
    return available if device == "auto" else device == "cuda"


def check_precision(launch: LaunchSettings, precision: str) -> None:
    """accelerate's ``mixed_precision`` and ``train.precision`` must agree: cotune does its own
    autocast from ``train.precision``, so a differing accelerate value would be ignored."""
    if launch.mixed_precision == "no" or _ACCELERATE_PRECISION.get(launch.mixed_precision) == precision:
        return
    wanted = _ACCELERATE_PRECISION.get(launch.mixed_precision)
    fix = f"--set train.precision={wanted}, or " if wanted else ""
    accelerate_value = "no" if precision == "fp32" else precision
    raise LaunchError(
        f"the accelerate config's mixed_precision is {launch.mixed_precision} but train.precision is {precision}; "
        f"cotune autocasts by train.precision, so make them agree: {fix}mixed_precision: {accelerate_value} in the "
        f"accelerate config (or accelerate launch --mixed_precision {accelerate_value})"
    )


def check_launch(launch: LaunchSettings, config: CotuneConfig, cuda: bool) -> None:
    """Refuses, in one line each, what the launch asks for and the trainer would not do."""
    if launch.deepspeed:
        raise LaunchError(DEEPSPEED_REFUSAL)
    check_precision(launch, config.train.precision)
    if not launch.fsdp:
        return
    if launch.fsdp_sync_module_states and not cuda:
        raise LaunchError(
            "fsdp_sync_module_states: true is refused by accelerate on CPU; set it false (every process builds "
            "the same weights from the same files and seed, so there is nothing to broadcast)"
        )
    if is_quantized(config.model):
        raise LaunchError("FSDP cannot shard 4- or 8-bit (bitsandbytes) backbones; train a quantized model on one process or with DDP")
    if config.data.feature_cache is not None:
        raise LaunchError(
            "data.feature_cache is not supported under FSDP: a process reading cached features skips the encoder "
            "that another process runs, and FSDP needs every process to gather the same shards; drop the cache or use DDP"
        )
    if config.balance.method != "constant":
        raise LaunchError(
            f"balance.method {config.balance.method} is not supported under FSDP (its estimates swap whole "
            "parameters, which FSDP holds as shards); use DDP (configs/accelerate/ddp.yaml or --nproc)"
        )
