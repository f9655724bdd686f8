"""Machine facts, contention measurement and the Markdown tables of train_throughput.py."""

from __future__ import annotations

import argparse
import os
import platform
import resource
import time
from pathlib import Path

import torch

from benchmarks.mini_model import BATCH, SEQ, SQUARE
from benchmarks.throughput_flops import analytic_flops


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


def results_header(title: str, command: str, info: dict, note: str = "") -> list[str]:
    """The first lines of a results file: its title, the command, the machine and a note on how it ran."""
    return [f"# {title}", "", f"Command: `{command}`", "", "Machine: " + ", ".join(f"{k} {v}" for k, v in info.items()), "",
            *([note, ""] if note else [])]


def save_results(name: str, text: str, payload: dict) -> Path:
    """Writes ``results/<name>.md`` (``text``) and ``results/<name>.json`` (``payload``); returns the .md path."""
    import json

    out = Path(__file__).parent / "results" / name
    out.parent.mkdir(exist_ok=True)
    out.with_suffix(".md").write_text(text)
    out.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n")
    return out.with_suffix(".md")


def _g(flops: float) -> str:
    return f"{flops / 1e9:.1f}" if flops == 0 or flops >= 5e7 else f"{flops / 1e9:.3f}"


def label(r: dict) -> str:
    return r.get("label", r["case"])


def gemm_for(r: dict, gemm: dict) -> dict:
    """The GEMM table a result is compared to: its own shapes' (``--zoo``: one table per row) or the only one."""
    return {"square": gemm["square"], **gemm["by_row"][label(r)]} if "by_row" in gemm else gemm


def summarise(r: dict, gemm: dict) -> dict:
    gemm = gemm_for(r, gemm)
    totals = [sum(p) for p in r["phases"]]
    mean = sum(totals) / len(totals)
    counted = r["counted_fwd"] + r["counted_bwd"]
    analytic = sum(part["fwd"] + part["bwd"] for part in r["analytic"].values())
    achieved = counted / mean
    phases = [sum(p[i] for p in r["phases"]) / len(totals) for i in range(3)]
    return {"mean_s": mean, "min_s": min(totals), "tokens_per_s": r["batch"] * r["seq"] / mean, "counted": counted,
            "analytic": analytic, "achieved": achieved, "vs_square": achieved / gemm["square"],
            "vs_model": achieved / gemm["model_shape_rate"], "vs_model_min": counted / min(totals) / gemm["model_shape_rate"],
            "phases": phases}


def results_table(results: list[dict], gemm: dict, against: str = "square") -> list[str]:
    """One row per result; the target column judges the mean step against the square GEMM
    (``against="square"``) or, ``against="model"``, the mean and the min step against the model-shape GEMM."""
    target = "target >= 50% of square GEMM" if against == "square" else "target >= 50% of model-shape GEMM (mean; min step)"
    lines = [
        "| config | trainable / total params | media tokens | step s (mean, min) | tokens/s | peak memory GB | "
        f"FLOPs per step (counted) | achieved GFLOP/s | vs square GEMM | vs model-shape GEMM (mean; min step) | {target} |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        s = summarise(r, gemm)
        memory = "RSS" if r["device"] == "cpu" else "cuda"
        verdict = ("met" if s["vs_square"] >= 0.5 else "NOT met") if against == "square" else \
            "; ".join("met" if v >= 0.5 else "NOT met" for v in (s["vs_model"], s["vs_model_min"]))
        lines.append(
            f"| {label(r)} | {r['params_trainable'] / 1e6:.2f}M / {r['params_total'] / 1e6:.1f}M | {r['media_tokens']} | "
            f"{s['mean_s']:.2f}, {s['min_s']:.2f} | {s['tokens_per_s']:.0f} | {r['peak_memory_gb']:.2f} ({memory}) | "
            f"{_g(s['counted'])} G | {s['achieved'] / 1e9:.1f} | {100 * s['vs_square']:.0f}% | {100 * s['vs_model']:.0f}%; "
            f"{100 * s['vs_model_min']:.0f}% | {verdict} |"
        )
    return lines


def phase_table(results: list[dict], gemm: dict) -> list[str]:
    lines = ["| config | forward s | backward s | clip + optimizer s | forward GFLOP/s | backward GFLOP/s |", "|---|---:|---:|---:|---:|---:|"]
    for r in results:
        f, b, o = summarise(r, gemm)["phases"]
        lines.append(f"| {label(r)} | {f:.2f} | {b:.2f} | {o:.3f} | {r['counted_fwd'] / f / 1e9:.1f} | {r['counted_bwd'] / b / 1e9:.1f} |")
    return lines


def flops_table(results: list[dict]) -> list[str]:
    lines = ["| config | part | analytic fwd G | counted fwd G | analytic bwd G |", "|---|---|---:|---:|---:|"]
    for r in results:
        counted, analytic = r["counted_fwd_components"], r["analytic"]
        for part in dict.fromkeys([*analytic, *counted]):
            fwd, bwd = (_g(analytic[part][k]) if part in analytic else "-" for k in ("fwd", "bwd"))
            lines.append(f"| {label(r)} | {part} | {fwd} | {_g(counted.get(part, 0.0))} | {bwd} |")
        analytic_fwd = sum(v["fwd"] for v in analytic.values())
        analytic_bwd = sum(v["bwd"] for v in analytic.values())
        lines.append(f"| {label(r)} | **total** (counted bwd {_g(r['counted_bwd'])} G) | {_g(analytic_fwd)} | "
                     f"{_g(r['counted_fwd'])} | {_g(analytic_bwd)} |")
    return lines


def gemm_lines(gemm: dict, dtype: str) -> list[str]:
    lines = [f"| {dtype} GEMM [M x K] @ [K x N] | per forward | GFLOP/s |", "|---|---:|---:|",
             f"| [{SQUARE[0]} x {SQUARE[1]}] @ [{SQUARE[1]} x {SQUARE[2]}] (square) | - | {gemm['square'] / 1e9:.1f} |"]
    for name, table in gemm.get("by_row", {"": gemm}).items():
        for row in table["shapes"]:
            m, k, n = row["shape"]
            lines.append(f"| [{m} x {k}] @ [{k} x {n}] | {row['count']} | {row['rate'] / 1e9:.1f} |")
        lines.append(f"| model-shape rate{' of ' + name if name else ''} (harmonic mean weighted by FLOPs per forward) | | "
                     f"{table['model_shape_rate'] / 1e9:.1f} |")
    return lines


def profile_lines(result: dict) -> list[str]:
    prof = result.get("profile")
    if not prof:
        return [f"`{label(result)}`: not profiled in this run."]
    lines = [f"### {label(result)}", "", f"One profiled step of `{label(result)}` (torch.profiler, record_shapes; the profiler adds overhead): "
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


def _inputs_text(r0: dict, args: argparse.Namespace, dtype: str, zoo: bool) -> str:
    if zoo:
        inputs = ("Inputs are synthesised tensors in SmolLM2's chat format (no data loading; see `benchmarks/zoo_model.py`): "
                  "`demo` = batch 16, 41 text tokens + the image tokens (48 with `mma`'s 7, 90 with `lora`'s 49), the shape of "
                  "the demo's samples, answer of 2 tokens + `<|im_end|>` supervised; `long` = batch 4, 249 text tokens + the image "
                  "tokens (256 with `mma`), 128-token answer + `<|im_end|>` supervised, the GEMM-friendlier row for the FLOP/s "
                  "fraction. pixel_values [B, 3, 224, 224]. The forward computes the LM head at the supervised positions only "
                  "(`supervised_logits`, as the Trainer does); learning rates are the demo's peak rates.")
    else:
        inputs = (f"Inputs are synthesised tensors (no data loading): batch {BATCH}, sequence {SEQ} tokens including the image "
                  f"placeholders, labels on the second half of each row, pixel_values [{BATCH}, 3, 224, 224].")
    return (f"{inputs} A step = forward with labels + backward + grad-norm clip + {r0['optimizer']} + zero_grad, {dtype} "
            f"({'autocast' if args.precision == 'bf16' else 'no autocast'}). Timed over {r0['steps']} steps after "
            f"{r0['warmup']} warm-up step(s); the first warm-up step ran under FlopCounterMode.")


MINI_MODEL_TEXT = (
    "Model: LLaMA-style LLM hidden 512, 8 layers, 8 heads, MLP 1376, vocab 8000 (untied head, 33.6M params); CLIP vision "
    "hidden 384, 6 layers, 6 heads, patch 16, 224 px (197 tokens, 10.8M). `mma`: MM-Adapters (dim 8, 2 experts, "
    "dropout 0.1) in the LLM (routed by the modality token) and in CLIP (per-token router), lavin-neck (hidden 128) on the "
    "[cls] tokens of CLIP layers 2, 4, 6. `lora`: LoRA r=16, alpha 32, dropout 0.05 on every linear of the LLM blocks, "
    "CLIP frozen, mlp2x-gelu on the 196 patches of layer -2."
)


def report(results: list[dict], gemm: dict, args: argparse.Namespace, command: str, runtime_s: float, others: tuple,
           zoo: bool = False) -> str:
    """The Markdown report; ``zoo``: the real zoo backbones of zoo_model.py instead of the mini ones."""
    from benchmarks import zoo_model

    info = machine(args.device)
    r0 = results[0]
    dtype = "bfloat16" if args.precision == "bf16" else "float32"
    busy = others[1] > 0.05
    analytic_doc = (zoo_model.analytic_flops if zoo else analytic_flops).__doc__.split("\n\n")[1]
    gemm_note = ("Each row is compared to the GEMM rate at its own shapes (the LLM's projections at B x S tokens and the "
                 "LM head at the supervised positions; MobileNetV2's convolutions, 1-6 % of the counted FLOPs but about a sixth "
                 "of the `mma` demo step's time, are not GEMMs and have no ceiling here), and the target is judged on it, for the "
                 "mean and for the min step. "
                 if zoo else "")
    return "\n".join([
        f"# Training throughput ({args.device}, {args.precision}{', zoo models' if zoo else ''})", "",
        f"Command: `{command}` (total runtime {runtime_s:.0f} s)", "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in info.items()), "",
        f"Other processes used {others[0]:.0f} core-seconds during the run ({100 * others[1]:.1f}% of the machine)"
        + (": **timings are pessimistic** (a concurrent process slows the OpenMP GEMMs several-fold)." if busy else "."), "",
        zoo_model.MODEL_TEXT if zoo else MINI_MODEL_TEXT, "",
        _inputs_text(r0, args, dtype, zoo), "",
        "tokens/s = B x S / mean step time (sequence tokens including media tokens); the min step time is the "
        "figure least affected by other processes. Achieved FLOP/s = FlopCounterMode "
        "FLOPs of one step (forward + backward) / mean step time; the square and model-shape GEMM rates below are the "
        f"ceilings it is compared to. {gemm_note}Peak memory: `getrusage` maxrss of the case's own process (CPU; includes "
        "building the model) or `torch.cuda.max_memory_allocated` (GPU).", "",
        *results_table(results, gemm, "model" if zoo else "square"), "",
        *phase_table(results, gemm), "",
        f"## Machine GEMM rate ({dtype} torch.matmul, best of several, {torch.get_num_threads()} threads)", "",
        *gemm_lines(gemm, dtype), "",
        "## FLOPs per step", "",
        "Counted: FlopCounterMode over the forward and, separately, the backward of the first warm-up step (plus formulas "
        "for the CPU flash-attention kernels, which torch 2.13 does not count). Analytic: " + " ".join(analytic_doc.split()), "",
        *flops_table(results), "",
        "## Where the time goes", "",
        *[line for r in results for line in (*profile_lines(r), "")],
    ])
