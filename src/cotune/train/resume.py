"""A Trainer's checkpoints: gathering and writing one, and restoring a run from the latest.

Trainable weights and optimizer state are gathered by the trainer's sharding strategy (whole
tensors, parameters numbered as ``optimizer.state_dict()`` does), so a checkpoint written by an
FSDP run loads into a replicated one and the other way round, on any number of processes.

A resume starts from the newest *intact* checkpoint: each is checked against its manifest (sizes
and sha256 of every file, the RNG state of every process that wrote one), newest first; a damaged
one is passed over with a warning that names it and what is wrong, and the log says which
checkpoint the run resumes from and why. When none is intact, the newest one whose only fault is a
missing RNG state is resumed from, with a warning that the run is no longer exact; otherwise the
resume stops with the problems of each. Whatever makes the continuation inexact (no RNG state for
a process, another process count or config) is said in a warning; it never happens silently.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from cotune.config import config_hash
from cotune.rundir import RunDir
from cotune.train.checkpoint import (
    CheckpointError,
    has_manifest,
    read_checkpoint,
    save_rng,
    set_rng_state,
    verify_checkpoint,
    write_checkpoint,
    write_failure,
)
from cotune.train.state import TrainerState

log = logging.getLogger(__name__)


def save_checkpoint(trainer) -> Path:
    """Checkpoint of ``trainer``'s current step; every process calls it (gathering is collective
    under FSDP and each process saves its own RNG state), the main process writes."""
    step = trainer.state.step
    trainable = trainer.sharding.trainable_state(trainer.model, trainer.ddp_model)
    optimizer_state = trainer.sharding.optimizer_state(trainer.ddp_model, trainer.optimizer)
    run = RunDir(trainer.run_dir)
    staging = run.rng_staging_dir(step)
    if trainer.main:
        staging.mkdir(parents=True, exist_ok=True)
    trainer.accelerator.wait_for_everyone()
    try:
        save_rng(staging, trainer.rank)
    except Exception as err:  # noqa: BLE001 - a full disk: say so, like write_checkpoint
        shutil.rmtree(staging, ignore_errors=True)  # what a retry of this step would write into
        raise write_failure(err, trainer.run_dir, step) from err
    trainer.accelerator.wait_for_everyone()
    path = run.checkpoint_dir(step)
    if trainer.main:
        state = trainer.state
        state.dropped = {n: sorted(map(list, r.dropped_at_load.items())) for n, r in trainer.data.report.datasets.items() if r.dropped_at_load}
        state.extra["sampler"] = trainer.data.sampler.state_dict()
        state.extra["balance"] = trainer.balance.state_dict()
        if trainer.scaler is not None:
            state.extra["scaler"] = trainer.scaler.state_dict()
        try:
            path = write_checkpoint(trainer.run_dir, step, trainable, optimizer_state, state.as_dict(), staging,
                                    trainer.config.train.keep_checkpoints)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        log.info("checkpoint %s", path)
    trainer.accelerator.wait_for_everyone()
    return path


def read_latest(run_dir: Path, rank: int) -> tuple:
    """(trainable weights, optimizer state, trainer state, process ``rank``'s RNG state or None,
    folder) of the run's newest intact checkpoint (module docstring)."""
    checkpoints = RunDir(run_dir).checkpoints()
    if not checkpoints:
        raise FileNotFoundError(f"{run_dir}: no checkpoint to resume from")
    passed: list[str] = []
    for path in reversed(checkpoints):
        loaded, problems = _load(path, rank, rng=True)
        if problems:
            log.warning("checkpoint %s is damaged, not resuming from it: %s", path, "; ".join(problems))
            passed.append(f"{path.name}: {'; '.join(problems)}")
            continue
        why = "the newest checkpoint" if not passed else f"the newest intact checkpoint; passed over {', '.join(p.split(':')[0] for p in passed)}"
        if not has_manifest(path):
            log.warning("checkpoint %s has no manifest (written before checksums): its files are not verified", path)
        log.info("resuming from %s (%s)", path, why)
        return (*loaded, path)
    # None is whole. One that lacks only RNG states still holds every weight and moment: resuming
    # from it beats no resume at all, but the run is no longer exact, and the log says so.
    for path in reversed(checkpoints):
        loaded, problems = _load(path, rank, rng=False)
        if not problems:
            log.warning("resuming from %s without the RNG state(s) its manifest lists (no checkpoint is intact): dropout "
                        "and sampling draw other numbers than the uninterrupted run would; the run continues, NOT exactly", path)
            return (*loaded, path)
    raise CheckpointError(f"{run_dir}: no intact checkpoint to resume from: {' | '.join(passed)}")


def _load(path: Path, rank: int, rng: bool) -> tuple[tuple | None, list[str]]:
    """(read_checkpoint's tuple or None, problems): verify_checkpoint's, or a load failure of
    files that match their manifest."""
    problems = verify_checkpoint(path, rank, rng=rng)
    if problems:
        return None, problems
    try:
        return read_checkpoint(path, rank), []
    except Exception as err:  # noqa: BLE001 - a file that matches no manifest may not load
        return None, [f"does not load ({type(err).__name__}: {' '.join(str(err).split())[:200]})"]


def restore(trainer, checkpoint: tuple) -> None:
    """Everything of a :func:`read_latest` checkpoint but the trainable weights, which the trainer
    loads into the whole model before sharding it."""
    _trainable, optimizer_state, state, rng, path = checkpoint
    trainer.sharding.load_optimizer_state(trainer.ddp_model, trainer.optimizer, optimizer_state)
    trainer.state = TrainerState.from_dict(state)
    if trainer.state.config_hash != config_hash(trainer.config):
        log.warning("resuming with a config that differs from the checkpoint's (hash %s != %s)", config_hash(trainer.config), trainer.state.config_hash)
    written_by = trainer.state.world_size
    if trainer.state.world_size != trainer.world:
        log.warning("resuming on %d processes, the checkpoint was written by %d", trainer.world, trainer.state.world_size)
    # The checkpoints this run writes from now on are this run's.
    trainer.state.config_hash, trainer.state.world_size = config_hash(trainer.config), trainer.world
    for name, dropped in trainer.state.dropped.items():
        report = trainer.data.report.dataset(name)
        for sample_id, reason in dropped:
            report.skip_at_load(sample_id, reason, f"{sample_id}: dropped while loading before the resume")
    if "balance" in trainer.state.extra:
        trainer.balance.load_state_dict(trainer.state.extra["balance"])
    if trainer.scaler is not None and "scaler" in trainer.state.extra:
        trainer.scaler.load_state_dict(trainer.state.extra["scaler"])
    if rng is not None:
        set_rng_state(rng)
    else:
        log.warning("process %d: the checkpoint holds no RNG state for it (written by %d process(es)): dropout and "
                    "sampling draw other numbers than an uninterrupted run would; the run continues, not exactly",
                    trainer.rank, written_by)
    log.info("resumed from %s at step %d", path, trainer.state.step)
