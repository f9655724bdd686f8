"""Where training metrics go: ``metrics.jsonl`` always, TensorBoard and W&B on request, a progress line."""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

from cotune.fileio import atomic_write_text
from cotune.rundir import RunDir

log = logging.getLogger(__name__)


def truncate_metrics(path: Path, last_step: int) -> None:
    """Drops records after ``last_step`` (steps a killed run logged after its last checkpoint),
    so a resumed run's metrics.jsonl has each step once."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= last_step:
                kept.append(line)
        except json.JSONDecodeError:  # a line cut by the kill
            continue
    atomic_write_text(path, "".join(f"{line}\n" for line in kept))


class JsonlSink:
    """One JSON object per line, flushed per record (a killed run keeps every finished step)."""

    def __init__(self, path: Path, append: bool) -> None:
        self.handle = open(path, "a" if append else "w")

    def write(self, record: dict) -> None:
        self.handle.write(json.dumps(record) + "\n")
        self.handle.flush()

    def close(self) -> None:
        self.handle.close()


class TensorBoardSink:
    def __init__(self, directory: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:
            from cotune.extras import missing

            raise missing("train.report_to: tensorboard", "tensorboard", "tensorboard") from err
        self.writer = SummaryWriter(str(directory))

    def write(self, record: dict) -> None:
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)):
                self.writer.add_scalar(key, value, record["step"])

    def close(self) -> None:
        self.writer.close()


class WandbSink:
    def __init__(self, run_dir: Path, config: dict) -> None:
        try:
            import wandb
        except ImportError as err:
            from cotune.extras import missing

            raise missing("train.report_to: wandb", "wandb", "wandb") from err
        self.run = wandb.init(dir=str(run_dir), config=config, name=run_dir.name, resume="allow")

    def write(self, record: dict) -> None:
        self.run.log({k: v for k, v in record.items() if k != "step"}, step=record["step"])

    def close(self) -> None:
        self.run.finish()


class MetricsLog:
    """Fans records out to the sinks; only the main process writes."""

    def __init__(self, run_dir: Path, report_to: tuple[str, ...], config: dict, append: bool, enabled: bool) -> None:
        self.sinks = []
        if enabled:
            run = RunDir(run_dir)
            self.sinks.append(JsonlSink(run.metrics_file, append))
            if "tensorboard" in report_to:
                self.sinks.append(TensorBoardSink(run.tensorboard_dir))
            if "wandb" in report_to:
                self.sinks.append(WandbSink(run_dir, config))

    def write(self, record: dict) -> None:
        for sink in self.sinks:
            sink.write(record)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()


class Progress:
    """A tqdm bar on a terminal; plain log lines every ``every`` steps otherwise."""

    def __init__(self, total: int, start: int, every: int, enabled: bool) -> None:
        self.total, self.every, self.enabled = total, every, enabled
        self.started, self.start_step = time.monotonic(), start
        self.bar = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True)

    def update(self, step: int, record: dict) -> None:
        if not self.enabled:
            return
        lrs = " ".join(f"{k[3:]}={v:.2e}" for k, v in record.items() if k.startswith("lr/"))
        summary = f"loss={record.get('loss', float('nan')):.4f} {lrs} tok/s={record.get('tokens_per_s', 0):.0f}"
        if self.bar is not None:
            self.bar.set_postfix_str(summary, refresh=False)
            self.bar.update(step - self.bar.n)
        elif step % self.every == 0 or step == self.total:
            elapsed = time.monotonic() - self.started
            done = step - self.start_step
            eta = elapsed / done * (self.total - step) if done else 0.0
            log.info("step %d/%d %s eta %s", step, self.total, summary, time.strftime("%H:%M:%S", time.gmtime(eta)))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
