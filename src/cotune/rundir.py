"""The run directory: where everything a training run writes lives, and loading its model.

A run directory ``RUN/`` (``cotune train --out RUN``)::

    RUN/config.yaml            the full resolved config the run trains with
    RUN/metrics.jsonl          one JSON record per logged step (and per evaluation)
    RUN/data_report.json       what the readers kept and skipped, per dataset
    RUN/tensorboard/           TensorBoard events, when asked for
    RUN/checkpoints/step-00000120/   trainable weights, optimizer, state, RNG (cotune.train.checkpoint)
    RUN/model/                 the final model: a saved model directory (cotune.model.io)
    RUN/model/peft/<component>/      LoRA components as PEFT adapter folders
    RUN/README.md              the model card
    RUN/<any folder>/metrics.json    evaluations saved inside the run (cotune eval --out RUN/eval-x)
    RUN/.lock                  held by the process training into RUN

A *saved model directory* (``RUN/model/``, or any directory :func:`cotune.model.save_model` wrote)
holds ``config.yaml``, ``trainable.safetensors`` and ``manifest.json``; a *merged model directory*
(``cotune merge``, :mod:`cotune.merge.io`) has a ``merged`` record in its manifest. :class:`RunDir`
takes any of the three and answers where each thing is and what model it holds; every command
and the public API (:func:`cotune.load`) go through it.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

from safetensors.torch import load_file

from cotune.config import CotuneConfig, load_config
from cotune.config.model import dequantized, is_quantized
from cotune.merge import MergeError, MergeSummary, load_merged, merge_model, merged_record
from cotune.model.build import build_model
from cotune.model.fused import CotuneModel
from cotune.model.io import CONFIG, MANIFEST, WEIGHTS
from cotune.zoo.sources import resolve_sources

METRICS = "metrics.jsonl"
DATA_REPORT = "data_report.json"
TENSORBOARD = "tensorboard"
CHECKPOINTS = "checkpoints"
MODEL = "model"
PEFT = "peft"
CARD = "README.md"
LOCK = ".lock"
EVAL_METRICS = "metrics.json"
#: What a run that never saved a checkpoint leaves behind (a new run may start over it).
UNSTARTED = frozenset({CONFIG, METRICS, DATA_REPORT, LOCK, CHECKPOINTS, TENSORBOARD})
_CHECKPOINT = re.compile(r"^step-(\d{8})$")


class RunDir:
    """The layout of one run directory (or saved or merged model directory) at ``path``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # -- where things are -------------------------------------------------------------------
    @property
    def config_file(self) -> Path:
        return self.path / CONFIG

    @property
    def metrics_file(self) -> Path:
        return self.path / METRICS

    @property
    def data_report_file(self) -> Path:
        return self.path / DATA_REPORT

    @property
    def tensorboard_dir(self) -> Path:
        return self.path / TENSORBOARD

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def model_dir(self) -> Path:
        """``RUN/model``: the final model of a finished run."""
        return self.path / MODEL

    @property
    def peft_dir(self) -> Path:
        """``RUN/model/peft``: one PEFT adapter folder per LoRA component."""
        return self.model_dir / PEFT

    @property
    def card_file(self) -> Path:
        return self.path / CARD

    @property
    def lock_file(self) -> Path:
        return self.path / LOCK

    def checkpoint_dir(self, step: int) -> Path:
        return self.checkpoints_dir / f"step-{step:08d}"

    def rng_staging_dir(self, step: int) -> Path:
        """Where every process saves its RNG state before checkpoint ``step`` is assembled."""
        return self.checkpoints_dir / f".rng-{step:08d}"

    def checkpoints(self) -> list[Path]:
        """Complete checkpoints, oldest first (temporary folders are ignored)."""
        if not self.checkpoints_dir.is_dir():
            return []
        return sorted(p for p in self.checkpoints_dir.iterdir() if p.is_dir() and _CHECKPOINT.match(p.name))

    def evaluations(self) -> list[Path]:
        """The ``metrics.json`` files of evaluations saved inside the run, in path order."""
        return sorted(self.path.glob(f"**/{EVAL_METRICS}"))

    def is_unstarted(self) -> bool:
        """Whether the directory holds only what a run that never saved a checkpoint leaves."""
        entries = list(self.path.iterdir()) if self.path.is_dir() else []
        return all(e.name in UNSTARTED for e in entries) and not self.checkpoints()

    def is_finished(self) -> bool:
        """Whether the run wrote its final model."""
        return (self.model_dir / MANIFEST).is_file()

    # -- what it holds ----------------------------------------------------------------------
    def merged_record(self) -> dict | None:
        """The ``merged`` record of this directory's manifest, or None when it holds no merged model."""
        return merged_record(self.path)

    def saved_model_dir(self) -> Path | None:
        """The saved (or merged) model directory whose weights :meth:`load` reads: this directory
        when it is one, else ``model/``; None for a run that has only checkpoints."""
        if self.merged_record() is not None:
            return self.path
        for directory in (self.model_dir, self.path):
            if (directory / WEIGHTS).is_file() or (directory / MANIFEST).is_file():
                return directory
        return None

    def config(self) -> CotuneConfig:
        """The config of the model this directory holds (a finished run's ``model/``, else the run's
        own), read without loading weights; FileNotFoundError naming what is missing otherwise."""
        if not self.path.is_dir():
            raise FileNotFoundError(f"RUN_DIR {self.path}: no such directory")
        for directory in (self.model_dir, self.path):  # a finished run's model/, a saved or merged model directory
            if (directory / CONFIG).is_file() and ((directory / WEIGHTS).is_file() or (directory / MANIFEST).is_file()):
                return load_config(directory / CONFIG)
        if self.config_file.is_file() and any(self.checkpoints_dir.glob(f"step-*/{WEIGHTS}")):
            return load_config(self.config_file)
        raise FileNotFoundError(f"{self.path} holds neither a saved model ({CONFIG} + {WEIGHTS}) nor a run with checkpoints")

    def load(self, device=None, *, dequantize: bool = False) -> tuple[CotuneModel, CotuneConfig]:
        """(model, its config): a merged directory's merged model (config with resolved paths), a
        saved model (a finished run's ``model/``), else the model of the run's latest checkpoint.
        ``dequantize``: backbones configured in 4 or 8 bits are loaded in their own dtype instead
        (the trained weights are the same); the config returned is then the dequantized one."""
        directory = self.saved_model_dir()
        if directory is not None and RunDir(directory).merged_record() is not None:
            return load_merged(directory, device)
        if directory is not None:
            return _build_and_fill(directory / CONFIG, directory / WEIGHTS, device, dequantize)
        checkpoints = self.checkpoints()
        if checkpoints and self.config_file.is_file():
            return _build_and_fill(self.config_file, checkpoints[-1] / WEIGHTS, device, dequantize)
        raise FileNotFoundError(f"{self.path} holds neither a saved model ({WEIGHTS}) nor a run with checkpoints")

    def refuse_merged(self, action: str = "be trained or resumed") -> None:
        """Raises :class:`~cotune.merge.MergeError` when this directory holds a merged model (for
        commands that need the unmerged adapters, e.g. ``cotune train --resume``)."""
        info = self.merged_record()
        if info is not None:
            raise MergeError(
                f"{self.path} holds a merged model (LoRA/adapters folded into the weights by cotune merge, "
                f"source config {info.get('source_config_hash', '?')}); it cannot {action}: use the original run directory"
            )


def checkpoint_step(directory: Path) -> int:
    """The step of a checkpoint folder of :meth:`RunDir.checkpoints`."""
    return int(_CHECKPOINT.match(Path(directory).name).group(1))


def _build_and_fill(config_file: Path, weights: Path, device, dequantize: bool) -> tuple[CotuneModel, CotuneConfig]:
    for path in (config_file, weights):
        if not path.is_file():
            raise FileNotFoundError(f"{path.parent} is not a saved cotune model: {path.name} is missing")
    config = load_config(config_file)
    if dequantize:
        config = replace(config, model=dequantized(config.model))
    model = build_model(config, device=device, sources=resolve_sources(config.model))
    model.load_trainable_state_dict(load_file(weights))
    return model, config


def load(path: str | Path, device=None, *, dequantize: bool = False) -> CotuneModel:
    """The model of a run directory, a saved model directory or a merged model directory
    (:meth:`RunDir.load`)."""
    return RunDir(path).load(device, dequantize=dequantize)[0]


def merge_run(source: str | Path, out: str | Path, device=None, *, dequantize: bool = False) -> MergeSummary:
    """Merges the model of a run directory (or saved model directory) ``source`` into ``out``.

    A run with 4- or 8-bit backbones is refused unless ``dequantize``: its trained weights are then
    merged into the backbones loaded in their own dtype (QLoRA's convention), and the merge check
    compares against that dequantized model, not the quantized one it was trained with."""
    run = RunDir(source)
    for candidate in (run, RunDir(run.model_dir)):
        if candidate.merged_record() is not None:
            raise MergeError(f"{candidate.path} is already a merged model")
    configs = [p for p in (run.model_dir / CONFIG, run.config_file) if p.is_file()]
    if not configs:
        raise FileNotFoundError(f"{run.path} holds no {CONFIG}: not a cotune run or saved model directory")
    config = load_config(configs[0])
    if is_quantized(config.model):
        if not dequantize:
            raise MergeError(
                f"{run.path}: its backbones are configured in 4 or 8 bits, and adapters cannot be folded into "
                "quantized weights; pass --dequantize to merge into full-precision backbones"
            )
        config = replace(config, model=dequantized(config.model))
    model = load(source, device, dequantize=dequantize)
    return merge_model(model, out, config).merge_summary
