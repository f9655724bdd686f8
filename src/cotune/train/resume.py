"""A Trainer's checkpoints: gathering and writing one, and restoring a run from the latest.

Trainable weights and optimizer state are gathered by the trainer's sharding strategy (whole
tensors, parameters numbered as ``optimizer.state_dict()`` does), so a checkpoint written by an
FSDP run loads into a replicated one and the other way round, on any number of processes.
"""

from __future__ import annotations

import logging
from pathlib import Path

from cotune.config import config_hash
from cotune.train.checkpoint import checkpoint_dir, list_checkpoints, read_checkpoint, save_rng, set_rng_state, write_checkpoint
from cotune.train.state import TrainerState

log = logging.getLogger(__name__)


def save_checkpoint(trainer) -> Path:
    """Checkpoint of ``trainer``'s current step; every process calls it (gathering is collective
    under FSDP and each process saves its own RNG state), the main process writes."""
    step = trainer.state.step
    trainable = trainer.sharding.trainable_state(trainer.model, trainer.ddp_model)
    optimizer_state = trainer.sharding.optimizer_state(trainer.ddp_model, trainer.optimizer)
    staging = trainer.run_dir / "checkpoints" / f".rng-{step:08d}"
    if trainer.main:
        staging.mkdir(parents=True, exist_ok=True)
    trainer.accelerator.wait_for_everyone()
    save_rng(staging, trainer.rank)
    trainer.accelerator.wait_for_everyone()
    path = checkpoint_dir(trainer.run_dir, step)
    if trainer.main:
        state = trainer.state
        state.dropped = {n: sorted(map(list, r.dropped_at_load.items())) for n, r in trainer.data.report.datasets.items() if r.dropped_at_load}
        state.extra["sampler"] = trainer.data.sampler.state_dict()
        state.extra["balance"] = trainer.balance.state_dict()
        if trainer.scaler is not None:
            state.extra["scaler"] = trainer.scaler.state_dict()
        path = write_checkpoint(trainer.run_dir, step, trainable, optimizer_state, state.as_dict(), staging,
                                trainer.config.train.keep_checkpoints)
        staging.rmdir()
        log.info("checkpoint %s", path)
    trainer.accelerator.wait_for_everyone()
    return path


def read_latest(run_dir: Path, rank: int) -> tuple:
    """(trainable weights, optimizer state, trainer state, process ``rank``'s RNG state or None,
    folder) of the run's latest checkpoint."""
    checkpoints = list_checkpoints(run_dir)
    if not checkpoints:
        raise FileNotFoundError(f"{run_dir}: no checkpoint to resume from")
    return (*read_checkpoint(checkpoints[-1], rank), checkpoints[-1])


def restore(trainer, checkpoint: tuple) -> None:
    """Everything of a :func:`read_latest` checkpoint but the trainable weights, which the trainer
    loads into the whole model before sharding it."""
    _trainable, optimizer_state, state, rng, path = checkpoint
    trainer.sharding.load_optimizer_state(trainer.ddp_model, trainer.optimizer, optimizer_state)
    trainer.state = TrainerState.from_dict(state)
    if trainer.state.config_hash != config_hash(trainer.config):
        log.warning("resuming with a config that differs from the checkpoint's (hash %s != %s)", config_hash(trainer.config), trainer.state.config_hash)
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
    log.info("resumed from %s at step %d", path, trainer.state.step)
