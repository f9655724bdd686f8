"""The two sides of ``versus_llava.py`` (that module's docstring says what each trains and how
both are measured): cotune's Trainer on ``Plan.recipe``, and the LLaVA-style baseline of
``llava_baseline.py`` under ``transformers.Trainer``. Each returns its parameters, accuracy curve,
losses and peak memory; ``plan`` is ``versus_llava.Plan``."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path

import torch

from benchmarks import llava_baseline
from benchmarks.versus_llava_measure import (
    Curve, due, eval_samples, peak_memory, score_answers, shuffled_samples, train_set_dir,
)

log = logging.getLogger("benchmarks.versus_llava")

LLM_ID, VISION_ID = "HuggingFaceTB/SmolLM2-135M-Instruct", "torchvision/mobilenet_v2"
SYSTEM_PROMPT = "Answer briefly."
MAX_NEW_TOKENS = 6


# ---------------------------------------------------------------------------------- cotune


def cotune_config(train_set: Path, easyvqa: Path, plan, work: Path):
    """``plan.recipe`` restricted to images, on the drawn training set (whose answers already are
    the recipe's targets). The grounded recipe keeps the demo's feature cache (``work/features``):
    its image encoder is frozen, so an image's features are computed once."""
    from cotune.config import load_config
    from cotune.demo.pipeline import packaged_recipe
    from benchmarks.recipes import mm_adapter_recipe

    recipe = mm_adapter_recipe() if plan.recipe == "mm_adapter" else packaged_recipe()
    del recipe["model"]["encoders"]["audio"]
    groups = recipe["train"]["groups"]
    groups.get("encoder", {}).pop("audio", None)
    if not groups.get("encoder", True):
        del groups["encoder"]
    recipe["seed"] = plan.seed
    recipe["data"]["train"] = [{"kind": "easyvqa", "path": str(train_set), "split": "train", "name": "easyvqa:drawn",
                                "media_root": str(easyvqa / "train" / "images")}]
    if plan.recipe == "grounded":
        recipe["data"]["feature_cache"] = str(work / "features")
    steps = plan.steps_of("cotune")
    recipe["data"].update(batch_size=plan.batch_size, epoch_size=steps * plan.batch_size)
    recipe["train"].update(max_steps=steps, checkpoint_every=steps, keep_checkpoints=1)
    if plan.device.startswith("cuda"):
        recipe["model"]["llm"]["dtype"] = "bfloat16"
        recipe["train"]["precision"] = "bf16"
    return load_config(data=recipe, overrides=list(plan.cotune_overrides))


def run_cotune(work: Path, easyvqa: Path, plan) -> dict:
    from cotune.eval.runner import predict_samples
    from cotune.model.data_spec import data_spec_from_model
    from cotune.train import Trainer

    class CurvePoints:
        """The benchmark's evaluations between steps; the Trainer leaves callback time out of its
        step times, and the Curve takes it off this side's training clock."""

        def on_train_begin(self, trainer) -> None:
            curve.start()
            if plan.eval_at_start:
                curve.point(0, 0, 0)

        def on_step_end(self, trainer, record: dict) -> None:
            if due(trainer.state.step, plan, "cotune"):
                curve.point(trainer.state.step, trainer.state.samples_seen, trainer.state.tokens_seen)

    config = cotune_config(train_set_dir(work, plan, "cotune"), easyvqa, plan, work)
    samples = eval_samples(easyvqa, plan)
    shuffled = shuffled_samples(samples, plan)
    trainer = Trainer(config, work / "cotune-run", callbacks=[CurvePoints()])
    trainer.setup()
    spec = data_spec_from_model(trainer.model, config.data)

    def answer(items) -> list:
        answers = predict_samples(trainer.model, spec, items, batch_size=plan.eval_batch_size, max_new_tokens=MAX_NEW_TOKENS)
        return [(p.sample, p.text) for p in answers]

    def evaluate(step: int) -> dict:
        return score_answers(answer(samples), answer(shuffled) if plan.shuffled_due(step, "cotune") else None)

    curve = Curve(evaluate)
    trainer.run()
    counts = trainer.model.parameter_counts()
    losses = [json.loads(line) for line in (work / "cotune-run" / "metrics.jsonl").read_text().splitlines()]
    return {"side": "cotune", "trainable_params": sum(c["trainable"] for c in counts.values()),
            "total_params": sum(c["total"] for c in counts.values()), "components": counts,
            "image_tokens": spec.encoders[0].tokens, "curve": curve.points,
            "losses": [{"step": r["step"], "loss": r["loss"]} for r in losses if "loss" in r], **peak_memory(plan.device)}


# ---------------------------------------------------------------------------------- baseline


def run_baseline(work: Path, easyvqa: Path, plan) -> dict:
    from transformers import PrinterCallback, TrainerCallback

    from cotune.eval.runner import decode
    from cotune.zoo.sources import resolve_path

    cuda = plan.device.startswith("cuda")
    torch.manual_seed(plan.seed)  # the projector's initialisation
    model, tokenizer, processor, n = llava_baseline.build_baseline(
        resolve_path(LLM_ID), resolve_path(VISION_ID), llm_dtype=torch.bfloat16 if cuda else torch.float32)
    model.to(plan.device)
    samples = eval_samples(easyvqa, plan)
    shuffled = shuffled_samples(samples, plan)
    dataset = llava_baseline.VqaDataset(work / "train-set" / "train" / "questions.json", easyvqa / "train" / "images",
                                        tokenizer, processor, n, SYSTEM_PROMPT)

    @torch.no_grad()
    def answer(items) -> list:
        pairs = []
        settings = {"max_new_tokens": MAX_NEW_TOKENS, "do_sample": False, "eos_token_id": tokenizer.eos_token_id,
                    "pad_token_id": tokenizer.pad_token_id}
        for start in range(0, len(items), plan.eval_batch_size):
            batch = items[start : start + plan.eval_batch_size]
            rows = [llava_baseline.prompt_ids(tokenizer, s.messages[0].content, SYSTEM_PROMPT, n) for s in batch]
            ids, mask = llava_baseline.left_pad(rows, tokenizer.pad_token_id)
            pixels = torch.stack([llava_baseline.pixel_values(processor, s.media["image"][0]) for s in batch])
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
                out = model.generate(ids.to(plan.device), mask.to(plan.device), pixels.to(plan.device), **settings)
            pairs += [(s, decode(tokenizer, row)) for s, row in zip(batch, out.cpu())]
        return pairs

    def evaluate(step: int) -> dict:
        model.eval()
        result = score_answers(answer(samples), answer(shuffled) if plan.shuffled_due(step, "baseline") else None)
        model.train()
        return result

    curve = Curve(evaluate)

    class CurveCallback(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            curve.start()
            if plan.eval_at_start:
                curve.point(0, 0, 0)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs and (state.global_step % 10 == 0 or state.global_step == plan.steps):
                log.info("step %d/%d loss=%.4f lr=%.2e", state.global_step, plan.steps, logs["loss"], logs.get("learning_rate", 0.0))

        def on_step_end(self, args, state, control, **kwargs):
            if due(state.global_step, plan, "baseline"):
                curve.point(state.global_step, state.global_step * plan.batch_size, state.num_input_tokens_seen)

    trainer = llava_baseline.make_trainer(model, dataset, llava_baseline.Collator(tokenizer.pad_token_id), steps=plan.steps,
                                          batch_size=plan.batch_size, out=work / "baseline-run", seed=plan.seed,
                                          device=plan.device, callbacks=[CurveCallback()], logging_steps=1)
    trainer.remove_callback(PrinterCallback)  # a printed dict per step; CurveCallback logs every 10
    trainer.train()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    components = {name: {"total": sum(p.numel() for p in part.parameters()),
                         "trainable": sum(p.numel() for p in part.parameters() if p.requires_grad)}
                  for name, part in (("llm (+ LoRA)", model.llm), ("vision tower", model.vision_tower), ("projector", model.projector))}
    return {"side": "baseline", "trainable_params": trainable, "total_params": sum(p.numel() for p in model.parameters()),
            "components": components, "image_tokens": n, "curve": curve.points,
            "losses": [{"step": r["step"], "loss": r["loss"]} for r in trainer.state.log_history if "loss" in r],
            "recipe": asdict(llava_baseline.LlavaRecipe()), **peak_memory(plan.device)}
