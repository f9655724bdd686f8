"""The memory plan (``cotune inspect --memory``) against measured peaks of real training steps on the CPU.

For each case the model is built with its weights, one training step runs (so AdamW's state exists,
as in every later step) and the next step is measured with ``cotune.train.memory_measure``: the
bytes of the parameters, buffers and optimizer state plus the profiler's peak of the CPU
allocator's running total during the step, the quantity ``torch.cuda.max_memory_allocated`` gives on
a GPU. The plan for the same config and batch comes from the meta-device model only
(``device="cpu"``: the CPU's dropout keeps float32 noise where CUDA keeps a boolean mask).

A step is the Trainer's with one micro-batch: forward with labels and ``supervised_logits`` (under
bf16 autocast for ``precision: bf16``), backward of the token-normalised loss, gradient clipping,
the Trainer's AdamW, ``zero_grad(set_to_none=True)``; the balance controller's kappa estimate is
off (``balance.estimator: none``) on both sides of the comparison. Batches are synthetic: every row holds each
encoder's placeholder tokens and random text, the last ``answer`` tokens are supervised, and the
first row ends in padding (so the padding mask exists, as in real batches of unequal rows).

Cases: the tiny backbones of ``cotune.testing.tiny`` (LLaMA 2 x 32 wide + CLIP 3 x 24 wide, MM-Adapters in
both, as tests/train/test_memory_plan.py; fp32, bf16 autocast, gradient checkpointing, LoRA) and, when
the zoo cache has them, SmolLM2-135M-Instruct with MobileNetV2 and Whisper tiny.en (the demo recipe)
and the ``zoo_model.py`` cases.

    python -m benchmarks.memory_plan                 # tiny + zoo; writes results/memory_plan-cpu.md
    python -m benchmarks.memory_plan --quick         # tiny only; nothing saved
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import platform
import subprocess
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def synthetic_batch(model, batch: int, seq: int, answer: int, pad: int = 8, seed: int = 0) -> dict:
    """Rows of ``seq`` tokens: BOS-like id, each encoder's placeholders, random text; the last
    ``answer`` tokens supervised; row 0's last ``pad`` tokens are padding."""
    g = torch.Generator().manual_seed(seed)
    vocab = model.llm.get_input_embeddings().weight.shape[0]
    ids = torch.randint(min(100, vocab // 2), vocab, (batch, seq), generator=g)
    start, media = 1, {}
    for name, token in model.placeholder_ids.items():
        n = model.num_media_tokens(name)
        ids[:, start:start + n] = token
        start += n
        item = model.encoders[name].dummy_input()
        media[name] = torch.randn(batch, *item.shape[1:], generator=g)
    mask = torch.ones_like(ids)
    mask[0, seq - pad:] = 0
    labels = ids.clone()
    labels[:, :seq - answer] = -100
    labels[mask == 0] = -100
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "media": media, "sample_ids": list(range(batch))}


def kept_positions(batch: dict) -> int:
    return int((batch["labels"][:, 1:] != -100).any(0).sum())


class Step:
    """One training step of ``config``'s model on ``batch``, as the Trainer takes it."""

    def __init__(self, config, batch_fn) -> None:
        from cotune.model import build_model
        from cotune.train.groups import optimizer_groups
        from cotune.train.step import make_optimizer
        from cotune.zoo import resolve_sources

        torch.manual_seed(0)
        self.config = config
        self.model = build_model(config, sources=resolve_sources(config.model))
        if config.train.gradient_checkpointing:
            self.model.enable_gradient_checkpointing()
        self.model.train()
        groups, settings = optimizer_groups(self.model, config.train, steps_per_epoch=100)
        for group in groups:
            group["lr"] = 1e-4
        self.optimizer = make_optimizer(groups, config.train)
        self.batch = batch_fn(self.model)

    def __call__(self) -> None:
        b, train = self.batch, self.config.train
        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if train.precision == "bf16" else contextlib.nullcontext()
        with autocast:
            out = self.model(b["input_ids"], b["attention_mask"], labels=b["labels"], media=b["media"],
                             sample_ids=b["sample_ids"], supervised_logits=True)
            loss = out.loss_sum / out.num_tokens.clamp(min=1)
        loss.backward()
        if train.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad], train.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def measure(name: str, config, batch: int, seq: int, answer: int) -> dict:
    """Measured peak and the plan's estimate for one case (without the balance controller's kappa
    estimates, which this step does not take; tests/train/test_memory_plan.py measures Trainer steps with them)."""
    from dataclasses import replace

    from cotune.config import BalanceConfig
    from cotune.model import build_model
    from cotune.train.memory import MemoryEstimator
    from cotune.train.memory_measure import measured_step_peak
    from cotune.zoo import resolve_sources

    config = replace(config, balance=BalanceConfig(estimator="none"))
    step = Step(config, lambda m: synthetic_batch(m, batch, seq, answer))
    step()
    measured = measured_step_peak(step, step.model, step.optimizer)
    kept = kept_positions(step.batch)
    del step
    estimator = MemoryEstimator(config, build_model(config, meta=True, sources=resolve_sources(config.model)))
    plan = estimator.plan(estimator.settings(batch, seq, None, kept / seq, device="cpu"))
    return {"case": name, "batch": batch, "seq": seq, "kept": kept, "measured": measured, "estimate": plan.peak,
            "phase": plan.peak_phase, "ratio": plan.peak / measured}


def tiny_cases(work: Path) -> list[tuple[str, object, int, int, int]]:
    from cotune.testing import corpus

    from cotune.config import load_config

    raw = corpus.run_config(work / "tiny", work / "data")
    variants = {
        "tiny MM-Adapters fp32": [],
        "tiny MM-Adapters bf16 autocast": ["train.precision=bf16"],
        "tiny MM-Adapters checkpointed": ["train.gradient_checkpointing=true"],
        "tiny LoRA r 4": ["model.llm.trainable=lora", "model.llm.adapter.type=lora", "model.llm.adapter.lora_r=4"],
        "tiny bf16 weights, bf16 autocast": ["model.llm.dtype=bfloat16", "model.encoders.image.dtype=bfloat16", "train.precision=bf16"],
        "tiny bf16 weights, fp32": ["model.llm.dtype=bfloat16", "model.encoders.image.dtype=bfloat16"],
    }
    cases = [(name, load_config(data=raw, overrides=o), 4, 64, 24) for name, o in variants.items()]
    if importlib.util.find_spec("bitsandbytes") is not None:
        # bitsandbytes' CPU 4-bit kernel needs multiples of 64 input features: the 64-wide tiny twins.
        from cotune.testing import tiny

        wide = corpus.run_config(work / "tiny", work / "data")
        wide["model"]["llm"]["name_or_path"] = str(tiny.save_llm(work / "tiny", "llama-64"))
        wide["model"]["encoders"]["image"]["name_or_path"] = str(tiny.save_encoder(work / "tiny", "clip-64"))
        for bits in (4, 8):
            quantization = {"bits": bits} if bits == 8 else {"bits": 4, "type": "nf4", "double_quant": True}
            overrides = [f"model.llm.quantization={quantization}", f"model.encoders.image.quantization={quantization}"]
            cases.append((f"tiny 64-wide, {bits}-bit LLM and CLIP", load_config(data=wide, overrides=overrides), 4, 64, 24))
    return cases


def zoo_cases() -> list[tuple[str, object, int, int, int]]:
    from benchmarks import zoo_model

    from cotune.config import load_config
    from benchmarks.recipes import mm_adapter_recipe

    demo = load_config(data={"model": mm_adapter_recipe()["model"], "train": mm_adapter_recipe()["train"]})
    lora = zoo_model.zoo_config("lora")
    mma = zoo_model.zoo_config("mma")
    from dataclasses import replace

    checkpointed = replace(mma, train=replace(mma.train, gradient_checkpointing=True))
    autocast = replace(mma, train=replace(mma.train, precision="bf16"))
    llm = replace(mma.model.llm, dtype="bfloat16")
    matched = replace(autocast, model=replace(mma.model, llm=llm))
    return [
        ("demo recipe (SmolLM2 + MobileNetV2 + Whisper tiny.en)", demo, 16, 64, 8),
        ("SmolLM2 + MobileNetV2, MM-Adapters", mma, 4, 256, 128),
        ("SmolLM2 + MobileNetV2, MM-Adapters, checkpointed", checkpointed, 4, 256, 128),
        ("SmolLM2 + MobileNetV2, MM-Adapters, 8-token answers", mma, 4, 256, 8),
        ("SmolLM2 + MobileNetV2, MM-Adapters, checkpointed, 8-token answers", checkpointed, 4, 256, 8),
        ("SmolLM2 + MobileNetV2, LoRA r 16", lora, 4, 256, 128),
        ("SmolLM2 + MobileNetV2, MM-Adapters, bf16 autocast (float32 weights)", autocast, 4, 256, 128),
        ("SmolLM2 (bfloat16) + MobileNetV2, MM-Adapters, bf16 autocast", matched, 4, 256, 128),
    ]


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        return platform.processor() or "unknown CPU"


def table(results: list[dict]) -> list[str]:
    lines = ["| case | batch x tokens (logit positions) | measured peak MiB | plan MiB | plan / measured | plan's peak phase |",
             "|---|---|---:|---:|---:|---|"]
    for r in results:
        lines.append(f"| {r['case']} | {r['batch']} x {r['seq']} ({r['kept']}) | {r['measured'] / 2**20:.2f} | "
                     f"{r['estimate'] / 2**20:.2f} | {r['ratio']:.3f} | {r['phase']} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny cases only; nothing saved")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", help="run the cases whose name contains this text")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        cases = tiny_cases(Path(tmp))
        if not args.quick:
            cases += zoo_cases()
        for name, config, batch, seq, answer in cases:
            if args.only and args.only not in name:
                continue
            results.append(measure(name, config, batch, seq, answer))
            print(table(results[-1:])[-1], flush=True)
    import transformers

    versions = f"torch {torch.__version__}, transformers {transformers.__version__}"
    if importlib.util.find_spec("bitsandbytes") is not None:
        import bitsandbytes

        versions += f", bitsandbytes {bitsandbytes.__version__}"
    report = [
        "# Memory plan against measured peaks (CPU)", "",
        f"CPU: {cpu_name()} (lscpu), {versions}, {args.threads} thread(s).",
        "Command: `python -m benchmarks.memory_plan`. Measured: live tensor bytes (parameters, buffers, AdamW state) plus "
        "the profiler's peak of the CPU allocator during the second training step.", "", *table(results), "",
    ]
    print("\n".join(report))
    if not args.quick and not args.only:
        (Path(__file__).parent / "results" / "memory_plan-cpu.md").write_text("\n".join(report))


if __name__ == "__main__":
    main()
