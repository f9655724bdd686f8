"""cotune's LaVIN-style recipe against the LLaVA-style route, on easy-VQA with SmolLM2-135M-Instruct
and MobileNetV2: trainable parameters, tokens/s, samples/s, peak memory, and the training wall time
each needs to reach the baseline's final held-out accuracy.

Sides (each runs in its own process, so peak RSS is its own):

* ``cotune`` (``--recipe``, ``RECIPES``): ``grounded`` (the default), the demo recipe
  (``cotune/demo/demo.yaml``) restricted to images: the Whisper encoder and its settings dropped,
  everything else as shipped: LoRA r 16 on every linear layer of SmolLM2, gated by media, at lr
  1e-3; a LaVIN neck (lr 3e-3) on MobileNetV2's 7 x 7 grid averaged row by row (7 image tokens);
  the frozen MobileNetV2's features computed once per image (the demo's feature cache); the
  modality embedding; CoMMIT's coordinated rates (``commit_clr``, exact kappa every 50 steps,
  ``kl_equalise``); 15 warmup steps, cosine; cotune's own Trainer. ``mm_adapter``: the recipe
  the first results were measured with (``benchmarks/mm_adapter_recipe.yaml``: MM-Adapters, dim
  8, 2 experts, in all 30 SmolLM2 blocks and all 18 MobileNetV2 blocks, LLM adapters 1e-3,
  encoder adapters 3e-4, neck and modality embedding 3e-3, CoMMIT).
* ``baseline``: ``llava_baseline.py``, written as a user would with transformers + PEFT: all 49
  patch tokens of the same grid through an ``mlp2x_gelu`` projector spliced into the LLM's
  ``inputs_embeds``, LoRA on every linear layer of the LLM, ``transformers.Trainer``, LLaVA-1.5's
  LoRA recipe (r 128, alpha 256, dropout 0.05, lr 2e-4, cosine, warmup ratio 0.03, weight decay 0)
  with the projector at stage 1's lr 1e-3 because nothing pretrained it (that module's docstring
  lists every choice). ``LlavaForConditionalGeneration`` is not used: it needs a transformers
  vision config, which cotune's MobileNetV2 has not.

Same for both, so the comparison is the method and not the data:

* backbones: the zoo's SmolLM2-135M-Instruct and MobileNetV2 (the same files), float32 on CPU;
  on CUDA the frozen LLM in bfloat16 with bf16 autocast (as ``cotune demo`` does on a GPU);
* images: 224 px through MobileNetV2's image processor as cotune builds it (the 64 px easy-VQA
  PNGs resized to 256 and centre-cropped to 224), so both see the same pixels;
* training samples: ``steps x batch_size`` easy-VQA train questions drawn once (seeded, without
  replacement) from the first ``--pool`` questions in the recipe's mix
  (``versus_llava_measure.training_mix``): for ``grounded`` the demo's image mix (``SHARES`` in
  ``cotune/demo/pipeline.py``: half colour/shape questions, half yes/no drawn equally per answer
  and polarity, so the wording predicts no answer) with yes/no targets "<colour> <shape>:
  <answer>" as cotune's reader makes them (``targets: describe``); for ``mm_adapter`` 70 %
  colour/shape and 30 % yes/no with plain answers (easy-VQA itself is 74 % yes/no). They are
  written once as an easy-VQA questions file whose answers are the targets, which both sides read,
  each sample seen once in an order each side shuffles with its own seeded sampler;
* prompts: the tokenizer's chat template with the system prompt "Answer briefly.", the image in
  front of the question; the answer and the end-of-turn token supervised;
* the batch size and the number of steps;
* held-out accuracy: the same ``--eval-questions`` easy-VQA test questions (a seeded subset chosen
  as ``cotune eval --limit N --sample-seed 0`` chooses), greedy answers of at most 6 new tokens
  (the demo's ``max_new_tokens``), decoded and scored by cotune's easy-VQA task (VQA-normalised
  exact match of the word after a description's last ``:``, ``cotune.eval.tasks``) for both
  sides' predictions; also with each image swapped for another's (cotune's shuffle ablation; at
  every evaluation, or with ``--shuffled last`` only at the last), and on the yes/no questions whose
  answer the wording does not predict. The time target is judged only when neither side is below
  chance on those (``versus_llava_report.at_wording_prior``).

Timing: each side's training clock starts when its training loop starts (model loading and data
set preparation are not counted) and stops for every evaluation, so "train seconds" is training
only, data loading and optimizer included. Evaluations run every ``--eval-every`` steps and after
the last. The baseline's target is its accuracy at its last evaluation; cotune's time to reach it
is the train seconds of its first evaluation at or above it (the headline: the curves are only
measured at evaluation points), and linearly interpolated between that evaluation and the one
before (given too). tokens/s counts every sequence token that is not padding, media tokens
included (7 per sample for cotune, 49 for the baseline); samples/s counts training samples; both
over the whole train seconds. Peak memory: ``getrusage`` maxrss of the side's process (model
loading and evaluation included), on CUDA also ``torch.cuda.max_memory_allocated``.

Default size: 100 steps of 16 samples per side (1,600 questions; 16 is the demo's batch size),
evaluations every 20 steps on 1,000 test questions. On the 2-core AMD EPYC with one torch thread
per side and the two sides at once (``--parallel --threads 1``), a step of the grounded recipe
took about 5 s and a baseline step about 17 s; an evaluation of 1,000 questions takes minutes
per side, so ``--eval-every 25 --shuffled last`` is the recorded run's size (docs/benchmarks.md).

    COTUNE_CACHE=/tmp/zoo/cache python -m benchmarks.versus_llava --eval-every 25 --shuffled last --parallel --threads 1
                                                  # the recorded run: writes results/versus_llava-cpu.{json,md,png}
    python -m benchmarks.versus_llava --recipe mm_adapter --eval-questions 200   # results/versus_llava-cpu-mm-adapter.*
    COTUNE_CACHE=/tmp/zoo/cache python -m benchmarks.versus_llava --quick     # a few minutes idle; prints only
    python -m benchmarks.versus_llava --device cuda --steps 600 --eval-every 50 --eval-questions 1000

``--side cotune|baseline --work DIR`` runs one side in this process (what the parent starts).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from benchmarks.throughput_report import Contention, machine
from benchmarks.versus_llava_measure import RECIPES, draw_training_set
from benchmarks.versus_llava_report import report_files
from benchmarks.versus_llava_sides import MAX_NEW_TOKENS, run_baseline, run_cotune

ROOT = Path(__file__).resolve().parents[1]

log = logging.getLogger("benchmarks.versus_llava")

SIDES = ("cotune", "baseline")


@dataclass(frozen=True)
class Plan:
    """What both sides do (module docstring)."""

    steps: int = 100
    cotune_steps: int | None = None
    batch_size: int = 16
    eval_every: int = 20
    eval_questions: int = 1000
    eval_batch_size: int = 32
    eval_at_start: bool = False
    pool: int = 12000
    seed: int = 0
    device: str = "cpu"
    threads: int = 2
    recipe: str = "grounded"
    shuffled_at: str = "every"
    parallel: bool = False
    cotune_overrides: tuple[str, ...] = ()
    tag: str = ""

    def __post_init__(self) -> None:
        if self.recipe not in RECIPES:
            raise ValueError(f"recipe: {self.recipe!r} is not one of {', '.join(RECIPES)}")
        if self.shuffled_at not in ("every", "last"):
            raise ValueError(f"shuffled_at: {self.shuffled_at!r} is not one of every, last")
        if not re.fullmatch(r"[A-Za-z0-9_.-]*", self.tag):
            raise ValueError(f"tag: {self.tag!r} must be letters, digits, '_', '.' or '-' (it names the results files)")
        object.__setattr__(self, "cotune_overrides", tuple(self.cotune_overrides))  # a list when read back from JSON

    def shuffled_due(self, step: int, side: str) -> bool:
        """Whether the evaluation after ``step`` also answers with shuffled images (``shuffled_at``:
        at every evaluation, or only at ``side``'s last)."""
        return self.shuffled_at == "every" or step == self.steps_of(side)

    def steps_of(self, side: str) -> int:
        """Optimizer steps of ``side``: ``cotune_steps`` (default ``steps``) lets cotune, whose steps
        are cheaper, train for about the baseline's wall time, so that its time to the baseline's
        accuracy is measured and not only bounded."""
        return (self.cotune_steps or self.steps) if side == "cotune" else self.steps

    @classmethod
    def quick(cls, **fields) -> "Plan":
        return cls(**{"steps": 12, "batch_size": 8, "eval_every": 6, "eval_questions": 32, **fields})


# ---------------------------------------------------------------------------------- driver


def run_side(side: str, work: Path, plan: Plan) -> dict:
    """Runs ``side`` in a fresh process (its own peak RSS, one device setting) and returns its result."""
    result = work / f"{side}.json"
    command = [sys.executable, "-m", "benchmarks.versus_llava", "--side", side, "--work", str(work), "--result", str(result),
               "--plan", json.dumps(asdict(plan))]
    env = {**os.environ, "OMP_NUM_THREADS": str(plan.threads), "TOKENIZERS_PARALLELISM": "false"}
    env.setdefault("HF_HUB_OFFLINE", "1")  # the zoo copies; no 3 s hub probe per backbone
    if not plan.device.startswith("cuda"):
        env["CUDA_VISIBLE_DEVICES"] = ""  # cotune's Trainer takes a visible GPU by itself
    log.info("%s: starting (%d steps of %d)", side, plan.steps_of(side), plan.batch_size)
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env)
    if done.returncode:
        raise RuntimeError(f"the {side} side failed (exit {done.returncode}): {' '.join(command)}")
    data = json.loads(result.read_text())
    data["process_s"] = round(time.perf_counter() - started, 1)
    return data


#: Plan fields that change the baseline's run (cotune_steps does not: its draw is unchanged).
BASELINE_FIELDS = ("steps", "batch_size", "eval_every", "eval_questions", "eval_batch_size", "eval_at_start", "pool", "seed", "device",
                   "threads", "recipe", "shuffled_at", "parallel")


def reused_baseline(work: Path, plan: Plan) -> dict:
    """The baseline's result from an earlier run in ``work`` with the same baseline settings."""
    path = work / "baseline.json"
    if not path.is_file():
        raise SystemExit(f"--reuse-baseline: no {path}; run once without it (with --work {work})")
    data = json.loads(path.read_text())
    recorded = data.get("plan", {})
    differ = [f for f in BASELINE_FIELDS if recorded.get(f) != getattr(plan, f)]
    if differ:
        raise SystemExit(f"--reuse-baseline: {path} was run with other settings ({', '.join(f'{f} {recorded.get(f)!r}' for f in differ)})")
    log.info("baseline: reusing %s (%s steps)", path, recorded["steps"])
    return {**data, "reused_from": str(path)}


def _child(args: argparse.Namespace) -> int:
    plan = Plan(**json.loads(args.plan))
    torch.set_num_threads(plan.threads)
    from cotune.zoo import dataset_dir

    easyvqa = dataset_dir("easy-vqa")
    runner = run_cotune if args.side == "cotune" else run_baseline
    result = {**runner(args.work, easyvqa, plan), "plan": asdict(plan)}
    args.result.write_text(json.dumps(result, indent=2) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="12 steps of 8, 32 questions: a few minutes; prints only")
    parser.add_argument("--steps", type=int, help="optimizer steps per side (default 100; --quick 12)")
    parser.add_argument("--cotune-steps", type=int, help="cotune's steps if not --steps: its steps are cheaper, so it can train "
                        "for about the baseline's wall time (default: --steps)")
    parser.add_argument("--reuse-baseline", action="store_true", help="take the baseline's result from --work/baseline.json when "
                        "it was run with the same settings (the baseline does not depend on cotune's code or steps)")
    parser.add_argument("--batch-size", type=int, help="samples per step, both sides (default 16; --quick 8)")
    parser.add_argument("--eval-every", type=int, help="evaluate every N steps and after the last (default 20; --quick 6)")
    parser.add_argument("--eval-questions", type=int, help="held-out easy-VQA test questions (default 1000; --quick 32)")
    parser.add_argument("--eval-batch-size", type=int, default=32, help="questions per generation batch (default 32)")
    parser.add_argument("--eval-at-start", action="store_true", help="also evaluate the untrained models (step 0)")
    parser.add_argument("--pool", type=int, default=12000, help="draw training questions from the first N train questions (default 12000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--recipe", choices=RECIPES, default="grounded", help="cotune's recipe and the training mix both sides "
                        "draw: grounded (the demo's, default) or mm_adapter (the first results' recipe)")
    parser.add_argument("--shuffled", choices=("every", "last"), default="every", help="answer with shuffled images at every "
                        "evaluation or only at each side's last (default every)")
    parser.add_argument("--cotune-set", action="append", default=[], metavar="KEY=VALUE", help="override cotune's recipe "
                        "(dotted keys, as cotune train --set; repeatable), e.g. model.llm.adapter.lora_r=8")
    parser.add_argument("--tag", default="", help="results file versus_llava-<device>[-mm-adapter]-TAG (for a variant)")
    parser.add_argument("--parallel", action="store_true", help="run the two sides at the same time, each with --threads "
                        "threads (a core each with --threads 1 on two cores)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="cuda: frozen LLM in bfloat16, bf16 autocast")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads per side (default: all cores)")
    parser.add_argument("--out", type=Path, help="results directory (default benchmarks/results; --quick writes only with --out)")
    parser.add_argument("--work", type=Path, help="keep the training set and both runs here (default: a temporary directory)")
    parser.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--plan", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    if args.side:
        if not (args.work and args.result and args.plan):
            parser.error("--side needs --work, --result and --plan")
        return _child(args)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    given = {k: v for k, v in (("steps", args.steps), ("cotune_steps", args.cotune_steps), ("batch_size", args.batch_size),
                                ("eval_every", args.eval_every),
                                ("eval_questions", args.eval_questions)) if v is not None}
    fields = dict(eval_batch_size=args.eval_batch_size, eval_at_start=args.eval_at_start, pool=args.pool, seed=args.seed,
                  device=args.device, threads=args.threads, recipe=args.recipe, shuffled_at=args.shuffled, parallel=args.parallel,
                  cotune_overrides=tuple(args.cotune_set), tag=args.tag,
                  **given)
    try:
        plan = Plan.quick(**fields) if args.quick else Plan(**fields)
    except ValueError as err:
        parser.error(str(err))
    if plan.cotune_steps is not None and plan.cotune_steps < 1:
        parser.error(f"--cotune-steps: must be >= 1, got {plan.cotune_steps}")
    for name in ("steps", "batch_size", "eval_every", "eval_questions", "eval_batch_size", "threads"):
        if getattr(plan, name) < 1:
            parser.error(f"--{name.replace('_', '-')}: must be >= 1, got {getattr(plan, name)}")
    torch.set_num_threads(plan.threads)
    from cotune.zoo import dataset_dir

    easyvqa = dataset_dir("easy-vqa")
    started, contention = time.perf_counter(), Contention()
    with tempfile.TemporaryDirectory(prefix="cotune-versus-llava-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        # A reused --work: cotune's Trainer refuses a non-empty run directory.
        for old in ("cotune-run", "features") if args.reuse_baseline else ("cotune-run", "features", "baseline-run"):
            shutil.rmtree(work / old, ignore_errors=True)
        draw_training_set(easyvqa, plan, work)
        reused = reused_baseline(work, plan) if args.reuse_baseline else None  # checked before cotune's run
        todo = [side for side in SIDES if not (side == "baseline" and reused)]
        with ThreadPoolExecutor(max_workers=len(todo) if plan.parallel else 1) as pool:
            ran = dict(zip(todo, pool.map(lambda side: run_side(side, work, plan), todo)))
        results = {side: ran.get(side, reused) for side in SIDES}
    command = ("python -m benchmarks.versus_llava " + " ".join(argv if argv is not None else sys.argv[1:])).strip()
    info = machine("cuda" if plan.device.startswith("cuda") else "cpu")
    out = args.out or (None if args.quick else ROOT / "benchmarks" / "results")
    text = report_files(results, plan, MAX_NEW_TOKENS, command, info, contention.others(), time.perf_counter() - started, out)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
