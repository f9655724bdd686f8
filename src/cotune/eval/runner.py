"""Running a trained model over a dataset: reading and selecting the samples, generating (the loop
is :mod:`cotune.eval.generation`), scoring by task, and the ``predictions.jsonl``/``metrics.json``
files.

:func:`evaluate_run` is the whole evaluation (the ``cotune eval`` command, the demo and the trainer
call it); :func:`~cotune.eval.generation.predict_samples` is the generation loop underneath it, also
used by ``cotune predict`` (both importable from here too). Records that cannot be used (a reader skip, a prompt too long, media that does not
decode, a media kind the model has no encoder for) are counted by reason, never raised mid-run.
Nothing here has trainable parameters; the model is put in eval mode while generating.
"""

from __future__ import annotations

import copy
import json
import logging
import random
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from cotune.config import ConfigError, CotuneConfig, DatasetConfig
from cotune.data.dataset import DataError
from cotune.data.readers import READERS
from cotune.data.report import DatasetReport
from cotune.data.schema import Sample
from cotune.eval.ablation import ablate as ablate_samples
from cotune.eval.ablation import check_ablations
from cotune.eval.breakdown import breakdown, is_yes_no, prior_split, reliance
from cotune.eval.generation import Prediction, decode, predict_samples  # noqa: F401 - re-exported
from cotune.eval.metrics import ScoreError
from cotune.eval.mme_results import write_results as write_mme_results
from cotune.eval.progress import GenerationProgress
from cotune.eval.tasks import EvalTask, item_record, parse_dataset, score
from cotune.fileio import atomic_write_text
from cotune.model.data_spec import data_spec_from_model

log = logging.getLogger(__name__)

PREDICTIONS, METRICS_FILE, MME_RESULTS = "predictions.jsonl", "metrics.json", "mme_results"
#: Keys of metrics.json that describe the run rather than score it.
RUN_KEYS = (
    "run_dir", "dataset", "path", "split", "metric", "template", "records", "selected", "evaluated", "skipped",
    "skip_examples", "limit", "sample_seed", "max_new_tokens", "batch_size", "seconds", "samples_per_second",
)


def select(samples: Sequence[Sample], limit: int | None, seed: int | None) -> list[Sample]:
    """The first ``limit`` samples, or with ``seed`` a seeded random subset of ``limit`` (kept in
    dataset order); all of them when ``limit`` is None or not smaller."""
    if limit is None or limit >= len(samples):
        return list(samples)
    if seed is None:
        return list(samples[:limit])
    chosen = sorted(random.Random(seed).sample(range(len(samples)), limit))
    return [samples[i] for i in chosen]


def read_dataset(config: DatasetConfig, report: DatasetReport) -> list[Sample]:
    """Every usable sample of ``config`` (bad records counted in ``report``); DataError when the
    dataset as a whole cannot be read (wrong layout, missing split)."""
    try:
        return list(READERS.get(config.kind, key="kind")(config, report))
    except ValueError as err:
        raise DataError(f"dataset {config.name} at {config.path}: {err}") from None


def dataset_config(task: EvalTask, path: Path, split: str, config: CotuneConfig) -> DatasetConfig:
    """The eval dataset, rendered like the run's own dataset of the same reader (prompt format,
    captions, instruction) when it had one."""
    fields = {}
    trained = next((d for d in (*config.data.train, *config.data.eval) if d.kind == task.reader), None)
    if trained is not None:
        fields = {"prompt_format": trained.prompt_format, "use_caption": trained.use_caption, "prompt": trained.prompt}
    return DatasetConfig(kind=task.reader, path=str(path), split=split, name=f"{task.name}:{split}", **fields)


@dataclass
class EvalSet:
    """The samples to evaluate: the task, where its data is, how it was read (``config``; skips
    counted in ``report``) and the ``samples`` selected."""

    task: EvalTask
    path: Path
    config: DatasetConfig
    report: DatasetReport
    samples: list[Sample]
    limit: int | None = None
    sample_seed: int | None = None


def load_eval_set(
    config: CotuneConfig, dataset: str | tuple[EvalTask, Path], split: str = "test", limit: int | None = None,
    sample_seed: int | None = None,
) -> EvalSet:
    """Reads ``dataset`` (``"NAME[:PATH]"`` or (task, path)) as the run ``config`` renders it and
    selects ``limit`` samples (a seeded random subset with ``sample_seed``, else the first)."""
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit: must be >= 1, got {limit}")
    task, path = parse_dataset(dataset) if isinstance(dataset, str) else dataset
    ds_config = dataset_config(task, path, split, config)
    report = DatasetReport(ds_config.name)
    return subset(EvalSet(task, path, ds_config, report, read_dataset(ds_config, report)), limit, sample_seed)


def subset(data: EvalSet, limit: int | None, sample_seed: int | None, samples: Sequence[Sample] | None = None) -> EvalSet:
    """``limit`` of ``samples`` (default: ``data``'s) chosen by :func:`select`, as an evaluation set
    of ``data``'s dataset: a set read once can give several subsets."""
    chosen = select(data.samples if samples is None else samples, limit, sample_seed)
    return replace(data, samples=chosen, limit=limit, sample_seed=sample_seed)


def counter_prior_set(data: EvalSet, limit: int | None = None, sample_seed: int | None = None) -> EvalSet:
    """The yes/no questions of ``data`` whose answer the wording does not predict: not the majority
    answer of the question's polarity among all of ``data``'s yes/no questions (the breakdown's
    ``counter_prior`` group, with the majorities of the whole set rather than of a subset), then
    ``limit`` of them chosen as :func:`select` chooses. A small random subset holds few of them
    (easy-VQA's test split: about one yes/no question in six), so this measures the group with
    fewer questions in all."""
    rows = [item_record(data.task, sample, "") for sample in data.samples]
    yes_no = [(sample, row) for sample, row in zip(data.samples, rows) if row.get("references") and is_yes_no(row["references"])]
    _, _, follows = prior_split([row for _, row in yes_no])
    counters = [sample for (sample, _), follows_prior in zip(yes_no, follows) if follows_prior is False]
    return subset(data, limit, sample_seed, counters)


def evaluate_run(
    model, config: CotuneConfig, dataset: str | tuple[EvalTask, Path] | EvalSet, *, split: str = "test", limit: int | None = None,
    sample_seed: int | None = None, batch_size: int = 8, max_new_tokens: int = 64, out: str | Path | None = None,
    num_workers: int = 0, run_dir: str | Path | None = None, ablate: str | None = None, ablations: Sequence[str] = (),
    ablation_seed: int = 0, progress: bool = True,
) -> dict:
    """Evaluates ``model`` (built from ``config``) on ``dataset``.

    ``dataset`` is ``"NAME[:PATH]"``, (task, path) or an :class:`EvalSet` already read (then
    ``split``, ``limit`` and ``sample_seed`` were applied when reading it). Generates greedily,
    extracts and scores answers by the task. With ``out``, writes ``predictions.jsonl`` and
    ``metrics.json`` there atomically. Returns the metrics: ``accuracy`` where the task has one
    (None when nothing could be evaluated), the metric's other fields, the ``breakdown`` by answer
    type and wording prior (:mod:`cotune.eval.breakdown`), and :data:`RUN_KEYS`.

    ``ablate`` (``shuffle`` | ``blank``, :mod:`cotune.eval.ablation`) evaluates with ablated media
    instead of the samples' own; metrics say which under ``ablation``. ``ablations`` evaluates with
    own media first, then once per named ablation (written under ``out/ablate-<name>``), and adds
    ``ablations``: per ablation its accuracy, breakdown and ``reliance`` (own vs ablated, per
    group, and the gap). ``ablation_seed`` seeds the shuffle's derangement. ``progress`` shows
    each pass's progress (:mod:`cotune.eval.progress`: a bar on a terminal, log lines otherwise).
    """
    for flag, value in (("--batch-size", batch_size), ("--max-new-tokens", max_new_tokens)):
        if value < 1:
            raise ConfigError(f"{flag}: must be >= 1, got {value}")
    check_ablations(ablate, ablations)
    data = dataset if isinstance(dataset, EvalSet) else load_eval_set(config, dataset, split, limit, sample_seed)
    settings = {"batch_size": batch_size, "max_new_tokens": max_new_tokens, "num_workers": num_workers, "run_dir": run_dir,
                "progress": progress}
    metrics, records = _evaluate(model, config, data, out, ablate=ablate, ablation_seed=ablation_seed, **settings)
    if ablations:
        metrics["ablations"] = {}
    for name in ablations:
        where = None if out is None else Path(out) / f"ablate-{name}"
        ablated, ablated_records = _evaluate(model, config, data, where, ablate=name, ablation_seed=ablation_seed, **settings)
        if where is not None:
            write_outputs(where, ablated_records, ablated)
        metrics["ablations"][name] = {
            "accuracy": ablated.get("accuracy"), "ablation": ablated["ablation"], "breakdown": ablated.get("breakdown"),
            "reliance": reliance(metrics, ablated), "out": None if where is None else str(where),
        }
    if out is not None:
        write_outputs(out, records, metrics)
    return metrics


def _evaluate(
    model, config: CotuneConfig, data: EvalSet, out, *, batch_size: int, max_new_tokens: int, num_workers: int, run_dir,
    ablate: str | None = None, ablation_seed: int = 0, progress: bool = True,
) -> tuple[dict, list[dict]]:
    """One pass of :func:`evaluate_run` over ``data`` (own media, or ``ablate``'s): its metrics
    and scored records (``out`` only receives what was generated if scoring fails)."""
    # Each pass counts its own skips (prompts, media) on top of the reader's.
    task, report = data.task, copy.deepcopy(data.report)
    spec = data_spec_from_model(model, config.data)
    log.info("evaluating %s: %d of %d records (%s template%s)", data.config.name, len(data.samples), report.total,
             spec.template, f", media ablated: {ablate}" if ablate else "")
    with tempfile.TemporaryDirectory(prefix="cotune-ablate-") as workdir:
        ablated = ablate_samples(data.samples, ablate, seed=ablation_seed, workdir=Path(workdir)) if ablate else None
        samples = ablated.samples if ablated else data.samples
        start = time.perf_counter()
        records, metadata = [], {}
        label = f"eval {data.config.name}" + (f" ({ablate})" if ablate else "")
        with GenerationProgress(len(samples), label, enabled=progress) as shown:
            for prediction in predict_samples(model, spec, samples, batch_size=batch_size, max_new_tokens=max_new_tokens,
                                              report=report, num_workers=num_workers, progress=shown.advance):
                records.append(item_record(task, prediction.sample, prediction.text))
                metadata[prediction.sample.id] = prediction.sample.metadata
        seconds = time.perf_counter() - start
    run = {
        "run_dir": None if run_dir is None else str(run_dir), "dataset": task.name, "path": str(data.path),
        "split": data.config.split, "metric": task.metric, "template": spec.template, "records": report.total,
        "selected": len(data.samples), "evaluated": len(records), "skipped": dict(sorted(report.skipped.items())),
        "skip_examples": report.as_dict()["examples"], "limit": data.limit, "sample_seed": data.sample_seed,
        "max_new_tokens": max_new_tokens, "batch_size": batch_size, "seconds": round(seconds, 3),
        "samples_per_second": round(len(records) / seconds, 3) if records and seconds > 0 else None,
    }
    metrics = _score(task, records, metadata, out)
    if records and task.has_accuracy:
        metrics["breakdown"] = breakdown(records, metadata)
    metrics.update(run)
    if ablated is not None:
        metrics["ablation"] = ablated.describe()
    return metrics, records


def _score(task: EvalTask, records: list[dict], metadata: dict, out: str | Path | None) -> dict:
    if not records:
        log.warning("nothing to evaluate: every selected sample was skipped")
        return {"accuracy": None} if task.has_accuracy else {}
    try:
        result = score(task, records, metadata)
    except ScoreError as err:
        if out is not None:  # keep what was generated
            write_outputs(out, records, None)
        raise ScoreError(f"task {task.name}: {err}") from None
    return {"accuracy": result["accuracy"], **result} if "accuracy" in result else result


def write_outputs(out: str | Path, records: Sequence[dict], metrics: dict | None) -> None:
    """``out/predictions.jsonl`` (one record a line) and ``out/metrics.json``, each written atomically;
    for MME also ``out/mme_results/<subtask>.txt``, the layout MME's own evaluation tool reads."""
    out = Path(out)
    atomic_write_text(out / PREDICTIONS, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    if metrics is not None and metrics.get("metric") == "mme":
        write_mme_results(out / MME_RESULTS, records)
    if metrics is not None:
        atomic_write_text(out / METRICS_FILE, json.dumps(metrics, indent=2, ensure_ascii=False) + "\n")
