"""Training throughput of a mini multimodal model: tokens/s, peak memory, achieved FLOP/s vs GEMM.

Saves a *mini* LLaMA-style LLM (hidden 512, 8 layers, 8 heads, MLP 1376, vocab 8000, with a
byte-level BPE tokenizer trained offline) and a CLIP vision tower (hidden 384, 6 layers, patch 16,
224 px, with a CLIPImageProcessor) under a work directory, builds them through
``cotune.model.build_model`` and times real training steps in two configurations:

* ``mma``:  LaVIN-style MM-Adapters in the LLM and in CLIP, lavin-neck on the [cls] tokens of
  CLIP layers 2, 4, 6 (3 image tokens per sample);
* ``lora``: LoRA r=16 on every linear of the LLM's blocks, frozen CLIP, mlp2x-gelu on the 196
  patch tokens of CLIP layer -2 (LLaVA-1.5 style).

Inputs are synthesised tensors (input_ids / labels [B, S], pixel_values [B, 3, 224, 224]), so no
data loading is timed (``benchmarks/data_loader.py`` measures that). A step is what the Trainer
does per optimizer step with one micro-batch: forward with labels, backward of the mean loss,
global grad-norm clipping at 1.0, AdamW (the Trainer's fused/foreach choice), zero_grad.

Model FLOPs per step are measured with ``torch.utils.flop_counter.FlopCounterMode`` around the
first warm-up step (forward + backward; matmuls, convolutions and SDPA, where attention counts the
full S x S square even when causal) and also counted analytically (see ``analytic_flops``).

    python -m benchmarks.train_throughput                    # ~2 min on 2 idle cores; writes the results
    python -m benchmarks.train_throughput --quick            # ~35 s smoke test; results not saved
    python -m benchmarks.train_throughput --precision bf16   # CPU autocast to bf16 (what-if; not saved)
    python -m benchmarks.train_throughput --steps 20 --device cuda   # (the CUDA path is untested)
    python -m benchmarks.train_throughput --case mma --work /tmp/tt  # one config, JSON on stdout

``--zoo`` runs the same two configurations on the zoo's real small models instead (SmolLM2-135M-Instruct
+ MobileNetV2 with the demo's MM-Adapters and LaVIN neck, or LoRA + mlp2x-gelu on the 49-token grid;
``zoo_model.py``), each at the demo's shape (batch 16, 48-token chat rows with 7 image tokens) and at a
longer one (batch 4 x 256 tokens, the GEMM-friendlier row for the FLOP/s fraction); every row is
compared to the GEMM rate at its own shapes (576 / 192 / 1536 / 49152 dims):

    python -m benchmarks.train_throughput --zoo           # ~3 min on 2 idle cores; results/train_throughput-zoo-cpu.md
    python -m benchmarks.train_throughput --zoo --quick   # one step per row, one process; results not saved
    python -m benchmarks.train_throughput --zoo --threads 1   # on a shared machine (see --threads)

The zoo copies come from ``cotune zoo fetch HuggingFaceTB/SmolLM2-135M-Instruct torchvision/mobilenet_v2``
(``$COTUNE_CACHE`` or ``~/.cache/cotune``).

Each config runs in its own process (peak RSS is its own); the report notes how much CPU other
processes took meanwhile, because on a 2-core machine any neighbour distorts the timings.

Results go to ``benchmarks/results/train_throughput-<device>.md`` (``--zoo``: ``train_throughput-zoo-<device>.md``;
fp32 runs without --quick).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


from benchmarks import zoo_model
from benchmarks.mini_model import BATCH, CASES, SEQ, SQUARE, cotune_config, save_backbones, synthetic_batch
from benchmarks.throughput_flops import _now, analytic_flops, flop_counter, forward_flops_by_component, gemm_rate, gemm_table
from benchmarks.throughput_report import Contention, report, summarise

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("benchmarks.train_throughput")


def _peak_memory_gb(device: str) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


class Stepper:
    """One training step of the model, as the Trainer takes it with one micro-batch, in phases.

    ``make_batch(model)`` gives the batch; ``lr``: every group's learning rate (None: the config's
    per-group peak rates); ``supervised_logits``: the LM head only where labels are (the Trainer's way)."""

    def __init__(self, config, make_batch, device: str, precision: str, lr: float | None = 1e-4,
                 supervised_logits: bool = False) -> None:
        from cotune.model import build_model
        from cotune.train.groups import optimizer_groups
        from cotune.train.step import make_optimizer

        self.config, self.device, self.supervised_logits = config, device, supervised_logits
        torch.manual_seed(0)
        self.model = build_model(self.config, device=device)
        self.model.train()
        groups, settings = optimizer_groups(self.model, self.config.train, steps_per_epoch=100)
        for group in groups:
            group["lr"] = settings[group["group"]].lr if lr is None else lr
        self.optimizer = make_optimizer(groups, self.config.train)
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.media = self.model.num_media_tokens("image")
        self.batch = make_batch(self.model)
        self.dtype = torch.bfloat16 if precision == "bf16" else None

    @classmethod
    def mini(cls, work: Path, case: str, device: str, precision: str) -> "Stepper":
        """The mini backbones of mini_model.py, batch BATCH x SEQ, lr 1e-4, logits everywhere."""
        return cls(cotune_config(work, case), lambda m: synthetic_batch(m, m.num_media_tokens("image"), BATCH, SEQ, device),
                   device, precision)

    @classmethod
    def zoo(cls, case: str, shape: str, device: str, precision: str) -> "Stepper":
        """The zoo backbones of zoo_model.py, a ``shape`` chat batch, the demo's learning rates."""
        return cls(zoo_model.zoo_config(case), lambda m: zoo_model.chat_batch(m, shape, device), device, precision,
                   lr=None, supervised_logits=True)

    def forward(self) -> torch.Tensor:
        """The mean loss (autocast to bf16 when asked, as the Trainer does on GPUs)."""
        b = self.batch
        context = torch.autocast(self.device, dtype=self.dtype) if self.dtype is not None else contextlib.nullcontext()
        with context:
            return self.model(b["input_ids"], b["attention_mask"], labels=b["labels"], media=b["media"],
                              supervised_logits=self.supervised_logits).loss

    def update(self) -> None:
        torch.nn.utils.clip_grad_norm_(self.trainable, self.config.train.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def __call__(self) -> tuple[float, list[float]]:
        """One step; returns (loss, [forward s, backward s, optimizer s])."""
        marks = [_now(self.device)]
        loss = self.forward()
        marks.append(_now(self.device))
        loss.backward()
        marks.append(_now(self.device))
        self.update()
        marks.append(_now(self.device))
        return float(loss.detach()), [b - a for a, b in zip(marks, marks[1:])]


def run_case(work: Path, case: str, device: str, precision: str, steps: int, warmup: int, profile_rows: int,
             shape: str | None = None) -> dict:
    """Builds the model of ``case`` (the zoo's, with a ``shape`` batch, when ``shape`` is given); times
    ``steps`` steps after ``warmup`` (the first counted by FlopCounterMode, forward and backward
    apart); optionally profiles one more step."""
    step = Stepper.zoo(case, shape, device, precision) if shape else Stepper.mini(work, case, device, precision)
    batch, seq = step.batch["input_ids"].shape
    kept = zoo_model.supervised_positions(step.batch)
    forward_counter, backward_counter = flop_counter(), flop_counter()
    with forward_counter:
        loss = step.forward()
    with backward_counter:
        loss.backward()
    step.update()
    for _ in range(warmup - 1):
        step()
    phases = []
    for _ in range(steps):
        last_loss, phase = step()
        phases.append(phase)
    result = {
        "case": case, "label": f"{case}, {shape} {batch}x{seq}" if shape else case, "shape": shape, "kept_positions": kept,
        "device": device, "precision": precision, "threads": torch.get_num_threads(), "batch": batch,
        "seq": seq, "media_tokens": step.media, "steps": steps, "warmup": warmup, "phases": phases, "loss": last_loss,
        "peak_memory_gb": _peak_memory_gb(device),
        "params_total": sum(p.numel() for p in step.model.parameters()), "params_trainable": sum(p.numel() for p in step.trainable),
        "counted_fwd": float(forward_counter.get_total_flops()), "counted_bwd": float(backward_counter.get_total_flops()),
        "counted_fwd_components": forward_flops_by_component(forward_counter),
        "analytic": zoo_model.analytic_flops(case, batch, seq, kept) if shape else analytic_flops(case, batch, seq, step.media),
        "optimizer": "fused AdamW" if step.optimizer.defaults.get("fused") else "foreach AdamW",
    }
    if profile_rows:
        result["profile"] = profile_step(step, device, profile_rows)
    return result


CATEGORIES = (  # (category, op-name fragments); the first match wins
    ("matmul (mm, addmm, bmm)", ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")),
    ("attention (SDPA fwd + bwd)", ("scaled_dot_product",)),
    ("loss (log_softmax, nll)", ("log_softmax", "nll_loss")),
    ("optimizer + grad clip", ("adam", "_foreach", "norm_backward", "linalg_vector_norm")),
    ("dropout RNG", ("bernoulli",)),
    ("copies, fills, cat, index", ("copy_", "fill_", "zero_", "cat", "clone", "index", "masked_scatter", "gather", "scatter")),
    ("elementwise + norms", ("aten::",)),
)


def _category(op: str) -> str:
    for name, fragments in CATEGORIES:
        if any(f in op for f in fragments):
            return name
    return "autograd / python overhead"


def profile_step(step: Stepper, device: str, rows: int) -> dict:
    """Self time of one step (torch.profiler) by op, by op and input shapes, and by category."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=activities, record_shapes=True) as prof:
        step()
    attribute = "self_device_time_total" if device == "cuda" else "self_cpu_time_total"
    events = prof.key_averages()
    total = sum(getattr(e, attribute) for e in events) or 1.0

    def top(evts, with_shapes: bool) -> list[dict]:
        ranked = sorted(evts, key=lambda e: getattr(e, attribute), reverse=True)[:rows]
        return [{"op": e.key, "shapes": str(e.input_shapes[:2]) if with_shapes else "", "calls": e.count,
                 "self_ms": getattr(e, attribute) / 1000, "share": getattr(e, attribute) / total} for e in ranked]

    categories: dict[str, float] = {}
    for e in events:
        categories[_category(e.key)] = categories.get(_category(e.key), 0.0) + getattr(e, attribute) / total
    return {"total_ms": total / 1000, "top": top(events, False), "top_shapes": top(prof.key_averages(group_by_input_shape=True), True),
            "categories": dict(sorted(categories.items(), key=lambda kv: -kv[1]))}


def run_case_subprocess(work: Path, case: str, args: argparse.Namespace, shape: str | None = None, profile_rows: int = 0) -> dict:
    """``run_case`` in a fresh process, so its peak RSS is its own."""
    command = [sys.executable, "-m", "benchmarks.train_throughput", "--work", str(work), "--case", case, "--device", args.device, "--precision", args.precision,
               "--steps", str(args.steps), "--warmup", str(args.warmup), "--profile-rows", str(profile_rows),
               "--threads", str(torch.get_num_threads())]
    command += ["--zoo", "--shape", shape] if shape else []
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=None, help="timed optimizer steps per config (default 12, --zoo 3; --quick 3, --zoo 1)")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up steps, the first FLOP-counted (default 2; --quick 1)")
    parser.add_argument("--quick", action="store_true", help="fewer steps, no profile, one process: < 1 min (--zoo: a few); results not saved")
    parser.add_argument("--zoo", action="store_true", help="the zoo's SmolLM2-135M-Instruct + MobileNetV2 (zoo_model.py) instead of "
                        "the mini backbones, at the demo's shape and a 256-token one; results/train_throughput-zoo-<device>.md")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                        help="bf16: autocast the step and measure bf16 GEMMs (results not saved)")
    parser.add_argument("--work", type=Path, default=None, help="where the backbones go (default: a temporary directory)")
    parser.add_argument("--case", choices=CASES, help="run only this config in this process and print its JSON")
    parser.add_argument("--shape", choices=tuple(zoo_model.SHAPES), default="demo", help="with --zoo --case: the batch shape")
    parser.add_argument("--profile-rows", type=int, default=12, help="top ops to list per config (0: no profile; --zoo: demo shape only)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads for the steps and the GEMM rates (default: torch's, one per core); 1 on a busy "
                             "machine, where two OpenMP threads wait on each other (a zoo step measured 3-8x slower)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    args.steps = max(1, args.steps or ((1 if args.zoo else 3) if args.quick else (3 if args.zoo else 12)))
    args.warmup = max(1, args.warmup or (1 if args.quick else 2))
    if args.quick:
        args.profile_rows = 0
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    if args.case:
        if args.work is None and not args.zoo:
            parser.error("--case needs --work (or --zoo)")
        if not args.zoo:
            save_backbones(args.work)
        shape = args.shape if args.zoo else None
        print(json.dumps(run_case(args.work, args.case, args.device, args.precision, args.steps, args.warmup, args.profile_rows, shape)))
        return 0
    with tempfile.TemporaryDirectory(prefix="cotune-train-bench-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        return _run_all(work, args)


def _run_all(work: Path, args: argparse.Namespace) -> int:
    start, contention = time.perf_counter(), Contention()
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    if args.zoo:
        rows = [(case, shape) for case in zoo_model.CASES for shape in zoo_model.SHAPES]
        gemm = {"square": gemm_rate(SQUARE, args.device, dtype, 2 if args.quick else 4), "by_row": {}}
        log.info("GEMM %s: %.1f GFLOP/s", SQUARE, gemm["square"] / 1e9)
    else:
        rows = [(case, None) for case in CASES]
        save_backbones(work)
        gemm = gemm_table(args.device, dtype, args.quick)
        log.info("GEMM %s: %.1f GFLOP/s; model shapes %.1f GFLOP/s", SQUARE, gemm["square"] / 1e9, gemm["model_shape_rate"] / 1e9)
    results = []
    for case, shape in rows:
        profile_rows = args.profile_rows if shape in (None, "demo") else 0
        if args.quick:  # one process: saves start-up, but peak RSS is then cumulative
            results.append(run_case(work, case, args.device, args.precision, args.steps, args.warmup, 0, shape))
        else:
            results.append(run_case_subprocess(work, case, args, shape, profile_rows))
        r = results[-1]
        if args.zoo:  # the GEMM rate at this row's shapes, measured right after it
            shapes = zoo_model.model_shapes(r["batch"], r["seq"], r["kept_positions"])
            gemm["by_row"][r["label"]] = gemm_table(args.device, dtype, args.quick, shapes, gemm["square"])
        s = summarise(r, gemm)
        log.info("%s: %.2f s/step (min %.2f), %.0f tokens/s, %.1f GFLOP/s (%.0f%% of square GEMM, %.0f%% of model-shape GEMM)",
                 r["label"], s["mean_s"], s["min_s"], s["tokens_per_s"], s["achieved"] / 1e9, 100 * s["vs_square"], 100 * s["vs_model"])
    command = ("python -m benchmarks.train_throughput " + " ".join(sys.argv[1:])).strip()
    others = contention.others()
    if others[1] > 0.05:
        log.warning("other processes used %.0f%% of the machine during the run: timings are pessimistic", 100 * others[1])
    text = report(results, gemm, args, command, time.perf_counter() - start, others, zoo=args.zoo)
    if args.quick:
        text += "\n--quick: all configs ran in one process (peak RSS is cumulative), few steps: a smoke test.\n"
    print(text)
    if not args.quick and args.precision == "fp32":
        path = ROOT / "benchmarks" / "results" / f"train_throughput-{'zoo-' if args.zoo else ''}{args.device}.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        log.info("wrote %s", path.relative_to(ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
