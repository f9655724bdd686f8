"""What both sides of ``versus_llava.py`` are measured on, and how: the training questions they
draw, the held-out questions and their scoring, the training clock with evaluations taken off it,
and peak memory. ``plan`` is that module's ``Plan``."""

from __future__ import annotations

import json
import logging
import random
import resource
import time
from pathlib import Path

import torch

log = logging.getLogger("benchmarks.versus_llava")


#: The training mixes both sides draw, per cotune recipe (``Plan.recipe``): (answers, polarity) cells
#: as cotune's ``DatasetConfig.answers``/``polarity`` filter them -> share of the drawn questions, and
#: the targets (``DatasetConfig.targets``) the shared training file carries. ``mm_adapter``: the
#: demo's image mix when the MM-Adapter recipe was measured (open 0.35 : yes/no 0.15 of its
#: samples), plain answers. ``grounded``: the demo's image mix now (``SHARES``): as many open
#: questions as yes/no ones, yes/no balanced per answer and polarity, yes/no trained as "describe,
#: then answer" ("blue circle: no").
MM_ADAPTER_MIX = {("open", "all"): 0.7, ("yes_no", "all"): 0.3}
#: cotune's recipes (``Plan.recipe``): ``grounded``, the demo's recipe as shipped (gated LoRA,
#: describe then answer, yes/no balanced per answer and polarity); ``mm_adapter``, the recipe the
#: first results were measured with (``benchmarks/mm_adapter_recipe.yaml``).
RECIPES = ("grounded", "mm_adapter")


def training_mix(recipe: str) -> tuple[dict[tuple[str, str], float], str]:
    """(cells -> share, targets) of ``recipe`` (``MM_ADAPTER_MIX``'s comment)."""
    if recipe == "mm_adapter":
        return dict(MM_ADAPTER_MIX), "answer"
    if recipe != "grounded":
        raise ValueError(f"recipe: {recipe!r} is not one of {', '.join(RECIPES)}")
    from cotune.demo.pipeline import SHARES

    image = {tuple(key.split(":")[1:]): share for key, share in SHARES.items() if key.startswith("image:")}
    total = sum(image.values())
    return {(cell[0], cell[1] if len(cell) > 1 else "all"): share / total for cell, share in image.items()}, "describe"


def mix_sentence(recipe: str) -> str:
    """How ``recipe``'s training questions are drawn, for the report."""
    mix, targets = training_mix(recipe)
    cells = ", ".join(f"{100 * share:.1f} % {answers}" + (f" {polarity}" if polarity != "all" else "")
                      for (answers, polarity), share in mix.items())
    return cells + ("; yes/no targets \"<colour> <shape>: <answer>\" (describe, then answer)" if targets == "describe" else "; plain answers")


def draw_training_set(easyvqa: Path, plan, work: Path) -> Path:
    """Writes ``work/train-set/train/questions.json``: steps x batch_size questions of the first
    ``pool`` train questions, in ``plan.recipe``'s mix (``training_mix``), drawn without
    replacement, each record [question, target, image_id] with the target as cotune's reader makes
    it (so both sides train on the same text). With ``cotune_steps`` > ``steps`` it also writes
    ``work/train-set-cotune``: that set plus further questions drawn the same way from the rest of
    the pool (the baseline's draw is unchanged)."""
    mix, targets = training_mix(plan.recipe)
    pools = {cell: _pool(easyvqa, plan.pool, cell, targets) for cell in mix}
    rng = random.Random(plan.seed)
    drawn = _draw(pools, mix, plan.steps * plan.batch_size, rng, plan.pool)
    rng.shuffle(drawn)
    _write_set(train_set_dir(work, plan, "baseline"), drawn)
    cotune_set = train_set_dir(work, plan, "cotune")
    if cotune_set != train_set_dir(work, plan, "baseline"):
        extra = plan.steps_of("cotune") - plan.steps
        taken = {json.dumps(q) for q in drawn}
        rest = {cell: [q for q in qs if json.dumps(q) not in taken] for cell, qs in pools.items()}
        more = _draw(rest, mix, extra * plan.batch_size, rng, plan.pool)
        rng.shuffle(more)
        _write_set(cotune_set, drawn + more)
    return train_set_dir(work, plan, "baseline")


def _pool(easyvqa: Path, pool: int, cell: tuple[str, str], targets: str) -> list[list]:
    """The first ``pool`` train questions that cotune's easy-VQA reader keeps for ``cell``, as
    [question, target, image_id] records."""
    from cotune.config import DatasetConfig
    from cotune.data.report import DatasetReport
    from cotune.data.readers.easyvqa import read

    answers, polarity = cell
    config = DatasetConfig(kind="easyvqa", path=str(easyvqa), split="train", limit=pool, answers=answers, polarity=polarity,
                           targets=targets)
    return [[s.metadata["question"], s.messages[-1].content, s.metadata["image_id"]] for s in read(config, DatasetReport(config.name))]


def train_set_dir(work: Path, plan, side: str) -> Path:
    """The easy-VQA-layout training set ``side`` reads: ``train-set``, or ``train-set-cotune`` when
    cotune trains for more steps than the baseline."""
    return work / ("train-set-cotune" if side == "cotune" and plan.steps_of("cotune") > plan.steps else "train-set")


def _draw(pools: dict[tuple, list], mix: dict[tuple, float], total: int, rng: random.Random, pool: int) -> list:
    cells = list(mix)
    wants = [round(total * mix[cell]) for cell in cells[:-1]]
    wants.append(total - sum(wants))
    for cell, want in zip(cells, wants):
        if want > len(pools[cell]):
            raise ValueError(f"--pool {pool}: {len(pools[cell])} {'/'.join(cell)} questions left, the run needs {want}; raise --pool")
    return [q for cell, want in zip(cells, wants) for q in rng.sample(pools[cell], want)]


def _write_set(root: Path, questions: list) -> None:
    target = root / "train" / "questions.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(questions))


def eval_samples(easyvqa: Path, plan):
    """The held-out easy-VQA test questions both sides answer: cotune's reader, and the seeded
    subset cotune's evaluation selects for ``--limit N --sample-seed SEED``."""
    from cotune.config import DatasetConfig
    from cotune.data.report import DatasetReport
    from cotune.eval.runner import read_dataset, select

    config = DatasetConfig(kind="easyvqa", path=str(easyvqa), split="test", name="easyvqa:test")
    return select(read_dataset(config, DatasetReport(config.name)), plan.eval_questions, plan.seed)


def shuffled_samples(samples, plan):
    """The same questions with each image swapped for another's (cotune's shuffle ablation)."""
    from cotune.eval.ablation import ablate

    return ablate(samples, "shuffle", seed=plan.seed).samples


def score_answers(pairs, shuffled_pairs=None) -> dict:
    """(Sample, generated text) pairs -> accuracy (cotune's easy-VQA scoring) with the yes/no and
    open (colour/shape) breakdown and the yes/no questions whose answer the wording does not
    predict (``counter_prior``); with ``shuffled_pairs`` (the same questions answered with shuffled
    images) also the accuracy with shuffled images and the drop."""
    from cotune.eval.breakdown import breakdown, reliance
    from cotune.eval.tasks import TASKS, item_record, score

    def scored(items):
        task = TASKS.get("easyvqa")
        records = [item_record(task, sample, text) for sample, text in items]
        metadata = {sample.id: sample.metadata for sample, _ in items}
        accuracy = score(task, records, metadata)["accuracy"]
        return {"accuracy": accuracy, "evaluated": len(records), "breakdown": breakdown(records, metadata)}

    own = scored(pairs)
    part = own["breakdown"]
    result = {"accuracy": own["accuracy"], "questions": own["evaluated"]}
    for kind in ("yes_no", "open"):
        result[f"{kind}_accuracy"] = part["by_answer_type"][kind]["accuracy"]
        result[f"{kind}_questions"] = part["by_answer_type"][kind]["count"]
    prior = part["wording_prior"]
    result.update(counter_prior_accuracy=prior["counter_prior"]["accuracy"], counter_prior_questions=prior["counter_prior"]["count"],
                  wording_prior_accuracy=prior["accuracy"], yes_no_balanced_accuracy=part["yes_no_balanced_accuracy"])
    if shuffled_pairs is not None:
        gaps = reliance(own, scored(shuffled_pairs))
        result["shuffled"] = {name: {"accuracy": g["ablated"], "drop": g["gap"]} for name, g in gaps.items()}
        result["shuffled_accuracy"], result["shuffle_drop"] = gaps["all"]["ablated"], gaps["all"]["gap"]
    return result


class Curve:
    """Training wall time with evaluations taken out, and the accuracy at each evaluation
    (``evaluate(step)`` -> ``score_answers``'s dict)."""

    def __init__(self, evaluate) -> None:
        self.evaluate, self.points = evaluate, []
        self.paused = self.paused_cpu = 0.0
        self.started = self.started_cpu = None

    def start(self) -> None:
        self.started, self.started_cpu = time.perf_counter(), time.process_time()

    def point(self, step: int, samples: int, tokens: int) -> None:
        # CPU seconds (all threads of this process) next to wall seconds: on a shared machine the
        # wall time grows with other processes' load; with one thread the CPU time hardly does (with
        # several, OpenMP threads waiting for each other count as CPU time too).
        if torch.cuda.is_available():
            torch.cuda.synchronize()  # queued kernels belong to training, not to the evaluation
        train_s = time.perf_counter() - self.started - self.paused
        train_cpu_s = time.process_time() - self.started_cpu - self.paused_cpu
        begin, begin_cpu = time.perf_counter(), time.process_time()
        result = self.evaluate(step)
        eval_s = time.perf_counter() - begin
        self.paused += eval_s
        self.paused_cpu += time.process_time() - begin_cpu
        self.points.append({"step": step, "train_s": round(train_s, 2), "train_cpu_s": round(train_cpu_s, 2), "samples": samples,
                            "tokens": tokens, "eval_s": round(eval_s, 2), **result})
        log.info("step %d: accuracy %.1f %% (yes/no %s, open %s) after %.0f s of training; evaluation took %.0f s",
                 step, result["accuracy"], result["yes_no_accuracy"], result["open_accuracy"], train_s, eval_s)


def due(step: int, plan, side: str) -> bool:
    """Whether ``side`` evaluates after optimizer step ``step``: every ``eval_every`` steps and after its last."""
    return step % plan.eval_every == 0 or step == plan.steps_of(side)


def peak_memory(device: str) -> dict:
    """Peak memory of this process: getrusage maxrss, and on CUDA the allocator's peak."""
    peak = {"peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)}  # Linux: KiB
    if device.startswith("cuda"):
        peak["peak_cuda_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
    return peak
