"""Cost and accuracy of the kappa estimators, on the mini model of train_throughput.py or (``--zoo``) the demo's zoo models.

For the `mma` mini model (LaVIN-style MM-Adapters; see train_throughput.py) this takes real
training steps (synthetic batch 8 x 256 tokens, fused AdamW at lr 1e-3 so the steps are of ordinary
size) and, after each, estimates kappa with `exact` and with `jvp` on the same step. It reports:

* the step time without estimation and the time of one estimate of each kind, hence the overhead
  of estimating every k steps (overhead = estimate time / (k x step time)), against the issue's
  target of <= 10% at the default setting;
* the relative error of the `jvp` kappa against `exact` on the same steps.

``--zoo``: the demo's image path on the zoo's real models (SmolLM2-135M-Instruct + MobileNetV2 with
the demo's MM-Adapters and LaVIN neck, ``zoo_model.py``), batch 16 x 48-token chat rows with 7 image
tokens (the demo's shape), the demo's per-group learning rates. Whole training steps are timed the
way the Trainer runs them, in interleaved rounds: a plain step (``constant`` without estimation),
a step on which a balance strategy (``make_balance``) with the default settings (``BalanceConfig()``: estimator
``exact``, every_k 20) estimates kappa, and the same with ``estimator: jvp``. The relative step
time at every_k = k is 1 + (due step / plain step - 1) / k, from the median over rounds of the
due-to-plain ratio within a round (target <= 1.10 at the default k). On the jvp step, ``exact`` is
also run (untimed) on the same before/after parameters for the jvp kappa's error.

    python -m benchmarks.balance_overhead [--steps N] [--work DIR]   # mini; results/balance_overhead-cpu.md
    python -m benchmarks.balance_overhead --zoo                      # ~3 min on 2 idle cores; results/balance_overhead-zoo-cpu.md
    python -m benchmarks.balance_overhead --zoo --quick              # one round; results not saved
    python -m benchmarks.balance_overhead --zoo --threads 1          # on a shared machine
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from benchmarks.throughput_report import Contention, machine
from benchmarks.train_throughput import Stepper

from cotune.balance.strategies import BalanceStrategy, make_balance
from cotune.balance.estimator import exact_estimate, jvp_estimate, snapshot
from cotune.balance.scheduler import kappa_of
from cotune.balance.sides import resolve_sides
from cotune.config import BalanceConfig


def kappa(estimate) -> float:
    n = max(estimate.positions, 1)
    return kappa_of(BalanceConfig(), ["S", "T"], {k: v / n for k, v in estimate.kl.items()}, estimate.kl_joint / n)[0]


def machine_lines(contention: Contention) -> list[str]:
    other, share = contention.others()
    return ["Machine: " + ", ".join(f"{k} {v}" for k, v in machine("cpu").items()), "",
            f"Other processes used {other:.0f} core-seconds during the run ({100 * share:.1f}% of the machine)"
            + (": **timings are pessimistic**." if share > 0.05 else ".")]


def save(text: str, name: str) -> None:
    out = Path(__file__).parent / "results" / name
    out.parent.mkdir(exist_ok=True)
    out.write_text(text)
    print(f"wrote {out}")


ZOO_NAMES = ("constant", "exact", "jvp")


def due_step(step: Stepper, controller: BalanceStrategy, n: int) -> tuple[float, dict]:
    """A training step on which ``controller`` estimates kappa (``n``: a step index it is due at), in
    the Trainer's order: forward, backward, snapshot, clip + AdamW, estimate. Returns (s, record)."""
    started = time.perf_counter()
    step.forward().backward()
    controller.before_update(n)
    step.update()
    record = controller.after_update(n, step.batch, {})
    return time.perf_counter() - started, record


def zoo_rounds(step: Stepper, rounds: int) -> dict:
    """Interleaved rounds of a plain, an exact-due and a jvp-due step (order rotated every round);
    on the jvp step, exact on the same parameters (untimed)."""
    default = BalanceConfig()
    controllers = {name: make_balance(replace(default, estimator=name), step.model, step.optimizer, 0, float) for name in ZOO_NAMES[1:]}
    step()  # warm-up: the up-projections leave zero
    due_step(step, controllers["jvp"], 0)  # warm-up of the forward-mode path
    times = {name: [] for name in ZOO_NAMES}
    estimates, kappas = {name: [] for name in ZOO_NAMES[1:]}, []
    for r in range(rounds):
        for name in ZOO_NAMES[r % 3:] + ZOO_NAMES[: r % 3]:
            if name == "constant":
                started = time.perf_counter()
                step()
                times[name].append(time.perf_counter() - started)
                continue
            controller = controllers[name]
            before = snapshot(controller.params) if name == "jvp" else None
            seconds, record = due_step(step, controller, (r + 1) * controller.config.every_k)
            times[name].append(seconds)
            estimates[name].append(record["balance/estimate_seconds"])
            if before is not None:
                reference = exact_estimate(step.model, step.batch, controller.params, before, snapshot(controller.params),
                                           default.samples, default.kl_direction)
                kappas.append({"kappa_exact": kappa(reference), "kappa_jvp": record["balance/kappa_raw"]})
    for row in kappas:
        row["rel_error"] = abs(row["kappa_jvp"] - row["kappa_exact"]) / max(abs(row["kappa_exact"]), 1e-12)
    ratios = {name: [t / c for t, c in zip(times[name], times["constant"])] for name in ZOO_NAMES[1:]}
    return {"every_k": default.every_k, "times": times, "estimates": estimates, "ratios": ratios, "kappas": kappas}


def zoo_tables(result: dict) -> list[str]:
    times, estimates, ratios, default_k = result["times"], result["estimates"], result["ratios"], result["every_k"]
    ks = sorted({1, default_k, 50})
    lines = ["| step | min s | median s | estimate alone, median s |", "|---|---:|---:|---:|"]
    for name in ZOO_NAMES:
        alone = f"{statistics.median(estimates[name]):.2f}" if name in estimates else "-"
        label = "plain step (constant, no estimate)" if name == "constant" else f"step + `{name}` estimate"
        lines.append(f"| {label} | {min(times[name]):.2f} | {statistics.median(times[name]):.2f} | {alone} |")
    header = " | ".join(f"k={k}" + (" (default)" if k == default_k else " (demo)" if k == 50 else "") for k in ks)
    lines += ["", f"| estimator | due step / plain step (median over rounds) | {header} | target <= 1.10x at k={default_k} |",
              "|---|---:|" + "---:|" * len(ks) + "---|"]
    for name, values in ratios.items():
        ratio = statistics.median(values)
        relative = {k: 1 + (ratio - 1) / k for k in ks}
        lines.append(f"| {name} | {ratio:.2f} | " + " | ".join(f"{relative[k]:.3f}x" for k in ks) + " | "
                     + ("met" if relative[default_k] <= 1.10 else "NOT met") + " |")
    return lines


def run_zoo(rounds: int, quick: bool, command: str) -> int:
    from benchmarks import zoo_model

    started, contention = time.perf_counter(), Contention()
    step = Stepper.zoo("mma", "demo", "cpu", "fp32")
    result = zoo_rounds(step, rounds)
    errors = [r["rel_error"] for r in result["kappas"]]
    batch, seq = step.batch["input_ids"].shape
    lines = [
        "# Balance estimator overhead and accuracy (cpu, fp32, zoo models)", "",
        f"Command: `{command}` (total runtime {time.perf_counter() - started:.0f} s)", "",
        *machine_lines(contention), "",
        zoo_model.MODEL_TEXT.replace(" `lora`:", " (Only `mma` runs here.) `lora`:"), "",
        f"Batch {batch} x {seq} tokens (chat rows of the demo's shape, 7 image tokens, 3 supervised tokens per row; "
        "`benchmarks/zoo_model.py`), float32, the demo's peak learning rates (LLM 1e-3, encoder 3e-4, connector and modality "
        "embedding 3e-3), fused AdamW, grad clip 1.0. A step = forward with labels (LM head at the supervised positions) + "
        "backward + clip + AdamW + zero_grad; a due step adds the controller's parameter snapshots and the estimate "
        f"(`BalanceConfig()` defaults: kappa encoder_share, forward KL, multimodal rows only; the adapters' dropout 0.1 rules out "
        f"reusing the training logits, so `exact` runs 4 eval forwards). {rounds} interleaved rounds after 2 warm-up steps; "
        "the relative step time at every_k = k is 1 + (r - 1) / k with r the due/plain ratio.", "",
        *zoo_tables(result), "",
        f"`jvp` kappa vs `exact` on the same {len(errors)} step(s): mean relative error {100 * statistics.fmean(errors):.1f}%, "
        f"max {100 * max(errors):.1f}%.", "",
        "| round | kappa exact | kappa jvp | relative error |", "|---:|---:|---:|---:|",
        *[f"| {i + 1} | {r['kappa_exact']:.4f} | {r['kappa_jvp']:.4f} | {100 * r['rel_error']:.2f}% |" for i, r in enumerate(result["kappas"])],
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    print(json.dumps(result))
    if not quick:
        save(text, "balance_overhead-zoo-cpu.md")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None, help="mini: estimated steps (default 6; --quick 1)")
    parser.add_argument("--rounds", type=int, default=None, help="--zoo: interleaved timing rounds (default 3; --quick 1)")
    parser.add_argument("--zoo", action="store_true", help="the demo's zoo models (zoo_model.py) instead of the mini model")
    parser.add_argument("--quick", action="store_true", help="one step / round; results printed, not saved")
    parser.add_argument("--work", type=Path)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's, one per core); 1 on a busy machine (see train_throughput.py)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    command = "python -m benchmarks.balance_overhead " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.zoo:
        return run_zoo(args.rounds or (1 if args.quick else 3), args.quick, command.strip())
    args.steps = args.steps or (1 if args.quick else 6)
    run_started, contention = time.perf_counter(), Contention()
    work = args.work or Path(tempfile.mkdtemp(prefix="cotune-balance-"))
    step = Stepper.mini(work, "mma", "cpu", "fp32")
    for group in step.optimizer.param_groups:
        group["lr"] = 1e-3
    groups = list(dict.fromkeys(g["group"] for g in step.optimizer.param_groups))
    sides = resolve_sides(BalanceConfig(), groups)
    params = {side: [p for g in step.optimizer.param_groups if g["group"] in members for p in g["params"]] for side, members in sides.items()}
    rows, step_times, exact_times, jvp_times = [], [], [], []
    step()  # warm-up (and lets the up-projections leave zero)
    for _ in range(args.steps):
        before = snapshot(params)
        started = time.perf_counter()
        step()
        step_times.append(time.perf_counter() - started)
        after = snapshot(params)
        batch = {**step.batch, "features": None}
        e = exact_estimate(step.model, batch, params, before, after, "multimodal_only", "forward")
        j = jvp_estimate(step.model, batch, params, before, after, "multimodal_only", "forward")
        exact_times.append(e.seconds)
        jvp_times.append(j.seconds)
        rows.append({"kappa_exact": kappa(e), "kappa_jvp": kappa(j), "rel_error": abs(kappa(j) - kappa(e)) / max(kappa(e), 1e-12)})
    mean_step = statistics.fmean(step_times)
    overhead = lambda seconds, k: 100 * statistics.fmean(seconds) / (k * mean_step)  # noqa: E731
    table = ["| estimator | one estimate s | overhead k=1 | k=5 | k=10 | k=20 |", "|---|---:|---:|---:|---:|---:|"]
    for name, seconds in (("exact", exact_times), ("jvp", jvp_times)):
        table.append(f"| {name} | {statistics.fmean(seconds):.2f} | " + " | ".join(f"{overhead(seconds, k):.0f}%" for k in (1, 5, 10, 20)) + " |")
    errors = [r["rel_error"] for r in rows]
    lines = [
        "# Balance estimator overhead and accuracy (cpu, fp32)", "",
        f"Command: `{command.strip()}` (total runtime {time.perf_counter() - run_started:.0f} s)", "",
        *machine_lines(contention), "",
        f"Mini `mma` model of train_throughput.py, batch 8 x 256 tokens; training step (forward, backward, AdamW lr 1e-3) mean {mean_step:.2f} s.", "",
        *table, "",
        f"`jvp` kappa vs `exact` on the same {len(rows)} steps: mean relative error {100 * statistics.fmean(errors):.1f}%, max {100 * max(errors):.1f}%.", "",
        "| step | kappa exact | kappa jvp | relative error |", "|---:|---:|---:|---:|",
        *[f"| {i + 2} | {r['kappa_exact']:.4f} | {r['kappa_jvp']:.4f} | {100 * r['rel_error']:.2f}% |" for i, r in enumerate(rows)],
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.quick:
        save(text, "balance_overhead-cpu.md")
    print(json.dumps({"step_s": mean_step, "exact_s": statistics.fmean(exact_times), "jvp_s": statistics.fmean(jvp_times), "jvp_rel_error": statistics.fmean(errors)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
