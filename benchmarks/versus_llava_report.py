"""The report of ``versus_llava.py``: time to the baseline's accuracy, the tables, the targets,
the figure and the JSON/Markdown files (see that module's docstring for what is measured)."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path

log = logging.getLogger("benchmarks.versus_llava")

#: The issue's targets: cotune's time to the baseline's final accuracy and its trainable parameters,
#: as fractions of the baseline's training time and trainable parameters.
TIME_TARGET, PARAMS_TARGET = 0.3, 0.1


def time_to_reach(points: list[dict], target: float) -> dict:
    """The train seconds of the first evaluation at or above ``target`` (``train_s``), and that time
    interpolated linearly between it and the evaluation before (``interpolated_s``; the same when
    it is the first evaluation). ``reached`` False when no evaluation gets there."""
    previous = None
    for point in points:
        if point["accuracy"] >= target:
            interpolated = point["train_s"]
            if previous is not None and point["accuracy"] > previous["accuracy"]:
                fraction = (target - previous["accuracy"]) / (point["accuracy"] - previous["accuracy"])
                interpolated = previous["train_s"] + fraction * (point["train_s"] - previous["train_s"])
            return {"reached": True, "step": point["step"], "train_s": point["train_s"], "interpolated_s": round(interpolated, 1)}
        previous = point
    return {"reached": False, "step": None, "train_s": None, "interpolated_s": None}


def summarise(results: dict[str, dict]) -> dict:
    """Per side: parameters, throughput, memory, final accuracy and time to the baseline's final
    accuracy; and the two targets."""
    target = results["baseline"]["curve"][-1]["accuracy"]
    sides = {}
    for side, r in results.items():
        last = r["curve"][-1]
        sides[side] = {
            "trainable_params": r["trainable_params"], "total_params": r["total_params"], "image_tokens": r["image_tokens"],
            "steps": last["step"], "samples": last["samples"], "train_s": last["train_s"],
            "s_per_step": last["train_s"] / last["step"], "cpu_s_per_step": last["train_cpu_s"] / last["step"],
            "tokens_per_sample": last["tokens"] / last["samples"],
            "tokens_per_s": last["tokens"] / last["train_s"], "samples_per_s": last["samples"] / last["train_s"],
            "peak_rss_gb": r["peak_rss_gb"], "peak_cuda_gb": r.get("peak_cuda_gb"),
            "eval_s": sum(p["eval_s"] for p in r["curve"]), "process_s": r.get("process_s"),
            "final": {k: last.get(k) for k in ("accuracy", "yes_no_accuracy", "open_accuracy", "counter_prior_accuracy",
                                               "counter_prior_questions", "shuffled_accuracy", "shuffle_drop")},
            "at_wording_prior": at_wording_prior(last),
            "to_target": time_to_reach(r["curve"], target),
        }
    cotune, baseline = sides["cotune"], sides["baseline"]
    params = cotune["trainable_params"] / baseline["trainable_params"]
    reach, base = cotune["to_target"], baseline["to_target"]
    time_ratio = reach["train_s"] / base["train_s"] if reach["reached"] else None
    # Accuracy earned from the questions' wording is no target to race to: the time comparison is
    # judged only when neither side answers yes/no from the wording.
    judged = not cotune["at_wording_prior"] and not baseline["at_wording_prior"]
    return {
        "baseline_final_accuracy": target, "sides": sides,
        "targets": {
            "time_ratio": {"target": TIME_TARGET, "value": time_ratio, "judged": judged,
                           "met": (time_ratio is not None and time_ratio <= TIME_TARGET) if judged else None,
                           "interpolated": reach["interpolated_s"] / base["interpolated_s"] if reach["reached"] else None,
                           "lower_bound": None if reach["reached"] else cotune["train_s"] / base["train_s"]},
            "params_ratio": {"target": PARAMS_TARGET, "value": params, "met": params <= PARAMS_TARGET},
        },
    }


def at_wording_prior(point: dict) -> bool:
    """Whether an evaluation answers yes/no from the wording: below chance (50 %) on the yes/no
    questions whose answer the wording does not predict (unknown counts as at the prior)."""
    counter = point.get("counter_prior_accuracy")
    return counter is None or counter < 50.0


def _pct(value) -> str:
    return "-" if value is None else f"{value:.1f} %"


def _accuracy(final: dict) -> str:
    return f"{_pct(final['accuracy'])} (yes/no {_pct(final['yes_no_accuracy'])}, colour/shape {_pct(final['open_accuracy'])})"


def _grounding(final: dict) -> str:
    return (f"against the wording {_pct(final.get('counter_prior_accuracy'))} of {final.get('counter_prior_questions') or 0}; "
            f"shuffled images {_pct(final.get('shuffled_accuracy'))} (drop {_pct(final.get('shuffle_drop'))})")


def _reach(r: dict) -> str:
    if not r["reached"]:
        return "not reached"
    return f"{r['train_s']:.0f} s (step {r['step']}; interpolated {r['interpolated_s']:.0f} s)"


def results_table(summary: dict) -> list[str]:
    c, b = summary["sides"]["cotune"], summary["sides"]["baseline"]

    def ratio(key: str) -> str:
        return f"{c[key] / b[key]:.3f}" if c[key] is not None and b[key] else "-"

    def row(name: str, key: str, spec: str) -> tuple[str, str, str, str]:
        return name, format(c[key], spec), format(b[key], spec), ratio(key)

    rows = [
        row("trainable parameters", "trainable_params", ","), row("total parameters", "total_params", ","),
        row("image tokens per sample", "image_tokens", "d"),
        row("sequence tokens per sample (mean, no padding)", "tokens_per_sample", ".1f"),
        row("train seconds (all steps, evaluation excluded)", "train_s", ".0f"), row("seconds per step", "s_per_step", ".2f"),
        row("CPU seconds per step (all threads of the process)", "cpu_s_per_step", ".2f"),
        row("tokens/s", "tokens_per_s", ".0f"), row("samples/s", "samples_per_s", ".2f"),
        row("peak RSS GB (process)", "peak_rss_gb", ".2f"),
    ]
    if c["peak_cuda_gb"] is not None:
        rows.append(row("peak CUDA memory GB", "peak_cuda_gb", ".2f"))
    rows += [
        ("final held-out accuracy", _accuracy(c["final"]), _accuracy(b["final"]), ""),
        ("final: yes/no against the wording; accuracy with shuffled images", _grounding(c["final"]), _grounding(b["final"]), ""),
        (f"train seconds to {summary['baseline_final_accuracy']:.1f} % (the baseline's final)", _reach(c["to_target"]),
         _reach(b["to_target"]), ""),
        ("evaluation seconds (all evaluations, not counted above)", f"{c['eval_s']:.0f}", f"{b['eval_s']:.0f}", ""),
    ]
    return ["| | cotune (LaVIN-style) | baseline (LLaVA-style) | cotune / baseline |", "|---|---:|---:|---:|",
            *[f"| {name} | {x} | {y} | {z} |" for name, x, y, z in rows]]


def targets_table(summary: dict) -> list[str]:
    t = summary["targets"]
    time_value = (f"{t['time_ratio']['value']:.2f} (interpolated {t['time_ratio']['interpolated']:.2f})" if t["time_ratio"]["value"] is not None
                  else f"not reached (> {t['time_ratio']['lower_bound']:.2f})")
    verdict = ("not judged: a side answers yes/no from the wording" if t["time_ratio"]["met"] is None
               else "met" if t["time_ratio"]["met"] else "**NOT met**")
    return ["| target | value | met |", "|---|---:|---|",
            f"| cotune's time to the baseline's final accuracy <= {TIME_TARGET}x the baseline's | {time_value} | {verdict} |",
            f"| cotune's trainable parameters <= {PARAMS_TARGET}x the baseline's | {t['params_ratio']['value']:.4f} | "
            f"{'met' if t['params_ratio']['met'] else '**NOT met**'} |"]


def curve_table(results: dict[str, dict]) -> list[str]:
    lines = ["| step | cotune train s | cotune accuracy (yes/no, colour/shape); against the wording | baseline train s "
             "| baseline accuracy (yes/no, colour/shape); against the wording |",
             "|---:|---:|---|---:|---|"]
    by_step = {side: {p["step"]: p for p in r["curve"]} for side, r in results.items()}
    for step in sorted(set(by_step["cotune"]) | set(by_step["baseline"])):
        cells = []
        for side in ("cotune", "baseline"):
            p = by_step[side].get(step)
            cells += [f"{p['train_s']:.0f}", f"{_accuracy(p)}; {_pct(p.get('counter_prior_accuracy'))}"] if p else ["-", "-"]
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    return lines


def limits(summary: dict, eval_every: int) -> list[str]:
    """What decides each target, in measured numbers."""
    c, b, t = summary["sides"]["cotune"], summary["sides"]["baseline"], summary["targets"]
    step_ratio = c["s_per_step"] / b["s_per_step"]
    notes = [f"- Trainable parameters: {c['trainable_params']:,} against {b['trainable_params']:,} "
             f"({t['params_ratio']['value']:.4f}x): LoRA r 128 on every linear layer of a 135M LLM is large next to "
             f"cotune's adapters and neck; target {'met' if t['params_ratio']['met'] else 'NOT met'}."]
    cost = (f"a cotune step took {c['s_per_step']:.2f} s against the baseline's {b['s_per_step']:.2f} s ({step_ratio:.2f}x; "
            f"{c['tokens_per_sample']:.0f} against {b['tokens_per_sample']:.0f} sequence tokens per sample, {c['image_tokens']} against "
            f"{b['image_tokens']} of them image tokens)")
    if not t["time_ratio"]["judged"]:
        wording = [f"{side} ({_grounding(summary['sides'][side]['final'])})" for side in ("cotune", "baseline")
                   if summary["sides"][side]["at_wording_prior"]]
        notes.append(f"- Time to the baseline's accuracy: **not judged**. Below chance on the yes/no questions whose answer "
                     f"the wording does not predict: {'; '.join(wording)}. Their accuracy comes from the questions' wording, "
                     "so reaching it sooner says nothing about learning to read the image.")
    if not c["to_target"]["reached"]:
        notes.append(
            f"- Time to the baseline's accuracy: {'not judged' if not t['time_ratio']['judged'] else '**not met**'}. After {c['samples']:,} samples cotune's held-out accuracy is "
            f"{_accuracy(c['final'])}, below the baseline's final {_accuracy(b['final'])}, so it never reached the target in this run; "
            f"the ratio is at least {t['time_ratio']['lower_bound']:.2f} (all of cotune's train time over the baseline's time to its "
            f"accuracy). Per step, {cost}: "
            + ("what limits cotune here is what it learns per sample, not the cost of a step." if step_ratio <= TIME_TARGET else
               f"both limit it: it learns less per sample, and even learning as fast a step would cost more than {TIME_TARGET}x."))
        return notes
    steps = c["to_target"]["step"] / b["to_target"]["step"]
    verdict = "not judged" if t["time_ratio"]["met"] is None else "met" if t["time_ratio"]["met"] else "**not met**"
    notes.append(
        f"- Time to the baseline's accuracy ({summary['baseline_final_accuracy']:.1f} %): {verdict}, "
        f"{t['time_ratio']['value']:.2f}x. It splits into the cost of a step and the steps needed: {cost}, and cotune got there at "
        f"step {c['to_target']['step']} against the baseline's step {b['to_target']['step']} ({steps:.2f}x; with evaluations every "
        f"{eval_every} steps, neither is seen more finely than that).")
    if t["time_ratio"]["met"] is False:
        notes.append(f"- At this cost per step ({step_ratio:.2f}x) cotune would have to reach the baseline's accuracy within "
                     f"{TIME_TARGET / step_ratio:.2f}x the baseline's steps to meet {TIME_TARGET}x; it needed {steps:.2f}x.")
    return notes


def plot(results: dict[str, dict], summary: dict, path: Path) -> None:
    """Held-out accuracy over train seconds and training loss over steps, both sides."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (acc, loss) = plt.subplots(1, 2, figsize=(11, 4))
    labels = {"cotune": "cotune (7 image tokens)", "baseline": "LLaVA-style (LoRA r128, 49 image tokens)"}
    for side, r in results.items():
        acc.plot([p["train_s"] for p in r["curve"]], [p["accuracy"] for p in r["curve"]], marker="o", label=labels[side])
        loss.plot([p["step"] for p in r["losses"]], [p["loss"] for p in r["losses"]], label=labels[side], alpha=0.8, linewidth=1)
    target = summary["baseline_final_accuracy"]
    acc.axhline(target, color="grey", linestyle="--", linewidth=1, label=f"baseline's final accuracy ({target:.1f} %)")
    reach = summary["sides"]["cotune"]["to_target"]
    if reach["reached"]:
        acc.axvline(reach["train_s"], color="C0", linestyle=":", linewidth=1)
    acc.set(xlabel="training seconds (evaluation excluded)", ylabel="held-out easy-VQA accuracy (%)", title="accuracy")
    loss.set(xlabel="step", ylabel="training loss (mean over the batch's answer tokens)", title="training loss")
    acc.legend(fontsize=8)
    loss.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _steps_sentence(plan) -> str:
    cotune_steps = plan.steps_of("cotune")
    questions = f"{plan.steps * plan.batch_size:,} training questions drawn once without replacement from the pool"
    if cotune_steps == plan.steps:
        return f"Both sides: {plan.steps} steps of {plan.batch_size} samples, {questions}"
    return (f"Baseline: {plan.steps} steps of {plan.batch_size} samples, {questions}; cotune, whose steps are cheaper: "
            f"{cotune_steps} steps (`--cotune-steps`, to train for about as long as the baseline), the same questions plus "
            f"{(cotune_steps - plan.steps) * plan.batch_size:,} more drawn the same way")


#: cotune's side per ``Plan.recipe``, for the report.
COTUNE_SIDES = {
    "grounded": "the demo recipe without audio: LoRA r 16 (alpha 32) on every linear layer of the LLM, gated by media, "
                "lr 1e-3; LaVIN neck (hidden 128, lr 3e-3) on the 7x7 grid averaged row by row (7 tokens), frozen MobileNetV2 "
                "whose features are computed once per image (the demo's feature cache); modality embedding; CoMMIT's "
                "coordinated rates (`commit_clr`, exact kappa every 50 steps, `kl_equalise`); 15 warmup steps, cosine; "
                "cotune's Trainer.",
    "mm_adapter": "the MM-Adapter recipe (`benchmarks/mm_adapter_recipe.yaml`) without audio: MM-Adapters (dim 8, 2 experts) in "
                  "all 30 LLM blocks and all 18 MobileNetV2 blocks, LaVIN neck (hidden 128) on the 7x7 grid averaged row by row "
                  "(7 tokens), modality embedding, CoMMIT (exact kappa every 50 steps); lr 1e-3 LLM adapters, 3e-4 encoder "
                  "adapters, 3e-3 neck; 15 warmup steps, cosine; cotune's Trainer.",
}


def report_stem(out: Path, plan) -> Path:
    """``out/versus_llava-<device>``, with ``-mm-adapter`` for that recipe's runs and ``-<tag>`` for a tagged variant."""
    device = "cuda" if plan.device.startswith("cuda") else "cpu"
    return out / (f"versus_llava-{device}" + ("-mm-adapter" if plan.recipe == "mm_adapter" else "") + (f"-{plan.tag}" if plan.tag else ""))


def report_files(results: dict, plan, max_new_tokens: int, command: str, info: dict, others: tuple, runtime: float, out: Path | None) -> str:
    """The Markdown report; with ``out``, also writes ``report_stem``.{md,json,png} there."""
    from benchmarks.versus_llava_measure import mix_sentence

    summary = summarise(results)
    device = "cuda" if plan.device.startswith("cuda") else "cpu"
    precision = "frozen LLM in bfloat16, bf16 autocast" if device == "cuda" else "float32"
    baseline_recipe, held = results["baseline"]["recipe"], results["cotune"]["curve"][-1]
    text = "\n".join([
        f"# cotune versus the LLaVA-style route ({device})", "",
        f"Command: `{command}` (total runtime {runtime / 60:.1f} min: "
        + (f"cotune's side, model loading and evaluations included; the baseline's result reused from `{results['baseline']['reused_from']}`, "
           "an earlier run with the same settings)" if results["baseline"].get("reused_from") else
           "both sides, model loading and evaluations included)"), "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in info.items()), "",
        f"Other processes used {others[0]:.0f} core-seconds during the run ({100 * others[1]:.1f}% of the machine)"
        + (": **timings are pessimistic**." if others[1] > 0.05 else "."), "",
        f"Task: easy-VQA, SmolLM2-135M-Instruct + MobileNetV2 (the zoo's copies), {precision}. {_steps_sentence(plan)} "
        f"({plan.pool:,} first train questions: {mix_sentence(plan.recipe)}; the same file for both sides; each "
        "seen once), the chat template with system prompt \"Answer briefly.\", 224 px MobileNetV2 inputs. Held-out: the same "
        f"{held['questions']} easy-VQA test questions (seed {plan.seed}: {held['yes_no_questions']} yes/no, {held['open_questions']} "
        "colour/shape), greedy, "
        f"at most {max_new_tokens} new tokens, cotune's easy-VQA scoring for both (the word after a description's last `:`); "
        f"evaluated every {plan.eval_every} steps and after the last"
        + (", with shuffled images at every evaluation." if plan.shuffled_at == "every" else ", with shuffled images at each side's last.")
        + (" The two sides ran at the same time, each in its own process." if plan.parallel else ""), "",
        f"- **cotune**: {COTUNE_SIDES[plan.recipe]}"
        + (f" Overridden: {', '.join(f'`{o}`' for o in plan.cotune_overrides)}." if plan.cotune_overrides else ""),
        f"- **baseline** (`benchmarks/llava_baseline.py`, transformers + PEFT): all 49 patch tokens of the same grid through mlp2x_gelu "
        f"(1280 -> 576 -> GELU -> 576) spliced into `inputs_embeds`; frozen MobileNetV2 (eval mode); PEFT LoRA r {baseline_recipe['lora_r']}, "
        f"alpha {baseline_recipe['lora_alpha']}, dropout {baseline_recipe['lora_dropout']} on all linear layers of the LLM; "
        f"`transformers.Trainer`, AdamW lr {baseline_recipe['lr']:g}, {baseline_recipe['schedule']}, "
        f"warmup ratio {baseline_recipe['warmup_ratio']}, "
        f"weight decay {baseline_recipe['weight_decay']:g} (LLaVA-1.5 `finetune_lora.sh`); projector lr {baseline_recipe['projector_lr']:g}, "
        "stage 1's rate, because no stage-1 alignment pretrained it (`finetune_lora.sh` gives an aligned projector 2e-5); no gradient "
        "checkpointing. `LlavaForConditionalGeneration` is not used: it needs a transformers vision config, which MobileNetV2 has not.", "",
        "Train seconds: each side's training loop (data loading and optimizer included, model loading not), with every evaluation "
        "taken off the clock. Time to the baseline's final accuracy: the train seconds of the first evaluation at or above it "
        "(the headline), and linearly interpolated from the evaluation before. tokens/s: non-padding sequence tokens, image tokens "
        "included. CPU seconds: the process's CPU time over the same spans, all threads (with `--threads 1` it hardly moves when "
        "other processes load the machine; with more threads, OpenMP threads waiting on each other count too). Peak RSS: "
        "`getrusage` maxrss of the side's own process (loading and evaluation included).", "",
        *results_table(summary), "",
        "## Targets", "",
        *targets_table(summary), "",
        *limits(summary, plan.eval_every), "",
        "## Accuracy during training", "",
        *curve_table(results), "",
    ])
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        stem = report_stem(out, plan)
        text += f"\nFigure: `{stem.name}.png` (accuracy over train seconds; training loss over steps).\n"
        stem.with_suffix(".md").write_text(text)
        payload = {"command": command, "machine": info, "plan": asdict(plan), "training_mix": mix_sentence(plan.recipe),
                   "other_processes_share": round(others[1], 3), "runtime_s": round(runtime, 1), **summary, "results": results}
        stem.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n")
        plot(results, summary, stem.with_suffix(".png"))
        log.info("wrote %s.{md,json,png}", stem)
    return text
