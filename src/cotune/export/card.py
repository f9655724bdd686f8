"""README.md model cards for run directories and exports, in the Hub's layout (YAML front matter,
then Markdown): what the model is built from, how it was trained, on what data, what was measured,
and how to load it. Everything is read from files the run already holds (``config.yaml``,
``model/manifest.json``, ``data_report.json``, ``metrics.jsonl``, any ``metrics.json`` of an
evaluation saved inside the run); nothing is uploaded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from cotune import __version__
from cotune.config import CotuneConfig
from cotune.fileio import atomic_write_text
from cotune.model.io import MANIFEST
from cotune.rundir import CARD, RunDir
TRAIN_KEYS = ("lr", "schedule", "epochs", "max_steps", "grad_accum", "precision")


@dataclass
class CardFacts:
    """What a card says beyond the config: the run's files, the format and how to load it."""

    title: str
    how_to_load: str
    library: str = "cotune"
    pipeline_tag: str | None = None
    extra: list[str] = field(default_factory=list)


def _json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _last_metrics(run: Path) -> dict:
    """The last training record and the last validation loss (``eval/loss``), from metrics.jsonl."""
    last, evaluated = {}, {}
    try:
        for line in RunDir(run).metrics_file.read_text().splitlines():
            record = json.loads(line)
            last = record if "loss" in record else last
            evaluated = record if "eval/loss" in record else evaluated
    except (OSError, ValueError):
        pass
    return {"step": last.get("step"), "loss": last.get("loss"), "eval_loss": evaluated.get("eval/loss")}


def _front_matter(config: CotuneConfig, facts: CardFacts) -> list[str]:
    bases = [config.model.llm.name_or_path, *(e.name_or_path for e in config.model.encoders.values())]
    lines = ["---", f"library_name: {facts.library}", "base_model:"] + [f"- {json.dumps(b)}" for b in bases]
    if facts.pipeline_tag:
        lines.append(f"pipeline_tag: {facts.pipeline_tag}")
    return lines + ["tags:", "- cotune", "- multimodal", "---", ""]


def _recipe(config: CotuneConfig) -> list[str]:
    model = config.model
    llm = model.llm
    lines = ["## Model", "", "| component | base | training |", "|---|---|---|",
             f"| LLM | `{llm.name_or_path}` | {llm.trainable}, adapter {llm.adapter.type}"
             + (" gated by media (text-only prompts run the untuned LLM; a PEFT folder applies it to every prompt)"
                if llm.adapter.gate == "media" else "") + " |"]
    for name, enc in model.encoders.items():
        lines.append(f"| encoder `{name}` ({enc.type}) | `{enc.name_or_path}` | {enc.trainable}, adapter {enc.adapter.type}; "
                     f"layers {list(enc.layers)}, reduce {enc.reduce} |")
        lines.append(f"| connector `{name}` | {enc.connector.type} | {enc.connector.trainable} |")
    train = {k: getattr(config.train, k, None) for k in TRAIN_KEYS}
    settings = ", ".join(f"{k} {v}" for k, v in train.items() if v is not None)
    lines += ["", f"Training: {settings}; batch size {config.data.batch_size}, template {config.data.template}"
              + (f", system prompt {json.dumps(config.data.system_prompt)}" if config.data.system_prompt else "") + ".", ""]
    return lines


def _parameters(run: Path) -> list[str]:
    manifest = _json(RunDir(run).model_dir / MANIFEST) or _json(run / MANIFEST) or {}
    counts = manifest.get("components") or {}
    if not counts:
        return []
    lines = ["## Parameters", "", "| component | total | trainable |", "|---|---:|---:|"]
    lines += [f"| {name} | {c.get('total', 0):,} | {c.get('trainable', 0):,} |" for name, c in counts.items()]
    total = sum(c.get("trainable", 0) for c in counts.values())
    return lines + ["", f"Trainable in all: {total:,}.", ""]


def _data(config: CotuneConfig, run: Path) -> list[str]:
    report = (_json(RunDir(run).data_report_file) or {}).get("datasets", {})
    lines = ["## Data", "", "| dataset | reader | path | records | kept | skipped |", "|---|---|---|---:|---:|---:|"]
    for ds in config.data.train:
        counts = report.get(ds.name, {})
        skipped = sum((counts.get("skipped") or {}).values())
        lines.append(f"| {ds.name} | {ds.kind} | `{ds.path}` | {counts.get('total', '?')} | {counts.get('kept', '?')} | {skipped} |")
    return lines + [""]


def _metrics(run: Path) -> list[str]:
    last = _last_metrics(run)
    lines = ["## Metrics", ""]
    if last["loss"] is not None:
        lines.append(f"- training loss at step {last['step']}: {last['loss']:.4g}")
    if last["eval_loss"] is not None:
        lines.append(f"- validation loss: {last['eval_loss']:.4g}")
    for path in RunDir(run).evaluations()[:10]:
        scores = {k: v for k, v in (_json(path) or {}).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if scores:
            lines.append(f"- `{path.parent.relative_to(run)}`: " + ", ".join(f"{k} {v:.4g}" for k, v in sorted(scores.items())[:8]))
    return lines + (["", "No metrics were recorded.", ""] if len(lines) == 2 else [""])


def model_card(config: CotuneConfig, run: Path, facts: CardFacts) -> str:
    """The card's text for ``run``'s model (``config``: the run's config)."""
    lines = _front_matter(config, facts) + [f"# {facts.title}", "",
                                            f"Trained with cotune {__version__}; run directory `{run}`.", ""]
    lines += _recipe(config) + _parameters(run) + _data(config, run) + _metrics(run)
    lines += ["## How to load", "", facts.how_to_load.strip(), ""] + facts.extra
    return "\n".join(lines).rstrip() + "\n"


def write_card(directory: Path, config: CotuneConfig, run: Path, facts: CardFacts) -> Path:
    return atomic_write_text(Path(directory) / CARD, model_card(config, Path(run), facts))


def run_card_facts(run: Path, peft_folders: dict[str, Path]) -> CardFacts:
    """The card of a run directory: cotune's own loading, and the PEFT folders it holds."""
    load = (f"```bash\ncotune predict {run} --image photo.jpg --prompt \"What is shown?\"\n```\n\n"
            f"```python\nimport cotune\nmodel = cotune.load(\"{run}\")\n```")
    extra = []
    if peft_folders:
        extra = ["## PEFT adapters", "", "Each LoRA-adapted component also as a PEFT folder (`model/peft/<component>`):", ""]
        for component, folder in peft_folders.items():
            extra.append(f"- `{component}`: `PeftModel.from_pretrained(base, \"{folder}\")` with the component's base model")
        extra.append("")
    return CardFacts(f"cotune run {run.name}", load, extra=extra)
