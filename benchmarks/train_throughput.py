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

    python benchmarks/train_throughput.py                    # ~2 min on 2 idle cores; writes the results
    python benchmarks/train_throughput.py --quick            # ~35 s smoke test; results not saved
    python benchmarks/train_throughput.py --precision bf16   # CPU autocast to bf16 (what-if; not saved)
    python benchmarks/train_throughput.py --steps 20 --device cuda   # (the CUDA path is untested)
    python benchmarks/train_throughput.py --case mma --work /tmp/tt  # one config, JSON on stdout

Each config runs in its own process (peak RSS is its own); the report notes how much CPU other
processes took meanwhile, because on a 2-core machine any neighbour distorts the timings.

Results go to ``benchmarks/results/train_throughput-<device>.md`` (fp32 runs without --quick).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("benchmarks.train_throughput")

CASES = ("mma", "lora")
BATCH, SEQ = 8, 256
LLM = dict(vocab_size=8000, hidden_size=512, intermediate_size=1376, num_hidden_layers=8, num_attention_heads=8,
           num_key_value_heads=8, max_position_embeddings=1024)
TOKENIZER_SIZE = 7936  # the LLM has 8000 rows: room above the tokenizer's ids
CLIP = dict(hidden_size=384, intermediate_size=1536, num_hidden_layers=6, num_attention_heads=6, image_size=224, patch_size=16)
LORA_R = 16
#: [M x K] @ [K x N] GEMMs at the model's shapes (M = B*S LLM tokens or B*197 CLIP tokens) and the
#: number of such products in one forward pass, used to weight a "model-shape GEMM" rate.
SQUARE = (4096, 4096, 4096)
MODEL_SHAPES = (
    ((BATCH * SEQ, 512, 512), 4 * 8), ((BATCH * SEQ, 512, 1376), 2 * 8), ((BATCH * SEQ, 1376, 512), 8),
    ((BATCH * SEQ, 512, 8000), 1), ((BATCH * 197, 384, 384), 4 * 6), ((BATCH * 197, 384, 1536), 6),
    ((BATCH * 197, 1536, 384), 6),
)


# ---------------------------------------------------------------------------------- backbones


def make_tokenizer():
    """A byte-level BPE of TOKENIZER_SIZE entries trained on pseudo-words (offline, < 1 s)."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    rng = random.Random(0)
    syllables = [c + v for c in "bcdfghjklmnprstvwz" for v in "aeiou"] + ["th", "sh", "ch", "qu", "ng"]
    words = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(30000)]
    lines = [" ".join(rng.choice(words) for _ in range(20)) for _ in range(5000)]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TOKENIZER_SIZE, special_tokens=["<pad>", "<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    backend.train_from_iterator(lines, trainer)
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )


def save_backbones(work: Path) -> dict[str, Path]:
    """Random mini LLaMA (+ tokenizer) and CLIP (+ image processor) saved with save_pretrained."""
    import transformers

    paths = {"llm": work / "llm-mini", "clip": work / "clip-mini"}
    if all((p / "config.json").exists() for p in paths.values()):
        return paths
    torch.manual_seed(0)
    config = transformers.LlamaConfig(**LLM, pad_token_id=0, bos_token_id=2, eos_token_id=3, tie_word_embeddings=False)
    transformers.LlamaForCausalLM(config).save_pretrained(paths["llm"])
    make_tokenizer().save_pretrained(paths["llm"])
    transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**CLIP)).save_pretrained(paths["clip"])
    transformers.CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}).save_pretrained(paths["clip"])
    return paths


def cotune_config(work: Path, case: str):
    """The config of one case (see the module docstring)."""
    from cotune.config import load_config

    paths = save_backbones(work)
    if case == "mma":
        adapter = {"type": "mm_adapter", "dim": 8, "groups": 2, "experts": 2, "dropout": 0.1}
        llm = {"trainable": "adapter", "adapter": adapter}
        image = {"layers": [2, 4, 6], "reduce": "cls", "trainable": "adapter", "adapter": adapter,
                 "connector": {"type": "lavin-neck", "hidden": 128}}
    else:
        llm = {"trainable": "lora", "adapter": {"type": "lora", "lora_r": LORA_R, "lora_alpha": 2 * LORA_R, "target_modules": ["all-linear"]}}
        image = {"layers": [-2], "reduce": "patches", "trainable": "frozen", "connector": {"type": "mlp2x-gelu"}}
    raw = {"model": {"llm": {"name_or_path": str(paths["llm"]), **llm},
                     "encoders": {"image": {"type": "clip", "name_or_path": str(paths["clip"]), **image}}}}
    return load_config(data=raw)


# ---------------------------------------------------------------------------------- FLOPs


def analytic_flops(case: str, batch: int, seq: int, media: int) -> dict[str, dict[str, float]]:
    """Matmul FLOPs of one step (2 per multiply-add): {component: {"fwd": ..., "bwd": ...}}.

    Forward: 2 x (weights) x (tokens) for every linear, adapters included, plus attention 4 x L x S^2 x d
    per sample (QK^T and AV over the full square, the FlopCounterMode convention; the LLM's causal
    kernel skips about half of it). Backward of a frozen linear is its input gradient only (1x
    forward), a trainable one adds its weight gradient (2x); attention backward is 2.5x forward (dQ, dK,
    dV, dP plus the recomputed QK^T of flash kernels, as torch's SDPA backward formula counts). Parts
    below which nothing trains get no backward: all of CLIP in ``lora`` (frozen, run without grad),
    the patch convolution in both cases, linear_1's input gradient in ``lora``'s mlp2x-gelu.
    Elementwise ops, norms, softmax, cross-entropy, the optimizer and the one-token routing pass of
    ``mma`` are not counted.
    """
    d, inner, layers, vocab = LLM["hidden_size"], LLM["intermediate_size"], LLM["num_hidden_layers"], LLM["vocab_size"]
    de, ie, le, patch = CLIP["hidden_size"], CLIP["intermediate_size"], CLIP["num_hidden_layers"], CLIP["patch_size"]
    n = (CLIP["image_size"] // patch) ** 2 + 1
    t, te = batch * seq, batch * n
    llm_linear = 2 * t * (layers * (4 * d * d + 3 * d * inner) + d * vocab)
    llm_attention = 4 * batch * layers * seq * seq * d
    enc_linear = 2 * te * le * (4 * de * de + 2 * de * ie)
    enc_attention = 4 * batch * le * n * n * de
    conv = 2 * batch * (n - 1) * 3 * patch * patch * de
    if case == "mma":
        hidden, groups, experts = 8, 2, 2
        # LLM: down C->h, per-sample mixed grouped up h/g->C. CLIP (per-token router): router C->E,
        # down, and the grouped up of every expert.
        llm_adapter = 2 * t * layers * (d * hidden + hidden // groups * d)
        enc_adapter = 2 * te * le * (de * experts + de * hidden + experts * hidden // groups * de)
        connector = 2 * batch * media * (de * 128 + 128 * d)
        return {
            "llm": {"fwd": llm_linear + llm_attention + llm_adapter, "bwd": llm_linear + 2.5 * llm_attention + 2 * llm_adapter},
            "encoder": {"fwd": enc_linear + enc_attention + conv + enc_adapter, "bwd": enc_linear + 2.5 * enc_attention + 2 * enc_adapter},
            "connector": {"fwd": connector, "bwd": 2 * connector},
        }
    lora = 2 * t * layers * LORA_R * (4 * (d + d) + 2 * (d + inner) + (inner + d))
    first, second = 2 * batch * media * de * d, 2 * batch * media * d * d
    return {
        "llm": {"fwd": llm_linear + llm_attention + lora, "bwd": llm_linear + 2.5 * llm_attention + 2 * lora},
        "encoder": {"fwd": enc_linear + enc_attention + conv, "bwd": 0.0},
        "connector": {"fwd": first + second, "bwd": first + 2 * second},
    }


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_sdpa_backward_flops(grad_out_shape, query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_backward_flop_count

    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def flop_counter():
    """FlopCounterMode that also counts the CPU flash-attention kernels (torch 2.13 has formulas
    only for the CUDA SDPA kernels, so CPU attention would count as 0)."""
    from torch.utils.flop_counter import FlopCounterMode

    aten = torch.ops.aten
    mapping = {aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops,
               aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward_flops}
    return FlopCounterMode(display=False, depth=4, custom_mapping=mapping)


def forward_flops_by_component(counter) -> dict[str, float]:
    """Forward FLOPs per CotuneModel component (``llm``, ``encoder``, ``connector``) from a counter
    that saw only the forward pass (the module tracker's attribution of backward ops is unreliable)."""
    names = {"CotuneModel.llm": "llm", "CotuneModel.encoders.image.backbone": "encoder", "CotuneModel.connectors.image": "connector"}
    return {names[k]: float(sum(ops.values())) for k, ops in counter.get_flop_counts().items() if k in names}


# ---------------------------------------------------------------------------------- GEMM


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _now(device: str) -> float:
    _sync(device)
    return time.perf_counter()


def gemm_rate(shape: tuple[int, int, int], device: str, dtype: torch.dtype, reps: int) -> float:
    """FLOP/s of torch.matmul [M x K] @ [K x N] in ``dtype`` (one untimed call, then the best of ``reps``)."""
    m, k, n = shape
    a, b = torch.randn(m, k, device=device, dtype=dtype), torch.randn(k, n, device=device, dtype=dtype)
    torch.matmul(a, b)
    best = float("inf")
    for _ in range(reps):
        start = _now(device)
        torch.matmul(a, b)
        best = min(best, _now(device) - start)
    return 2 * m * k * n / best


def gemm_table(device: str, dtype: torch.dtype, quick: bool) -> dict:
    """The square GEMM rate and the rates at the model's shapes (with their FLOP-weighted harmonic mean)."""
    square = gemm_rate(SQUARE, device, dtype, 2 if quick else 4)
    rows, flops, seconds = [], 0.0, 0.0
    for shape, count in MODEL_SHAPES:
        rate = gemm_rate(shape, device, dtype, 3 if quick else 10)
        work = 2 * shape[0] * shape[1] * shape[2] * count
        flops, seconds = flops + work, seconds + work / rate
        rows.append({"shape": shape, "count": count, "rate": rate})
    return {"square": square, "shapes": rows, "model_shape_rate": flops / seconds}


# ---------------------------------------------------------------------------------- one case


def synthetic_batch(model, media: int, batch: int, seq: int, device: str) -> dict:
    """input_ids [B, S]: <s>, ``media`` image placeholders, random text ids; labels supervise the
    second half of each row; pixel_values [B, 3, 224, 224] float; no padding."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, TOKENIZER_SIZE, (batch, seq), generator=g)
    ids[:, 0] = model.tokenizer.bos_token_id
    ids[:, 1:1 + media] = model.placeholder_ids["image"]
    labels = ids.clone()
    labels[:, : seq // 2] = -100
    pixels = torch.randn(batch, 3, CLIP["image_size"], CLIP["image_size"], generator=g)
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device),
            "labels": labels.to(device), "media": {"image": pixels.to(device)}}


def _peak_memory_gb(device: str) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


class Stepper:
    """One training step of the model, as the Trainer takes it with one micro-batch, in phases."""

    def __init__(self, work: Path, case: str, device: str, precision: str) -> None:
        from cotune.model import build_model
        from cotune.train.groups import optimizer_groups
        from cotune.train.loop import _make_optimizer

        self.config = cotune_config(work, case)
        self.device = device
        torch.manual_seed(0)
        self.model = build_model(self.config, device=device)
        self.model.train()
        groups, _settings = optimizer_groups(self.model, self.config.train, steps_per_epoch=100)
        for group in groups:
            group["lr"] = 1e-4
        self.optimizer = _make_optimizer(groups, self.config.train)
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.media = self.model.num_media_tokens("image")
        self.batch = synthetic_batch(self.model, self.media, BATCH, SEQ, device)
        self.dtype = torch.bfloat16 if precision == "bf16" else None

    def forward(self) -> torch.Tensor:
        """The mean loss (autocast to bf16 when asked, as the Trainer does on GPUs)."""
        b = self.batch
        context = torch.autocast(self.device, dtype=self.dtype) if self.dtype is not None else contextlib.nullcontext()
        with context:
            return self.model(b["input_ids"], b["attention_mask"], labels=b["labels"], media=b["media"]).loss

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


def run_case(work: Path, case: str, device: str, precision: str, steps: int, warmup: int, profile_rows: int) -> dict:
    """Builds the model of ``case``; times ``steps`` steps after ``warmup`` (the first counted by
    FlopCounterMode, forward and backward apart); optionally profiles one more step."""
    step = Stepper(work, case, device, precision)
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
        "case": case, "device": device, "precision": precision, "threads": torch.get_num_threads(), "batch": BATCH,
        "seq": SEQ, "media_tokens": step.media, "steps": steps, "warmup": warmup, "phases": phases, "loss": last_loss,
        "peak_memory_gb": _peak_memory_gb(device),
        "params_total": sum(p.numel() for p in step.model.parameters()), "params_trainable": sum(p.numel() for p in step.trainable),
        "counted_fwd": float(forward_counter.get_total_flops()), "counted_bwd": float(backward_counter.get_total_flops()),
        "counted_fwd_components": forward_flops_by_component(forward_counter),
        "analytic": analytic_flops(case, BATCH, SEQ, step.media),
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


def run_case_subprocess(work: Path, case: str, args: argparse.Namespace) -> dict:
    """``run_case`` in a fresh process, so its peak RSS is its own."""
    command = [sys.executable, __file__, "--work", str(work), "--case", case, "--device", args.device, "--precision", args.precision,
               "--steps", str(args.steps), "--warmup", str(args.warmup), "--profile-rows", str(args.profile_rows)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------- report


def machine(device: str) -> dict[str, str]:
    import transformers

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
    info = {"nproc": str(os.cpu_count()), "cpu": cpu, "SIMD": ", ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f" {f}" in flags),
            "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "torch threads": str(torch.get_num_threads()), "BLAS": "MKL" if torch.backends.mkl.is_available() else "other"}
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    return info


def _g(flops: float) -> str:
    return f"{flops / 1e9:.1f}" if flops == 0 or flops >= 5e7 else f"{flops / 1e9:.3f}"


def summarise(r: dict, gemm: dict) -> dict:
    totals = [sum(p) for p in r["phases"]]
    mean = sum(totals) / len(totals)
    counted = r["counted_fwd"] + r["counted_bwd"]
    analytic = sum(part["fwd"] + part["bwd"] for part in r["analytic"].values())
    achieved = counted / mean
    phases = [sum(p[i] for p in r["phases"]) / len(totals) for i in range(3)]
    return {"mean_s": mean, "min_s": min(totals), "tokens_per_s": r["batch"] * r["seq"] / mean, "counted": counted,
            "analytic": analytic, "achieved": achieved, "vs_square": achieved / gemm["square"],
            "vs_model": achieved / gemm["model_shape_rate"], "phases": phases}


def results_table(results: list[dict], gemm: dict) -> list[str]:
    lines = [
        "| config | trainable / total params | media tokens | step s (mean, min) | tokens/s | peak memory GB | "
        "FLOPs per step (counted) | achieved GFLOP/s | vs square GEMM | vs model-shape GEMM | target >= 50% of GEMM |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        s = summarise(r, gemm)
        memory = "RSS" if r["device"] == "cpu" else "cuda"
        lines.append(
            f"| {r['case']} | {r['params_trainable'] / 1e6:.2f}M / {r['params_total'] / 1e6:.1f}M | {r['media_tokens']} | "
            f"{s['mean_s']:.2f}, {s['min_s']:.2f} | {s['tokens_per_s']:.0f} | {r['peak_memory_gb']:.2f} ({memory}) | "
            f"{_g(s['counted'])} G | {s['achieved'] / 1e9:.1f} | {100 * s['vs_square']:.0f}% | {100 * s['vs_model']:.0f}% | "
            f"{'met' if s['vs_square'] >= 0.5 else 'NOT met'} |"
        )
    return lines


def phase_table(results: list[dict], gemm: dict) -> list[str]:
    lines = ["| config | forward s | backward s | clip + optimizer s | forward GFLOP/s | backward GFLOP/s |", "|---|---:|---:|---:|---:|---:|"]
    for r in results:
        f, b, o = summarise(r, gemm)["phases"]
        lines.append(f"| {r['case']} | {f:.2f} | {b:.2f} | {o:.3f} | {r['counted_fwd'] / f / 1e9:.1f} | {r['counted_bwd'] / b / 1e9:.1f} |")
    return lines


def flops_table(results: list[dict]) -> list[str]:
    lines = ["| config | part | analytic fwd G | counted fwd G | analytic bwd G |", "|---|---|---:|---:|---:|"]
    for r in results:
        counted = r["counted_fwd_components"]
        for part, value in r["analytic"].items():
            lines.append(f"| {r['case']} | {part} | {_g(value['fwd'])} | {_g(counted.get(part, 0.0))} | {_g(value['bwd'])} |")
        analytic_fwd = sum(v["fwd"] for v in r["analytic"].values())
        analytic_bwd = sum(v["bwd"] for v in r["analytic"].values())
        lines.append(f"| {r['case']} | **total** (counted bwd {_g(r['counted_bwd'])} G) | {_g(analytic_fwd)} | "
                     f"{_g(r['counted_fwd'])} | {_g(analytic_bwd)} |")
    return lines


def gemm_lines(gemm: dict, dtype: str) -> list[str]:
    lines = [f"| {dtype} GEMM [M x K] @ [K x N] | per forward | GFLOP/s |", "|---|---:|---:|",
             f"| [{SQUARE[0]} x {SQUARE[1]}] @ [{SQUARE[1]} x {SQUARE[2]}] (square) | - | {gemm['square'] / 1e9:.1f} |"]
    for row in gemm["shapes"]:
        m, k, n = row["shape"]
        lines.append(f"| [{m} x {k}] @ [{k} x {n}] | {row['count']} | {row['rate'] / 1e9:.1f} |")
    lines.append(f"| model-shape rate (harmonic mean weighted by FLOPs per forward) | | {gemm['model_shape_rate'] / 1e9:.1f} |")
    return lines


def profile_lines(result: dict) -> list[str]:
    prof = result.get("profile")
    if not prof:
        return [f"`{result['case']}`: not profiled in this run."]
    lines = [f"### {result['case']}", "", f"One profiled step of `{result['case']}` (torch.profiler, record_shapes; the profiler adds overhead): "
             f"{prof['total_ms']:.0f} ms of self CPU time.", "", "| category | share of self time |", "|---|---:|"]
    lines += [f"| {name} | {100 * share:.1f}% |" for name, share in prof["categories"].items()]
    lines += ["", "Top ops by self time:", "", "| op | calls | self ms | share |", "|---|---:|---:|---:|"]
    lines += [f"| `{t['op']}` | {t['calls']} | {t['self_ms']:.0f} | {100 * t['share']:.1f}% |" for t in prof["top"]]
    lines += ["", "Top (op, first two input shapes) by self time:", "", "| op | input shapes | calls | self ms | share |", "|---|---|---:|---:|---:|"]
    lines += [f"| `{t['op']}` | `{t['shapes']}` | {t['calls']} | {t['self_ms']:.0f} | {100 * t['share']:.1f}% |" for t in prof["top_shapes"]]
    return lines


class Contention:
    """CPU time that *other* processes used while the benchmark ran (from /proc/stat and getrusage):
    on a 2-core machine even one busy neighbour slows the OpenMP GEMMs several-fold."""

    def __init__(self) -> None:
        self.start = self._sample()

    @staticmethod
    def _sample() -> tuple[float, float, float]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        busy = (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # all but idle, iowait
        own = sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
                  for f in ("ru_utime", "ru_stime"))
        return time.monotonic(), busy, own

    def others(self) -> tuple[float, float]:
        """(core-seconds used by other processes, as a share of the machine's cores x wall time)."""
        (t0, busy0, own0), (t1, busy1, own1) = self.start, self._sample()
        other = max(0.0, (busy1 - busy0) - (own1 - own0))
        return other, other / ((t1 - t0) * (os.cpu_count() or 1))


def report(results: list[dict], gemm: dict, args: argparse.Namespace, command: str, runtime_s: float, others: tuple) -> str:
    info = machine(args.device)
    r0 = results[0]
    dtype = "bfloat16" if args.precision == "bf16" else "float32"
    busy = others[1] > 0.05
    return "\n".join([
        f"# Training throughput ({args.device}, {args.precision})", "",
        f"Command: `{command}` (total runtime {runtime_s:.0f} s)", "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in info.items()), "",
        f"Other processes used {others[0]:.0f} core-seconds during the run ({100 * others[1]:.1f}% of the machine)"
        + (": **timings are pessimistic** (a concurrent process slows the OpenMP GEMMs several-fold)." if busy else "."), "",
        "Model: LLaMA-style LLM hidden 512, 8 layers, 8 heads, MLP 1376, vocab 8000 (untied head, 33.6M params); CLIP vision "
        "hidden 384, 6 layers, 6 heads, patch 16, 224 px (197 tokens, 10.8M). `mma`: MM-Adapters (dim 8, 2 experts, "
        "dropout 0.1) in the LLM (routed by the modality token) and in CLIP (per-token router), lavin-neck (hidden 128) on the "
        "[cls] tokens of CLIP layers 2, 4, 6. `lora`: LoRA r=16, alpha 32, dropout 0.05 on every linear of the LLM blocks, "
        "CLIP frozen, mlp2x-gelu on the 196 patches of layer -2.", "",
        f"Inputs are synthesised tensors (no data loading): batch {BATCH}, sequence {SEQ} tokens including the image "
        f"placeholders, labels on the second half of each row, pixel_values [{BATCH}, 3, 224, 224]. A step = forward with "
        f"labels + backward + grad-norm clip + {r0['optimizer']} + zero_grad, {dtype} "
        f"({'autocast' if args.precision == 'bf16' else 'no autocast'}). Timed over {r0['steps']} steps after "
        f"{r0['warmup']} warm-up step(s); the first warm-up step ran under FlopCounterMode.", "",
        "tokens/s = B x S / mean step time (sequence tokens including media tokens); the min step time is the "
        "figure least affected by other processes. Achieved FLOP/s = FlopCounterMode "
        "FLOPs of one step (forward + backward) / mean step time; the square and model-shape GEMM rates below are the "
        "ceilings it is compared to. Peak memory: `getrusage` maxrss of the case's own process (CPU; includes building "
        "the model) or `torch.cuda.max_memory_allocated` (GPU).", "",
        *results_table(results, gemm), "",
        *phase_table(results, gemm), "",
        f"## Machine GEMM rate ({dtype} torch.matmul, best of several, {torch.get_num_threads()} threads)", "",
        *gemm_lines(gemm, dtype), "",
        "## FLOPs per step", "",
        "Counted: FlopCounterMode over the forward and, separately, the backward of the first warm-up step (plus formulas "
        "for the CPU flash-attention kernels, which torch 2.13 does not count). Analytic: "
        + " ".join(analytic_flops.__doc__.split("\n\n")[1].split()), "",
        *flops_table(results), "",
        "## Where the time goes", "",
        *[line for r in results for line in (*profile_lines(r), "")],
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=None, help="timed optimizer steps per config (default 12; --quick 3)")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up steps, the first FLOP-counted (default 2; --quick 1)")
    parser.add_argument("--quick", action="store_true", help="fewer steps, no profile, one process: < 1 min; results not saved")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                        help="bf16: autocast the step and measure bf16 GEMMs (results not saved)")
    parser.add_argument("--work", type=Path, default=None, help="where the backbones go (default: a temporary directory)")
    parser.add_argument("--case", choices=CASES, help="run only this config in this process and print its JSON")
    parser.add_argument("--profile-rows", type=int, default=12, help="top ops to list per config (0: no profile)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    args.steps = max(1, args.steps or (3 if args.quick else 12))
    args.warmup = max(1, args.warmup or (1 if args.quick else 2))
    if args.quick:
        args.profile_rows = 0
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    if args.case:
        if args.work is None:
            parser.error("--case needs --work")
        save_backbones(args.work)
        print(json.dumps(run_case(args.work, args.case, args.device, args.precision, args.steps, args.warmup, args.profile_rows)))
        return 0
    with tempfile.TemporaryDirectory(prefix="cotune-train-bench-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        return _run_all(work, args)


def _run_all(work: Path, args: argparse.Namespace) -> int:
    start, contention = time.perf_counter(), Contention()
    save_backbones(work)
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    gemm = gemm_table(args.device, dtype, args.quick)
    log.info("GEMM %s: %.1f GFLOP/s; model shapes %.1f GFLOP/s", SQUARE, gemm["square"] / 1e9, gemm["model_shape_rate"] / 1e9)
    results = []
    for case in CASES:
        if args.quick:  # one process: saves start-up, but peak RSS is then cumulative
            results.append(run_case(work, case, args.device, args.precision, args.steps, args.warmup, 0))
        else:
            results.append(run_case_subprocess(work, case, args))
        s = summarise(results[-1], gemm)
        log.info("%s: %.2f s/step, %.0f tokens/s, %.1f GFLOP/s (%.0f%% of square GEMM)", case, s["mean_s"], s["tokens_per_s"],
                 s["achieved"] / 1e9, 100 * s["vs_square"])
    command = ("python benchmarks/train_throughput.py " + " ".join(sys.argv[1:])).strip()
    others = contention.others()
    if others[1] > 0.05:
        log.warning("other processes used %.0f%% of the machine during the run: timings are pessimistic", 100 * others[1])
    text = report(results, gemm, args, command, time.perf_counter() - start, others)
    if args.quick:
        text += "\n--quick: both configs ran in one process (peak RSS is cumulative), few steps: a smoke test.\n"
    print(text)
    if not args.quick and args.precision == "fp32":
        path = ROOT / "benchmarks" / "results" / f"train_throughput-{args.device}.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        log.info("wrote %s", path.relative_to(ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
