"""Reading run directories: ``metrics.jsonl`` as records, ``config.yaml`` for the balance method.

A run directory is what ``cotune train`` writes (its layout: :class:`cotune.rundir.RunDir`). Only ``metrics.jsonl`` is
required; without ``config.yaml`` the method is unknown. Non-finite values (NaN, inf) are kept in
the records and dropped by :meth:`Run.series` and the summary.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from cotune.rundir import METRICS, RunDir

log = logging.getLogger(__name__)

FINAL_LOSS_STEPS = 10


class ReportError(ValueError):
    """A run directory's files cannot be read into a report (the message names the file)."""


@dataclass
class Run:
    """One run: its directory, legend label, balance method and the records of metrics.jsonl."""

    path: Path
    name: str
    method: str | None
    records: list[dict] = field(repr=False)
    label: str = ""

    def __post_init__(self) -> None:
        if not self.label:
            self.label = self.name if self.method is None else f"{self.name} ({self.method})"

    def keys(self, prefix: str) -> list[str]:
        """Every key starting with ``prefix``, in order of first appearance."""
        seen: dict[str, None] = {}
        for record in self.records:
            seen.update((key, None) for key in record if key.startswith(prefix))
        return list(seen)

    def series(self, key: str, where: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(steps, values) of the records holding a finite ``key``, float64 [n] each.

        ``where``: also require that key to be 1 (e.g. ``balance/valid``) when the record holds it.
        """
        steps, values = [], []
        for record in self.records:
            value = _number(record.get(key))
            if value is None or not math.isfinite(value):
                continue
            if where is not None and where in record and _number(record[where]) != 1.0:
                continue
            steps.append(record["step"])
            values.append(value)
        return np.asarray(steps, dtype=np.float64), np.asarray(values, dtype=np.float64)


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def read_metrics(path: Path) -> list[dict]:
    """The records of a metrics.jsonl; a last line cut short (a run still writing, or killed) is skipped.

    Raises:
        FileNotFoundError: no such file.
        ReportError: the file holds no complete record, or a line before the last is not a JSON
            object with a ``step``.
    """
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (a run directory written by `cotune train` holds {METRICS})")
    lines = [(number, line) for number, line in enumerate(path.read_text().splitlines(), 1) if line.strip()]
    records = []
    for index, (number, line) in enumerate(lines):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            if index == len(lines) - 1:
                log.warning("%s: line %d is incomplete (run still writing, or killed); skipped", path, number)
                continue
            raise ReportError(f"{path}: line {number} is not valid JSON ({err.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            raise ReportError(f"{path}: line {number} is not a metrics record (a JSON object with an integer 'step')")
        records.append(record)
    if not records:
        raise ReportError(f"{path}: no metrics records (the file is empty; has the run done a step yet?)")
    return records


def read_method(run_dir: Path) -> str | None:
    """``balance.method`` of the run's config.yaml; None when the file or the key is missing."""
    path = RunDir(run_dir).config_file
    if not path.is_file():
        return None
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        log.warning("%s: not readable YAML (%s); method unknown", path, " ".join(str(err).split()))
        return None
    balance = config.get("balance") if isinstance(config, dict) else None
    # A config without a balance section trains with the default method.
    method = balance.get("method", "constant") if isinstance(balance, dict) else "constant"
    return str(method)


def read_run(run_dir: str | Path) -> Run:
    """Reads one run directory (see :func:`read_metrics` for the errors)."""
    path = Path(run_dir)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such run directory")
    records = read_metrics(RunDir(path).metrics_file)
    return Run(path=path, name=path.resolve().name, method=read_method(path), records=records)


def read_runs(run_dirs: list[str | Path]) -> list[Run]:
    """Reads every run (a directory given twice counts once); labels are made unique for the legends
    (the parent folder added to a repeated name, then a counter)."""
    if not run_dirs:
        raise ReportError("no run directories given")
    runs: list[Run] = []
    for run_dir in run_dirs:
        run = read_run(run_dir)
        if any(r.path.resolve() == run.path.resolve() for r in runs):
            log.warning("%s: given twice; reported once", run_dir)
            continue
        runs.append(run)
    names = [r.name for r in runs]
    for run in runs:
        if names.count(run.name) > 1:
            run.name = f"{run.path.resolve().parent.name}/{run.name}"
    seen: dict[str, int] = {}
    for run in runs:
        seen[run.name] = seen.get(run.name, 0) + 1
        if seen[run.name] > 1:
            run.name = f"{run.name} #{seen[run.name]}"
        run.label = run.name if run.method is None else f"{run.name} ({run.method})"
    return runs


def summarize(run: Run) -> dict:
    """One summary row; a value the run did not log is None.

    Keys: ``name``, ``label``, ``path``, ``method``, ``steps`` (the last step logged), ``final_loss``
    (mean of the last 10 finite training losses), ``best_eval_loss`` / ``best_eval_step``,
    ``mean_kappa`` over valid estimates and their count ``kappa_estimates``, ``multipliers`` (the
    last logged one per side), ``tokens_per_s`` (mean over steps).
    """
    _, loss = run.series("loss")
    eval_steps, eval_loss = run.series("eval/loss")
    _, kappa = run.series("balance/kappa", where="balance/valid")
    _, tokens = run.series("tokens_per_s")
    best = int(np.argmin(eval_loss)) if eval_loss.size else None
    multipliers = {}
    for record in reversed(run.records):
        found = {key.split("/", 2)[2]: float(v) for key, v in record.items() if key.startswith("balance/multiplier/") and _number(v) is not None}
        if found:
            multipliers = found
            break
    return {
        "name": run.name,
        "label": run.label,
        "path": str(run.path),
        "method": run.method,
        "steps": max(r["step"] for r in run.records),
        "final_loss": float(loss[-FINAL_LOSS_STEPS:].mean()) if loss.size else None,
        "best_eval_loss": float(eval_loss[best]) if best is not None else None,
        "best_eval_step": int(eval_steps[best]) if best is not None else None,
        "mean_kappa": float(kappa.mean()) if kappa.size else None,
        "kappa_estimates": int(kappa.size),
        "multipliers": multipliers,
        "tokens_per_s": float(tokens.mean()) if tokens.size else None,
    }
