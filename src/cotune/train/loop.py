"""The training loop: token-normalised accumulation, per-group schedules, faults, checkpoints, resume.

One optimizer step gathers ``grad_accum`` micro-batches, counts their supervised tokens over all
processes and back-propagates sum(loss) / tokens, so any split into micro-batches and processes
gives the gradient of one big batch. Processes are driven by accelerate (DDP on GPUs or gloo on
CPU); every process runs every module each step (``touch_all``). Under an FSDP launch the model is
sharded by :mod:`cotune.train.sharding`, which also gathers checkpoints (trainable weights only).
"""

from __future__ import annotations

import contextlib
import logging
import math
import resource
import shutil
import signal
import time
from dataclasses import replace
from pathlib import Path

import torch

from cotune.balance import make_balance
from cotune.config import CotuneConfig, config_hash, save_config, to_dict
from cotune.config.paths import absolute_paths
from cotune.data.dataset import check_skip_fraction
from cotune.data.loader import TrainData, build_train_data
from cotune.data.report import DataReport
from cotune.data.schema import DataError
from cotune.data.templates import IGNORE_INDEX
from cotune.export.run_outputs import write_run_outputs
from cotune.model import build_model, save_model
from cotune.model.build import check_component_names
from cotune.model.data_spec import data_spec_from_model
from cotune.model.inputs import model_inputs
from cotune.rundir import RunDir
from cotune.train.evaluate import Evaluator
from cotune.train.groups import optimizer_groups
from cotune.train.launch import LaunchSettings, check_launch, use_cuda
from cotune.train.lock import lock_run
from cotune.train.metrics import MetricsLog, Progress, truncate_metrics
from cotune.train.resume import read_latest, restore, save_checkpoint
from cotune.train.sharding import make_sharding
from cotune.train.state import TrainerState
from cotune.train.step import OptimizerStep, make_optimizer
from cotune.zoo.sources import resolve_sources

log = logging.getLogger(__name__)
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. too many non-finite steps); a checkpoint was saved first."""


class Interrupted(RuntimeError):
    """SIGINT/SIGTERM arrived; a checkpoint was saved. ``signal_number`` says which."""

    def __init__(self, signal_number: int, checkpoint: Path) -> None:
        super().__init__(f"stopped by signal {signal_number}; checkpoint saved at {checkpoint}")
        self.signal_number = signal_number


class Trainer:
    """Runs ``config`` in ``run_dir`` (``resume``: continue from its latest checkpoint). The
    config's local paths are made absolute first (:mod:`cotune.config.paths`), so the run's saved
    config works from any directory.

    ``callbacks``: objects with any of ``on_train_begin(trainer)`` and ``on_step_end(trainer,
    record)``, called on every process; ``record`` is the step's metrics (already written). Time
    spent in callbacks, validation and checkpointing is left out of the next step's
    ``step_seconds`` (wall time of one step: data loading, forward, backward, optimizer, kappa
    estimate), so a benchmark can evaluate between steps without stopping a clock of its own.

    ``device``: ``auto`` (CUDA when available), ``cpu`` or ``cuda`` (an error without a GPU). The
    launch's accelerate settings (mixed precision, FSDP, DeepSpeed) are checked against the config
    before anything is built (:func:`cotune.train.launch.check_launch`)."""

    def __init__(self, config: CotuneConfig, run_dir: str | Path, resume: bool = False, accelerator=None, callbacks=(),
                 device: str = "auto") -> None:
        from accelerate import Accelerator

        # The run's config.yaml must work from any directory (--resume, data check, eval).
        config = absolute_paths(config)
        check_component_names(config)  # a misspelt encoder or reader fails before anything loads
        self.config, self.run_dir, self.resume = config, Path(run_dir), resume
        self.rundir = RunDir(run_dir)  # where each file of the run goes
        self.callbacks = list(callbacks)
        launch = LaunchSettings.from_environment()
        cuda = use_cuda(device)
        check_launch(launch, config, cuda)
        # accelerate drives the processes only; autocast and loss scaling are ours, so Trainers with
        # different precisions can run in one process (accelerate's precision state is global).
        self.accelerator = accelerator or Accelerator(mixed_precision="no", cpu=not cuda)
        precision = config.train.precision
        if precision == "fp16" and not cuda:
            log.warning("train.precision fp16 needs CUDA; training in float32 on the CPU")
            precision = "fp32"
        # bf16 autocast also runs on CPUs (about 2x the float32 GEMM rate where AVX-512 BF16 exists).
        self.autocast_dtype = AUTOCAST_DTYPES.get(precision)
        self.scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
        self.world, self.rank = self.accelerator.num_processes, self.accelerator.process_index
        self.main = self.accelerator.is_main_process
        self.sharding = make_sharding(self.accelerator, launch.fsdp)
        self.state = TrainerState(config_hash=config_hash(config), world_size=self.world)
        self._stop_signal: int | None = None

    def autocast(self):
        """The training/eval autocast context for ``train.precision`` (a no-op for fp32)."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.accelerator.device.type, dtype=self.autocast_dtype)

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        self._prepare_run_dir()
        try:
            self._setup()
        except BaseException:
            self.close()
            raise

    def _setup(self) -> None:
        config, train = self.config, self.config.train
        torch.manual_seed(config.seed)  # identical adapter initialisation in every process
        self.model = build_model(config, device=self.accelerator.device, sources=resolve_sources(config.model))
        if train.gradient_checkpointing:
            self.model.enable_gradient_checkpointing()
        self.parameter_counts = self.model.parameter_counts()  # whole tensors: FSDP leaves shards
        checkpoint = read_latest(self.run_dir, self.rank) if self.resume else None
        if checkpoint is not None:  # into the whole model, before any sharding
            self.model.load_trainable_state_dict(checkpoint[0])
        spec = data_spec_from_model(self.model, config.data)
        self.data: TrainData = build_train_data(config.data, spec, config.seed, DataReport(), self.model, self.world, self.rank)
        self.spec = spec
        # Micro-batches per epoch (a last partial batch counts), then whole optimizer steps of them;
        # leftover micro-batches at an epoch's end are not used (the epoch order starts anew).
        micro_batches = -(-self.data.sampler.global_length() // (config.data.batch_size * self.world))
        self.steps_per_epoch = max(1, micro_batches // train.grad_accum)
        self.total_steps = train.max_steps or math.ceil(train.epochs * self.steps_per_epoch)
        param_groups, self.settings = optimizer_groups(self.model, train, self.steps_per_epoch)
        self.optimizer = make_optimizer(param_groups, train)
        self.ddp_model, self.optimizer = self.sharding.wrap(self.model, self.optimizer)
        warmup_end = max((s.start_step + s.warmup for s in self.settings.values()), default=0)
        balance = config.balance
        if self.sharding.sharded and balance.estimator != "none":
            # The estimate swaps whole parameters in and out; FSDP holds them as shards.
            log.info("balance: kappa is not estimated under FSDP")
            balance = replace(balance, estimator="none")
        self.balance = make_balance(balance, self.model, self.optimizer, warmup_end, self._reduce, train.precision)
        device = self.accelerator.device
        self.update = OptimizerStep(
            self.model, self.optimizer, self.settings, self.balance, train.max_grad_norm, self.total_steps, self.scaler,
            (lambda t: self.accelerator.reduce(t.to(device), reduction="sum").cpu()) if self.sharding.sharded else None,
        )
        self.evaluator = Evaluator(
            self.model, spec, config.data, self.data.report, self._reduce, autocast=self.autocast, device=device, rank=self.rank,
            world=self.world, sharded=self.sharding.sharded, forward=self.ddp_model if self.sharding.sharded else self.model,
        )
        if checkpoint is not None:
            restore(self, checkpoint)
        else:
            torch.manual_seed(config.seed + 1 + self.rank)  # dropout masks differ per process
        if self.resume and self.main:
            truncate_metrics(self.rundir.metrics_file, self.state.step)
        self.metrics = MetricsLog(self.run_dir, train.report_to, to_dict(config), append=self.resume, enabled=self.main)
        self._log_parameters()

    def _prepare_run_dir(self) -> None:
        """Locks the run directory (one trainer per run) and writes the config. A fresh start goes
        into a new or empty directory, or one a failed start left without a checkpoint."""
        if self.main:
            if not self.resume and self.run_dir.exists() and any(self.run_dir.iterdir()):
                if not self.rundir.is_unstarted():
                    raise FileExistsError(f"{self.run_dir} is not empty; use --resume {self.run_dir} or another --out")
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._lock = lock_run(self.rundir)
            if not self.resume and any(e.name != self.rundir.lock_file.name for e in self.run_dir.iterdir()):
                log.info("%s: a start that saved no checkpoint left files here; starting afresh", self.run_dir)
                shutil.rmtree(self.rundir.checkpoints_dir, ignore_errors=True)
            save_config(self.config, self.rundir.config_file)
        self.accelerator.wait_for_everyone()

    def close(self) -> None:
        """Releases the run directory's lock (``run`` does it when it returns or fails)."""
        handle, self._lock = getattr(self, "_lock", None), None
        if handle is not None:
            handle.close()

    def _log_parameters(self) -> None:
        if not self.main:
            return
        counts = self.parameter_counts
        for name, c in counts.items():
            log.info("%-22s total %14s  trainable %11s", name, f"{c['total']:,}", f"{c['trainable']:,}")
        trainable = sum(c["trainable"] for c in counts.values())
        log.info("training %s parameters for %d steps (%d per epoch) on %d process(es)", f"{trainable:,}", self.total_steps, self.steps_per_epoch, self.world)

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self) -> Path:
        """Writes a checkpoint of the current step (every process takes part); returns its folder."""
        return save_checkpoint(self)

    # ------------------------------------------------------------------ one step
    def _batches(self):
        """Micro-batches of the current epoch from the saved position on (each process its slice)."""
        sampler, per_step = self.data.sampler, self.config.data.batch_size * self.world * self.config.train.grad_accum
        sampler.set_epoch(self.state.epoch)
        sampler.set_position(self.state.epoch_step * per_step)
        return iter(self.data.loader)

    def _reduce(self, value: float) -> float:
        if self.world == 1:
            return float(value)
        tensor = torch.tensor([float(value)], device=self.accelerator.device, dtype=torch.float64)
        return float(self.accelerator.reduce(tensor, reduction="sum")[0])

    def _forward_backward(self, batches: list[dict]) -> tuple[float, int, int]:
        """Back-propagates the step's token-normalised loss; returns (mean loss, tokens, samples)."""
        tokens = self._reduce(sum(b["num_supervised"] for b in batches))
        loss_sum, seen, samples = 0.0, 0, 0
        model = self.ddp_model
        for index, batch in enumerate(batches):
            # FSDP reduce-scatters every micro-batch (no_sync would hold whole unsharded gradients).
            sync = index == len(batches) - 1 or self.world == 1 or self.sharding.sharded
            context = contextlib.nullcontext() if sync else self.accelerator.no_sync(model)
            with context, self.autocast(), self.balance.forward_context():
                out = model(**model_inputs(batch, self.accelerator.device), touch_all=self.world > 1,
                            supervised_logits=not batch.get("stand_in"))
                loss = out.loss_sum * (self.world / max(tokens, 1.0))
                fraction = batch["num_supervised"] / max(tokens / self.world, 1.0)
                self.balance.after_forward(self.state.step, batch, out, loss, fraction, last=index == len(batches) - 1)
            (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
            loss_sum += float(out.loss_sum.detach())
            seen += 0 if batch.get("stand_in") else int(batch["attention_mask"].sum())
            samples += len(batch["sample_ids"])
        # The main gradients carry fp16's loss scale until unscale_; the regulariser's must too.
        loss_scale = float(self.scaler.get_scale()) if self.scaler is not None else 1.0
        self.balance.after_backward(self.world, lambda t: self.accelerator.reduce(t, reduction="sum"), loss_scale)
        return self._reduce(loss_sum) / max(tokens, 1.0), int(self._reduce(seen)), int(self._reduce(samples))

    def _check_decode_skips(self) -> None:
        """Media that fail to decode while loading count against ``data.max_skip_fraction`` as the
        reader's skips do: past it (on any process) a checkpoint is saved and the run stops."""
        problem = None
        for report in self.data.report.datasets.values():
            if report.dropped_at_load:
                try:
                    check_skip_fraction(report, self.config.data.max_skip_fraction)
                except DataError as err:
                    problem = err
                    break
        over = self._reduce(1.0 if problem else 0.0) if self.world > 1 else float(problem is not None)
        if over:
            path = self.save_checkpoint()
            what = str(problem) if problem else "a dataset of another process is past data.max_skip_fraction"
            raise DataError(f"{what} (counting media that failed to decode while loading); checkpoint saved at {path}: "
                            f"fix the data or raise data.max_skip_fraction, then cotune train --resume {self.run_dir}")

    def _stand_in(self, batch: dict) -> dict:
        """A one-token batch with nothing supervised, for a process whose micro-batch lost every item
        (media that failed to decode): its peers' collectives still need its forward and backward."""
        pad = torch.full((1, 1), self.spec.pad_id, dtype=torch.long)
        return {**batch, "input_ids": pad, "attention_mask": torch.ones_like(pad), "labels": torch.full_like(pad, IGNORE_INDEX),
                "media": {}, "features": {}, "sample_ids": [], "datasets": [], "num_supervised": 0, "stand_in": True}

    def _empty_step(self) -> dict:
        """The record of a step none of whose items decoded: no update, counted as skipped."""
        log.warning("step %d: every item of its batches failed to decode; skipped", self.state.step + 1)
        return {"step": self.state.step + 1, "epoch": self.state.epoch, "skipped": 1, "empty": 1, "tokens_per_s": 0.0,
                "samples": self.state.samples_seen, "bad_steps": self.state.bad_steps, **self._memory()}

    def _step(self, batches: list[dict]) -> dict:
        started = time.perf_counter()
        for batch in batches:
            self.data.report.record_batch(batch)
        self._check_decode_skips()
        # A micro-batch whose items all failed to decode has no rows: one process skips it, several
        # run a stand-in (their collectives must match). A step with no sample anywhere is skipped.
        if self.world == 1:
            batches = [b for b in batches if b["sample_ids"]]
        else:
            batches = [b if b["sample_ids"] else self._stand_in(b) for b in batches]
        if not batches:
            return self._empty_step()
        loss, seen, samples = self._forward_backward(batches)
        if samples == 0:  # every process's items failed to decode: no update from momentum alone
            self.optimizer.zero_grad(set_to_none=True)
            return self._empty_step()
        update = self.update(self.state.step, loss, batches[-1])
        record = {"step": self.state.step + 1, "epoch": self.state.epoch, "loss": loss, **update.record}
        if update.applied:
            self.state.consecutive_bad = 0
        else:
            self.state.bad_steps += 1
            self.state.consecutive_bad += 1
            record["skipped"] = 1
        record.update({f"grad_norm/{k}": v for k, v in update.norms.items()})
        elapsed = time.perf_counter() - started
        self.state.samples_seen += samples
        self.state.tokens_seen += seen
        record.update(tokens_per_s=seen / elapsed, samples=self.state.samples_seen, bad_steps=self.state.bad_steps, **self._memory())
        return record

    def _memory(self) -> dict:
        if self.accelerator.device.type == "cuda":
            return {"memory/peak_gb": torch.cuda.max_memory_allocated() / 2**30}
        return {"memory/peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}

    # ------------------------------------------------------------------ run
    def _on_signal(self, number, _frame) -> None:
        self._stop_signal = number

    def _stop_requested(self) -> int | None:
        flag = self._reduce(self._stop_signal or 0) if self.world > 1 else (self._stop_signal or 0)
        return int(flag) or None

    def run(self) -> Path:
        """Trains to the configured length; returns the final model directory (RUN/model)."""
        if not hasattr(self, "model"):
            self.setup()
        if self.finished:
            # A warning, so that it shows at every log level but error: the command did nothing.
            log.warning("%s is finished: it trained all %d steps and saved its model in %s; nothing to resume (raise "
                        "train.max_steps or train.epochs with --set to train longer)", self.run_dir, self.total_steps,
                        self.rundir.model_dir)
            self.metrics.close()
            self.close()
            return self.rundir.model_dir
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        progress = Progress(self.total_steps, self.state.step, self.config.train.log_every, self.main)
        try:
            self._train(progress)
            return self._finish()
        finally:
            progress.close()
            for number, handler in previous.items():
                signal.signal(number, handler)
            self.metrics.close()
            self.close()

    @property
    def finished(self) -> bool:
        """Whether a resumed run had already reached its length and saved its model."""
        return bool(self.resume and self.state.step >= self.total_steps and self.rundir.is_finished())

    def _train(self, progress: Progress) -> None:
        accum = self.config.train.grad_accum
        self.model.train()
        self._notify("on_train_begin", self)
        self._step_started = time.perf_counter()
        while self.state.step < self.total_steps:
            batches_iter, pending = self._batches(), []
            for batch in batches_iter:
                pending.append(batch)
                if len(pending) < accum:
                    continue
                record = self._step(pending)
                pending = []
                self.state.step += 1
                self.state.epoch_step += 1
                self._after_step(record, progress)
                if self.state.step >= self.total_steps:
                    return
            self.state.epoch += 1
            self.state.epoch_step = 0

    def _notify(self, event: str, *args) -> None:
        for callback in self.callbacks:
            handler = getattr(callback, event, None)
            if handler is not None:
                handler(*args)

    def _after_step(self, record: dict, progress: Progress) -> None:
        train, step = self.config.train, self.state.step
        record["step_seconds"] = time.perf_counter() - self._step_started
        if train.eval_every and step % train.eval_every == 0 and self.config.data.eval:
            record.update(self.evaluator())
        if self.main:
            self.metrics.write(record)
        progress.update(step, record)
        if self.state.consecutive_bad >= train.max_bad_steps:
            path = self.save_checkpoint()
            raise TrainingError(f"{self.state.consecutive_bad} consecutive steps had a non-finite loss or gradient; checkpoint saved at {path}")
        stop = self._stop_requested()
        if stop is not None:
            raise Interrupted(stop, self.save_checkpoint())
        if step % train.checkpoint_every == 0 and step < self.total_steps:
            self.save_checkpoint()
        self._notify("on_step_end", self, record)
        self._step_started = time.perf_counter()

    def _finish(self) -> Path:
        latest = self.rundir.checkpoints()
        if not latest or latest[-1] != self.rundir.checkpoint_dir(self.state.step):
            self.save_checkpoint()
        final = self.rundir.model_dir
        if self.config.data.eval and not self.config.train.eval_every:
            record = {"step": self.state.step, **self.evaluator()}
            if self.main:
                self.metrics.write(record)
        trainable = self.sharding.trainable_state(self.model, self.ddp_model) if self.sharding.sharded else None
        if self.main:
            save_model(self.model, self.config, final, trainable=trainable, counts=self.parameter_counts)
            self.data.report.write(self.rundir.data_report_file)
            self.data.report.log_summary()
            write_run_outputs(self.model, self.config, self.run_dir, trainable)  # PEFT folders, README.md
        self.accelerator.wait_for_everyone()
        return final


def train(config: CotuneConfig, run_dir: str | Path, resume: bool = False, device: str = "auto") -> Path:
    """Trains ``config`` into ``run_dir`` on ``device`` (auto, cpu, cuda); returns the final model directory."""
    return Trainer(config, run_dir, resume, device=device).run()
