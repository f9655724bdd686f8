"""Cost and accuracy of the kappa estimators on the mini model of train_throughput.py.

For the `mma` mini model (LaVIN-style MM-Adapters; see train_throughput.py) this takes real
training steps (synthetic batch 8 x 256 tokens, fused AdamW at lr 1e-3 so the steps are of ordinary
size) and, after each, estimates kappa with `exact` and with `jvp` on the same step. It reports:

* the step time without estimation and the time of one estimate of each kind, hence the overhead
  of estimating every k steps (overhead = estimate time / (k x step time)), against the issue's
  target of <= 10% at the default setting;
* the relative error of the `jvp` kappa against `exact` on the same steps.

Run: python benchmarks/balance_overhead.py [--steps N] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from throughput_report import machine  # noqa: E402
from train_throughput import Stepper  # noqa: E402

from cotune.balance.estimator import exact_estimate, jvp_estimate, snapshot  # noqa: E402
from cotune.balance.scheduler import kappa_of  # noqa: E402
from cotune.balance.sides import resolve_sides  # noqa: E402
from cotune.config import BalanceConfig  # noqa: E402


def kappa(estimate) -> float:
    n = max(estimate.positions, 1)
    return kappa_of(BalanceConfig(), ["S", "T"], {k: v / n for k, v in estimate.kl.items()}, estimate.kl_joint / n)[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--work", type=Path)
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="cotune-balance-"))
    step = Stepper(work, "mma", "cpu", "fp32")
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
    info = machine("cpu")
    lines = [
        "# Balance estimator overhead and accuracy (cpu, fp32)", "",
        f"Command: `python benchmarks/balance_overhead.py --steps {args.steps}`", "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in info.items()), "",
        f"Mini `mma` model of train_throughput.py, batch 8 x 256 tokens; training step (forward, backward, AdamW lr 1e-3) mean {mean_step:.2f} s.", "",
        *table, "",
        f"`jvp` kappa vs `exact` on the same {len(rows)} steps: mean relative error {100 * statistics.fmean(errors):.1f}%, max {100 * max(errors):.1f}%.", "",
        "| step | kappa exact | kappa jvp | relative error |", "|---:|---:|---:|---:|",
        *[f"| {i + 2} | {r['kappa_exact']:.4f} | {r['kappa_jvp']:.4f} | {100 * r['rel_error']:.2f}% |" for i, r in enumerate(rows)],
    ]
    text = "\n".join(lines) + "\n"
    out = Path(__file__).parent / "results" / "balance_overhead-cpu.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text(text)
    print(text)
    print(json.dumps({"step_s": mean_step, "exact_s": statistics.fmean(exact_times), "jvp_s": statistics.fmean(jvp_times), "jvp_rel_error": statistics.fmean(errors)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
