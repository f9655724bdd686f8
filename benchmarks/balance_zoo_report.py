"""Summaries, the Markdown report and the convergence figure of balance_zoo.py (not a benchmark)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

#: commit must reach the target validation loss in at most this fraction of constant's steps.
TARGET_RATIO = 0.75


def _curve(records: list[dict], uses_kappa: bool) -> list[list[float]]:
    """[[step, validation loss, train seconds], ...]. Train seconds leave out step 1 (the first run
    of a process pays one-off warm-up costs there) but keep its kappa estimate; a method that does
    not use kappa (``uses_kappa`` False) is charged no estimate time."""
    curve, seconds = [], 0.0
    for r in records:
        estimate = r.get("balance/estimate_seconds", 0.0)
        if r["step"] > 1:
            seconds += r["step_seconds"] - (0.0 if uses_kappa else estimate)
        elif uses_kappa:
            seconds += estimate
        if "eval/loss" in r:
            curve.append([r["step"], r["eval/loss"], round(seconds, 2)])
    return curve


def _series(records: list[dict], key: str, where: str | None = None) -> list[list[float]]:
    return [[r["step"], r[key]] for r in records if key in r and (where is None or r.get(where) == 1.0)]


def summarise(results: dict[str, dict]) -> dict:
    """Per method: validation curve, kappa trace, multipliers, steps and seconds to the target (the
    final validation loss of ``constant``), accuracy; and commit / constant against TARGET_RATIO."""
    methods = {}
    for method, r in results.items():
        records = r["records"]
        kappa = _series(records, "balance/kappa", where="balance/valid")
        methods[method] = {
            "val_loss": _curve(records, uses_kappa=method in ("commit_clr", "commit")),
            "kappa": kappa, "kappa_bar": _series(records, "balance/kappa_bar"),
            "multiplier_S": _series(records, "balance/multiplier/S"), "multiplier_T": _series(records, "balance/multiplier/T"),
            "mean_kappa": float(np.mean([k for _, k in kappa])) if kappa else None,
            **{k: v for k, v in r.items() if k != "records"},
        }
    target = methods["constant"]["val_loss"][-1][1]
    for m in methods.values():
        m["final_val_loss"] = m["val_loss"][-1][1]
        hit = next((point for point in m["val_loss"] if point[1] <= target), None)
        m["steps_to_target"], m["train_seconds_to_target"] = (hit[0], hit[2]) if hit else (None, None)
    base = methods["constant"]
    for m in methods.values():
        m["steps_vs_constant"] = m["steps_to_target"] / base["steps_to_target"] if m["steps_to_target"] else None
        m["seconds_vs_constant"] = m["train_seconds_to_target"] / base["train_seconds_to_target"] if m["train_seconds_to_target"] else None
    verdict = None
    if "commit" in methods:
        ratio = methods["commit"]["steps_vs_constant"]
        verdict = {"steps_ratio": ratio, "target": TARGET_RATIO, "met": ratio is not None and ratio <= TARGET_RATIO}
    return {"target_val_loss": target, "methods": methods, "commit_vs_constant": verdict}


def _f(value, spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def recipe_lines(name: str, recipe: dict) -> list[str]:
    target, verdict = recipe["target_val_loss"], recipe["commit_vs_constant"]
    lines = [f"## {name}", "", f"Training pool: {recipe['sizes']['open']} open and {recipe['sizes']['yes_no']} yes/no questions. "
             f"Target validation loss: {target:.4f} (constant's final).", "",
             "| method | steps to target | train s to target | vs constant (steps, s) | final val loss | accuracy | "
             "open-question accuracy | yes/no against the wording | shuffled media (drop) | mean kappa | run s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for method, m in recipe["methods"].items():
        ratios = f"{_f(m['steps_vs_constant'], '.2f', 'x')}, {_f(m['seconds_vs_constant'], '.2f', 'x')}"
        lines.append(
            f"| {method} | {_f(m['steps_to_target'], 'd')} | {_f(m['train_seconds_to_target'], '.0f')} | {ratios} | "
            f"{m['final_val_loss']:.4f} | {_f(m['accuracy'], '.1f', ' %')} ({m['questions']} q.) | "
            f"{_f(m['open_accuracy'], '.1f', ' %')} ({m['open_questions']} q.) | {_f(m.get('counter_prior_accuracy'), '.1f', ' %')} | "
            f"{_f(m.get('shuffled_accuracy'), '.1f', ' %')} ({_f(m.get('shuffle_drop'), '.1f')}) | {_f(m['mean_kappa'], '.3f')} | "
            f"{m['run_seconds']:.0f} |")
    lines.append("")
    if verdict is not None:
        c, k = recipe["methods"]["commit"], recipe["methods"]["constant"]
        state = "met" if verdict["met"] else "**NOT met**"
        reached = f"{c['steps_to_target']} / {k['steps_to_target']} steps = {verdict['steps_ratio']:.2f}x" if verdict["steps_ratio"] \
            else f"commit did not reach the target in {c['val_loss'][-1][0]} steps"
        lines.append(f"commit vs constant, steps to the target: {reached}; target <= {TARGET_RATIO}x: {state}.")
    lines += ["", f"Figures: `balance_zoo/{name}-convergence.png` (validation loss by step and by train seconds), "
              f"`balance_zoo/{name}/` (`cotune report`: loss, kappa, lr and multipliers, grad norms, KL).", ""]
    return lines


def markdown(recipes: dict[str, dict], facts: dict) -> str:
    plan, others = facts["plan"], facts["other_processes_share"]
    lines = [
        "# Balance methods on real small models (cpu)", "",
        f"Command: `{facts['command']}` (total {facts['total_seconds'] / 60:.1f} min)", "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in facts["machine"].items()), "",
        f"Load average before {facts['load_average_before'][0]:.2f}, after {facts['load_average_after'][0]:.2f}; other processes "
        f"used {100 * others:.0f} % of the machine" + (": **seconds are pessimistic and noisy**." if others > 0.05 else "."), "",
        f"Demo recipe (SmolLM2-135M-Instruct, MM-Adapters everywhere, LaVIN neck, float32) with one encoder, adapter dropout 0; "
        f"batch {plan['batch_size']}, {plan['steps']} steps, warmup {plan['warmup']}, cosine, the demo's per-group learning rates; "
        f"training draws 70 % open / 30 % yes/no questions. kappa: exact, every {plan['every_k']} steps, windows of "
        f"{plan['window']} steps, rule `{plan.get('rule', 'reference')}` (CD baselines: not estimated). Validation loss on the first {plan['val_questions']} test questions "
        f"every {plan['eval_every']} steps; accuracy: greedy answers (normalised exact match) to {plan['test_questions']} other "
        f"test questions. Seed {plan.get('seed', 0)}: within one seed, differences of one evaluation interval are noise. Train seconds: data, steps and "
        "kappa estimates, validation excluded; constant's estimates are left out (it does not use them), and so is step 1 "
        "except its estimate (the first run pays one-off warm-up costs there).", "",
    ]
    for name, recipe in recipes.items():
        lines += recipe_lines(name, recipe)
    return "\n".join(lines)


#: Per-method figures aggregated over seeds (mean, min, max of the seeds where the value exists).
SEED_KEYS = ("steps_to_target", "steps_vs_constant", "final_val_loss", "accuracy", "open_accuracy", "yes_no_accuracy",
             "counter_prior_accuracy", "shuffle_drop", "mean_kappa")


def over_seeds(per_seed: dict[int, dict[str, dict]]) -> dict[str, dict]:
    """``per_seed``: seed -> recipe -> :func:`summarise` result. Returns recipe -> method -> key ->
    {"mean", "min", "max", "n"} (None where no seed has the value), plus per recipe how many seeds
    met commit's steps target and the mean commit / constant steps ratio."""
    out: dict[str, dict] = {}
    recipes = {r for seed in per_seed.values() for r in seed}
    for recipe in sorted(recipes):
        runs = [seed[recipe] for seed in per_seed.values() if recipe in seed]
        methods = {}
        for method in runs[0]["methods"]:
            stats = {}
            for key in SEED_KEYS:
                values = [r["methods"][method].get(key) for r in runs if method in r["methods"]]
                values = [float(v) for v in values if v is not None]
                stats[key] = {"mean": float(np.mean(values)), "min": min(values), "max": max(values), "n": len(values)} if values else None
            methods[method] = stats
        verdicts = [r["commit_vs_constant"] for r in runs if r.get("commit_vs_constant")]
        out[recipe] = {"seeds": len(runs), "methods": methods,
                       "commit_met": sum(bool(v["met"]) for v in verdicts), "commit_verdicts": len(verdicts)}
    return out


def _stat(stat: dict | None, spec: str, suffix: str = "") -> str:
    if stat is None:
        return "-"
    missing = "" if stat["n"] == stat.get("of", stat["n"]) else f" ({stat['n']} seeds)"
    return f"{stat['mean']:{spec}}{suffix} ({stat['min']:{spec}}-{stat['max']:{spec}}){missing}"


def seeds_lines(summary: dict[str, dict], seeds: list[int]) -> list[str]:
    """The over-seeds table: mean (min-max) per method, and commit's verdict per seed."""
    lines = [f"## Over {len(seeds)} seeds ({', '.join(map(str, seeds))})", "",
             "Mean (min-max) over the seeds; a method that did not reach the target in a seed is left out of that "
             "seed's steps (the count says how many seeds it reached it in).", ""]
    for recipe, agg in summary.items():
        lines += [f"### {recipe}", "",
                  "| method | steps to target | vs constant (steps) | final val loss | accuracy | open | yes/no | "
                  "yes/no against the wording | shuffle drop | mean kappa |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for method, st in agg["methods"].items():
            for stat in st.values():
                if stat is not None:
                    stat["of"] = agg["seeds"]
            lines.append(
                f"| {method} | {_stat(st['steps_to_target'], '.0f')} | {_stat(st['steps_vs_constant'], '.2f', 'x')} | "
                f"{_stat(st['final_val_loss'], '.4f')} | {_stat(st['accuracy'], '.1f')} | {_stat(st['open_accuracy'], '.1f')} | "
                f"{_stat(st['yes_no_accuracy'], '.1f')} | {_stat(st['counter_prior_accuracy'], '.1f')} | "
                f"{_stat(st['shuffle_drop'], '.1f')} | {_stat(st['mean_kappa'], '.3f')} |")
        if agg["commit_verdicts"]:
            lines += ["", f"commit reached the target in <= {TARGET_RATIO}x constant's steps in {agg['commit_met']} of "
                      f"{agg['commit_verdicts']} seeds."]
        lines.append("")
    return lines


def plot_convergence(recipe: dict, name: str, path: Path) -> None:
    """Validation loss by step and by train seconds, one line per method, the target dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for method, m in recipe["methods"].items():
        curve = np.array(m["val_loss"])
        axes[0].plot(curve[:, 0], curve[:, 1], marker="o", markersize=3, label=method)
        axes[1].plot(curve[:, 2], curve[:, 1], marker="o", markersize=3, label=method)
    for ax, label in zip(axes, ("optimizer step", "train seconds (validation excluded)")):
        ax.axhline(recipe["target_val_loss"], color="black", linestyle=":", label="target (constant's final)")
        ax.set_xlabel(label)
        ax.set_ylabel("validation loss")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Balance methods, {name} recipe")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
