"""``cotune demo``: the whole method on real small models, offline, on a CPU, in one command.

Steps (each logged with its duration; a second run in the same folder reuses what is done):

1. the zoo: fetch/convert/verify the backbones the recipe names and easy-VQA (:mod:`cotune.zoo`);
2. data: synthesise the sound QA and text QA sets into ``DIR/data`` (:mod:`cotune.data.synth`);
3. before: evaluate the untuned model (zero-initialised adapters: its text answers are the base
   LLM's) on easy-VQA test questions, sound QA and the held-out text questions;
4. train the demo recipe (``demo.yaml``) on the mixture into ``DIR/run``, an ordinary run directory;
5. after: evaluate the trained run loaded back from ``DIR/run``, write ``DIR/metrics.json``,
   the report figures in ``DIR/report`` and a before/after table.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from importlib import resources
from pathlib import Path

import yaml

from cotune.config import ConfigError, CotuneConfig, load_config
from cotune.fileio import atomic_write_text, using_cache_root

log = logging.getLogger(__name__)

#: Targets of the demo (metrics.json key -> lower bound, docs/demo.md): accuracy, the easy-VQA yes/no
#: questions whose answer the wording does not predict, sound QA's yes/no questions, text kept, and
#: how far accuracy falls when each sample gets another sample's media (points).
TARGETS = {
    "image_accuracy": 90.0, "image_counter_prior_accuracy": 80.0, "audio_accuracy": 80.0, "audio_yes_no_accuracy": 75.0,
    "text_retention": 95.0, "image_shuffle_drop": 25.0, "audio_shuffle_drop": 25.0,
}
#: Groups of the media-reliance summary (cotune.eval.breakdown.reliance names), in table order.
GROUPS = ("all", "open", "yes_no", "yes_no_balanced", "follows_prior", "counter_prior")
#: The evaluation of easy-VQA questions against the wording (DemoPlan.eval_counter_prior), and its
#: group in metrics.json's ``grounding.image`` (own media only).
COUNTER_PRIOR = "image_counter_prior"
#: The issue's time target for a first run (zoo, data, both evaluations and training), in minutes.
TIME_TARGET_MINUTES = 15.0
#: Mixture shares of the training samples. Open and yes/no questions get equal shares, and yes/no
#: questions are drawn balanced per answer (and, for easy-VQA, per polarity), so the wording
#: predicts no answer: trained on easy-VQA's own mix (74 % yes/no, their answer mostly predicted by
#: a negation word) the model learned the wording and read no image (docs/demo.md). Image and
#: audio yes/no answers are trained as "describe, then answer". No text-only samples: the recipe's
#: LoRA is gated by media, so a text-only sample would train nothing (text prompts run the untuned LLM).
SHARES = {
    "image:open": 0.28, "image:yes:affirmative": 0.07, "image:no:affirmative": 0.07, "image:yes:negated": 0.07,
    "image:no:negated": 0.07, "audio:open": 0.22, "audio:yes": 0.11, "audio:no": 0.11,
}


@dataclass(frozen=True)
class DemoPlan:
    """How much the demo does: ``steps`` x ``batch_size`` training samples drawn from the first
    ``image_questions`` easy-VQA train questions (about one image per ten), ``audio_clips``
    synthetic clips (80 % train; the test split has ``audio_test_clips`` clips, None: 20 % of
    ``audio_clips``) and the text set; questions evaluated before and after training
    (None: the whole test split). ``eval_counter_prior``: after training, that many more easy-VQA
    test questions drawn from those whose answer the wording does not predict (0: none; a random
    subset of ``eval_image`` holds about one in eight). Answers are one word, so
    ``max_new_tokens`` is small; the untuned model's text answers are sentences
    (``text_max_new_tokens``). ``seed`` seeds training (the synthetic sets' training splits, the
    draws, their order, the initialisation); ``eval_seed`` the evaluation (the easy-VQA subsets,
    the sound QA test split, the media shuffle), the same for every ``seed``, so seeds are compared
    on the same questions and differ only in what they learned."""

    steps: int = 200
    batch_size: int = 16
    image_questions: int = 12000
    audio_clips: int = 1500
    audio_test_clips: int | None = 450
    eval_image: int = 200
    eval_audio: int | None = None
    eval_text: int | None = None
    eval_counter_prior: int = 150
    before_image: int = 50
    before_audio: int = 50
    max_new_tokens: int = 6
    text_max_new_tokens: int = 24
    eval_batch_size: int = 32
    seed: int = 0
    eval_seed: int = 0

    @classmethod
    def quick(cls) -> "DemoPlan":
        return cls(steps=60, image_questions=2000, audio_clips=400, audio_test_clips=None, eval_image=100, eval_audio=80,
                   eval_counter_prior=40, before_image=30, before_audio=30)

    def before(self) -> "DemoPlan":
        """The plan of the untuned model's evaluation (smaller image and audio sets, no counter-prior set)."""
        return replace(self, eval_image=self.before_image, eval_audio=self.before_audio, eval_counter_prior=0)


@dataclass
class DemoResult:
    out: Path
    metrics: dict = field(default_factory=dict)
    examples: list[dict] = field(default_factory=list)


def packaged_recipe() -> dict:
    """The demo recipe shipped with the package (``cotune/demo/demo.yaml``) as a plain dict."""
    return yaml.safe_load(resources.files("cotune.demo").joinpath("demo.yaml").read_text())


def demo_config(out: Path, easyvqa: Path, plan: DemoPlan, sizes: dict[str, int], overrides=()) -> CotuneConfig:
    """The packaged recipe with the demo's data, run length and ``overrides`` (``KEY=VALUE``)."""
    recipe = packaged_recipe()
    data = out / "data"
    # Weights are per-sample rates: share / size gives each set its share of the epoch.
    weight = {k: round(1000.0 * SHARES[k] / max(1, sizes[k]), 6) for k in SHARES}
    recipe["seed"] = plan.seed
    sources = {
        "image": {"kind": "easyvqa", "path": str(easyvqa), "split": "train", "limit": plan.image_questions},
        "audio": {"kind": "audioqa", "path": str(data / "audioqa"), "split": "train"},
        "text": {"kind": "alpaca", "path": str(data / "textqa" / "train.json")},
    }
    names = {"image": "easyvqa", "audio": "audioqa", "text": "textqa"}
    recipe["data"]["train"] = []
    for key in SHARES:
        if sizes[key] == 0:  # e.g. a small easy-VQA copy without open questions
            log.warning("demo: no training samples for %s; left out of the mixture", key)
            continue
        source, answers, *polarity = key.split(":")
        name = ":".join([names[source], answers if answers != "all" else "train", *polarity])
        recipe["data"]["train"].append({**sources[source], "answers": answers, "polarity": polarity[0] if polarity else "all",
                                        "weight": weight[key], "name": name,
                                        "targets": "describe" if source != "text" else "answer"})
    recipe["data"]["batch_size"] = plan.batch_size
    recipe["data"]["feature_cache"] = str(out / "features")  # the frozen image encoder runs once per image
    recipe["data"]["epoch_size"] = plan.steps * plan.batch_size
    recipe["train"]["max_steps"] = plan.steps
    if use_bfloat16():
        recipe["model"]["llm"]["dtype"] = "bfloat16"
        recipe["train"]["precision"] = "bf16"
    return load_config(data=recipe, overrides=list(overrides))


def use_bfloat16() -> bool:
    """bf16 weights and autocast on GPUs that support it; float32 on CPU, where a whole training
    step under bf16 autocast measured slower than in float32 (docs/demo.md, step 4)."""
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def _timed(timings: dict, name: str):
    class Timer:
        def __enter__(self):
            self.start = time.perf_counter()
            log.info("demo: %s ...", name)

        def __exit__(self, *exc):
            timings[name] = round(time.perf_counter() - self.start, 1)
            if exc[0] is None:
                log.info("demo: %s done in %.0f s", name, timings[name])

    return Timer()


def prepare_zoo(config: CotuneConfig, cache, easyvqa: Path | None) -> Path:
    """Fetches every zoo entry the config names (unless it is a local path); returns easy-VQA's path."""
    from cotune.zoo import ZOO, dataset_dir, fetch

    names = [config.model.llm.name_or_path] + [e.name_or_path for e in config.model.encoders.values()]
    for name in names:
        if name in ZOO and not Path(name).exists():
            result = fetch(name, cache=cache)
            log.info("demo: %s %s (%s)", name, "reused" if result.reused else "fetched", result.summary)
    if easyvqa is not None:
        return easyvqa
    fetch("easy-vqa", cache=cache)
    return dataset_dir("easy-vqa", cache=cache)


def synthesise(out: Path, plan: DemoPlan) -> dict[str, dict]:
    """Sound QA and text QA under ``out/data`` (reused when present with a summary of the same
    settings). The sound QA test split comes from ``plan.eval_seed``: the same clips for every seed."""
    from cotune.data.synth import SYNTHESIZERS

    summaries = {}
    for kind, count in (("audioqa", plan.audio_clips), ("textqa", None)):
        target = out / "data" / kind
        record = target / "synth.json"
        settings = {"test_seed": plan.eval_seed, "test_count": plan.audio_test_clips} if kind == "audioqa" else {}
        if record.is_file():
            summaries[kind] = json.loads(record.read_text())
            if all(summaries[kind].get(k) == v for k, v in settings.items()):
                continue
            # An earlier demo's set with another test split: its training split is the same (the
            # seed is checked), so a finished run stays valid; only the test split is written anew.
            log.info("demo: %s was synthesised with another test split; writing it again", target)
            shutil.rmtree(target)
        summary = SYNTHESIZERS.get(kind)(target, seed=plan.seed, count=count, **settings)
        atomic_write_text(record, json.dumps(summary, indent=2, default=str) + "\n")
        summaries[kind] = json.loads(record.read_text())
    return summaries


def evaluate_all(
    model, config: CotuneConfig, out: Path, data: Path, easyvqa: Path, plan: DemoPlan, ablations: tuple[str, ...] = (),
) -> dict[str, dict]:
    """easy-VQA test (seeded subset), sound QA test and text QA test, written under ``out/<set>``;
    the image and audio sets also with each of ``ablations`` (``out/<set>/ablate-<name>``); with
    ``plan.eval_counter_prior``, easy-VQA's questions against the wording (``out/image-counter-prior``)."""
    from cotune.eval.runner import counter_prior_set, evaluate_run, load_eval_set, subset
    from cotune.eval.tasks import TASKS

    def test_split(task: str, path: Path):
        return load_eval_set(config, (TASKS.get(task), path), "test")

    easyvqa_test = test_split("easyvqa", easyvqa)  # read once: the subset and the questions against the wording
    sets = {
        "image": (easyvqa_test, plan.eval_image, plan.max_new_tokens),
        "audio": (test_split("audioqa", data / "audioqa"), plan.eval_audio, plan.max_new_tokens),
        "text": (test_split("textqa", data / "textqa"), plan.eval_text, plan.text_max_new_tokens),
    }
    results = {}
    for key, (test, limit, new_tokens) in sets.items():
        results[key] = evaluate_run(
            model, config, subset(test, limit, plan.eval_seed),
            batch_size=plan.eval_batch_size, max_new_tokens=new_tokens, out=out / key,
            ablations=ablations if key != "text" else (), ablation_seed=plan.eval_seed,
        )
        log.info("demo: %s accuracy %s (%d questions)", key, results[key].get("accuracy"), results[key]["evaluated"])
    if plan.eval_counter_prior:
        chosen = counter_prior_set(easyvqa_test, plan.eval_counter_prior, plan.eval_seed)
        results[COUNTER_PRIOR] = evaluate_run(model, config, chosen, batch_size=plan.eval_batch_size,
                                              max_new_tokens=plan.max_new_tokens, out=out / "image-counter-prior")
        log.info("demo: easy-VQA against the wording: accuracy %s (%d questions)", results[COUNTER_PRIOR].get("accuracy"),
                 results[COUNTER_PRIOR]["evaluated"])
    return results


def run_demo(out: str | Path, plan: DemoPlan | None = None, *, cache=None, easyvqa: Path | None = None, overrides=()) -> DemoResult:
    """Runs the demo into ``out`` (module docstring) and returns its metrics and example answers.

    ``cache``: the zoo's cache root, for the fetch and for every later step that reads the zoo
    (building, training and loading the run resolve hub ids through it); ``easyvqa``: an easy-VQA
    data folder to use instead of the zoo's; ``overrides``: ``KEY=VALUE`` config overrides (e.g.
    local backbone paths), applied after the demo's own settings.
    """
    with using_cache_root(cache):
        return _run_demo(out, plan, cache, easyvqa, overrides)


def _run_demo(out, plan, cache, easyvqa, overrides) -> DemoResult:
    from cotune.model import build_model
    from cotune.model.build import check_component_names
    from cotune.report import make_report
    from cotune.rundir import RunDir
    from cotune.train import train
    from cotune.zoo.sources import resolve_sources

    out, plan = Path(out).expanduser(), plan or DemoPlan()
    check_seed(out, plan.seed)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    probe = load_config(data=packaged_recipe(), overrides=list(overrides))  # the backbones after overrides
    check_component_names(probe)  # a misspelt name in an override fails before the zoo and the data
    with _timed(timings, "zoo"):
        easyvqa = prepare_zoo(probe, cache, easyvqa)
    before_file = out / "eval-before" / "summary.json"
    sound = out / "data" / "audioqa" / "synth.json"
    earlier = sound.read_text() if sound.is_file() else None
    with _timed(timings, "data"):
        synthesise(out, plan)
    if earlier is not None and sound.read_text() != earlier and before_file.is_file():
        # The sound test split was written anew: the untuned model's evaluation read the old one.
        before_file.unlink()
    config = demo_config(out, easyvqa, plan, {key: 1 for key in SHARES}, overrides)
    config = demo_config(out, easyvqa, plan, _mixture_sizes(config), overrides)
    run_dir = out / "run"
    run = RunDir(run_dir)
    trained = run.model_dir.is_dir()
    # Only a run that did every phase itself is timed against the target (a rerun reuses work).
    first_run = not run_dir.is_dir() and not before_file.is_file()
    if before_file.is_file():
        before = json.loads(before_file.read_text())
    else:
        with _timed(timings, "evaluate before"):
            model = build_model(config, sources=resolve_sources(config.model))
            before = evaluate_all(model, config, out / "eval-before", out / "data", easyvqa, plan.before())
            del model
        atomic_write_text(before_file, json.dumps(before, indent=2) + "\n")
    if not trained:
        resume = run_dir.is_dir() and bool(run.checkpoints())
        if run_dir.is_dir() and not resume:
            # An earlier demo stopped before its first checkpoint: nothing finished to keep.
            log.warning("demo: %s holds no checkpoint; starting the run again", run_dir)
            shutil.rmtree(run_dir)
        with _timed(timings, "train"):
            train(config, run_dir, resume=resume)
    with _timed(timings, "evaluate after"):
        run_config = run.config()
        model = run.load()[0]
        after = evaluate_all(model, run_config, out / "eval-after", out / "data", easyvqa, plan, ablations=("shuffle",))
    with _timed(timings, "report"):
        make_report([run_dir], out / "report")
    metrics = _metrics(before, after, model, plan, timings, time.perf_counter() - start, first_run)
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    return DemoResult(out, metrics, _examples(out / "eval-after"))


def check_seed(out: Path, seed: int) -> None:
    """ConfigError if ``out`` holds a demo of another seed (its data, run and evaluations would be
    reused as if they were this seed's)."""
    for record in (out / "run" / "config.yaml", out / "data" / "audioqa" / "synth.json"):
        if record.is_file():
            earlier = yaml.safe_load(record.read_text()).get("seed")
            if earlier is not None and earlier != seed:
                raise ConfigError(f"{out}: holds a demo with seed {earlier} ({record}); use another --out for seed {seed}")


def _mixture_sizes(config: CotuneConfig) -> dict[str, int]:
    """Samples in each training entry of the demo mixture, keyed like SHARES (the weights need
    them); counted by the readers, which decode no media."""
    from cotune.data.readers import READERS
    from cotune.data.report import DatasetReport

    return {
        key: sum(1 for _ in READERS.get(entry.kind)(entry, DatasetReport(entry.name)))
        for key, entry in zip(SHARES, config.data.train)
    }


def _metrics(before: dict, after: dict, model, plan: DemoPlan, timings: dict, seconds: float, first_run: bool) -> dict:
    def acc(results: dict, key: str):
        return results[key].get("accuracy")

    text, text_base = acc(after, "text"), acc(before, "text")
    retention = round(100.0 * text / text_base, 2) if text is not None and text_base else None
    metrics = {
        "image_accuracy": acc(after, "image"), "audio_accuracy": acc(after, "audio"), "text_accuracy": text,
        "text_accuracy_base": text_base, "text_retention": retention,
        "image_accuracy_before": acc(before, "image"), "audio_accuracy_before": acc(before, "audio"),
        "grounding": {key: grounding(after[key]) for key in ("image", "audio")},
        "questions": {k: after[k]["evaluated"] for k in after},
        "trainable_parameters": sum(c["trainable"] for c in model.parameter_counts().values()),
        "total_parameters": sum(c["total"] for c in model.parameter_counts().values()),
        "plan": asdict(plan), "seconds": timings, "total_seconds": round(seconds, 1),
    }
    for key in ("image", "audio"):
        groups = metrics["grounding"][key]
        metrics[f"{key}_shuffled_accuracy"] = groups.get("all", {}).get("shuffled")
        metrics[f"{key}_shuffle_drop"] = groups.get("all", {}).get("drop")
        for name in ("open", "yes_no", "counter_prior"):
            metrics[f"{key}_{name}_accuracy"] = groups.get(name, {}).get("own")
    if COUNTER_PRIOR in after:  # the larger set decides the target; the subset's group stays in grounding
        extra = after[COUNTER_PRIOR]
        metrics["grounding"]["image"]["counter_prior_set"] = {"own": extra.get("accuracy"), "shuffled": None, "drop": None,
                                                              "count": extra["evaluated"]}
        metrics["image_counter_prior_accuracy"] = extra.get("accuracy")
    metrics["targets"] = {k: {"target": v, "value": metrics[k], "met": metrics[k] is not None and metrics[k] >= v, "compare": ">="}
                          for k, v in TARGETS.items()}
    minutes = round(seconds / 60.0, 2)
    # met is None for a rerun: its time leaves out the phases it reused.
    metrics["targets"]["total_minutes"] = {"target": TIME_TARGET_MINUTES, "value": minutes, "compare": "<=",
                                           "met": minutes <= TIME_TARGET_MINUTES if first_run else None}
    return metrics


def grounding(result: dict) -> dict:
    """Media reliance of one evaluation with the shuffle ablation: per group of :data:`GROUPS`
    (and each question type) the accuracy with own media, with shuffled media, the drop in points
    and the question count."""
    gaps = (result.get("ablations") or {}).get("shuffle", {}).get("reliance") or {}
    names = [g for g in GROUPS if g in gaps] + sorted(g for g in gaps if g.startswith("type:"))
    return {name: {"own": gaps[name]["own"], "shuffled": gaps[name]["ablated"], "drop": gaps[name]["gap"],
                   "count": gaps[name]["count"]} for name in names}


def _examples(eval_dir: Path, per_set: int = 3) -> list[dict]:
    """A few answers of each set from the after-training predictions."""
    examples = []
    for key in ("image", "audio", "text"):
        lines = (eval_dir / key / "predictions.jsonl").read_text().splitlines()[:per_set]
        examples += [{"set": key, **json.loads(line)} for line in lines]
    return examples
