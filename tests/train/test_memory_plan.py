"""The memory plan: its formula against the tensors autograd really keeps, its weights against the
real parameters and bitsandbytes' storage, its peak against measured peaks of Trainer steps, and
the invariants a plan must keep (more batch, more memory; checkpointing and 4 bits, less)."""

from __future__ import annotations

import importlib.util
from dataclasses import replace

import pytest
import torch
import transformers

from cotune.config import load_config
from cotune.model import build_model
from cotune.testing import corpus
from cotune.testing import tiny
from cotune.train import Trainer
from cotune.train.memory import MemoryEstimator, plan_memory
from cotune.train.memory_activations import LayerSetup, layer_bytes_per_token, llm_shape, step_dtypes
from cotune.train.memory_measure import live_bytes, measured_step_peak, profiled_peak
from cotune.train.memory_weights import quantized_bytes

BATCH, SEQ, ANSWER = 4, 64, 24
VARIANTS = {
    "mm-adapters fp32": [],
    "bf16 autocast": ["train.precision=bf16"],
    "checkpointed": ["train.gradient_checkpointing=true"],
    "lora": ["model.llm.trainable=lora", "model.llm.adapter.type=lora", "model.llm.adapter.lora_r=4"],
}


def tiny_config(tiny_root, tmp_path, overrides=()):
    return load_config(data=corpus.run_config(tiny_root, tmp_path / "data", max_steps=2), overrides=[*overrides, f"data.batch_size={BATCH}"])


def synthetic_batch(model, seed: int = 0) -> dict:
    """BATCH rows of SEQ tokens: placeholders, random text, the last ANSWER tokens supervised; row
    0 ends in 5 padding tokens (so the padding mask exists, as in real batches)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, tiny.TOKENIZER_SIZE - 10, (BATCH, SEQ), generator=g)
    n = model.num_media_tokens("image")
    ids[:, 1:1 + n] = model.placeholder_ids["image"]
    mask = torch.ones_like(ids)
    mask[0, -5:] = 0
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :SEQ - ANSWER] = -100
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "media": {"image": tiny.media_input("clip", BATCH, g)},
            "sample_ids": list(range(BATCH)), "num_supervised": int((labels[:, 1:] != -100).sum())}


def kept(batch) -> int:
    return int((batch["labels"][:, 1:] != -100).any(0).sum())


# ----------------------------------------------------------------- the peak of real Trainer steps
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_plan_matches_the_measured_peak_of_a_trainer_step(tiny_root, tmp_path, variant):
    """The profiler's peak of one real Trainer step (the second: AdamW's state exists) against the
    plan for the same config and batch shape. The static part (weights, AdamW) is exact, so the
    comparison is made on what lies beyond it (activations, logits, gradients), within 15 %."""
    torch.set_num_threads(1)
    config = tiny_config(tiny_root, tmp_path, VARIANTS[variant])
    trainer = Trainer(config, tmp_path / "run")
    trainer.setup()
    batch = synthetic_batch(trainer.model)
    trainer.model.train()
    trainer._step([batch])
    measured = measured_step_peak(lambda: trainer._step([batch]), trainer.model, trainer.optimizer)

    estimator = MemoryEstimator(config, build_model(config, meta=True))
    plan = estimator.plan(estimator.settings(BATCH, SEQ, None, kept(batch) / SEQ, device="cpu"))
    static = sum(t.bytes for t in plan.static)
    persistent = live_bytes([*trainer.model.parameters(), *trainer.model.buffers()])
    assert static - 12 * sum(p.numel() for p in trainer.model.parameters() if p.requires_grad) == pytest.approx(
        persistent - 4 * sum(p.numel() for p in trainer.model.parameters() if p.requires_grad), rel=0.01)
    beyond = (plan.peak - static) / (measured - static)
    assert 0.85 <= beyond <= 1.15, (variant, plan.peak, measured, plan.phases)
    assert plan.peak_with < plan.peak_without


def test_profiled_peak_counts_what_a_call_holds_at_once():
    torch.set_num_threads(1)

    def work():
        a = torch.empty(1000, dtype=torch.float32)
        b = torch.empty(3000, dtype=torch.float32)
        del a, b
        return torch.empty(2000, dtype=torch.float32).sum()

    assert profiled_peak(work) == pytest.approx(16_000, abs=64)
    assert profiled_peak(work) == profiled_peak(work)  # independent of earlier profiled calls


# ----------------------------------------------------------------- the layer formula, exactly
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("dtype, precision", [("float32", "fp32"), ("float32", "bf16"), ("bfloat16", "fp32")])
def test_layer_formula_equals_the_tensors_autograd_keeps(tiny_root, dtype, precision, padded, attention):
    """One decoder layer of the tiny LLaMA with frozen weights and gradients flowing: the distinct
    storages saved for backward equal layer_bytes_per_token x tokens."""
    path = tiny.save_llm(tiny_root, "llama")
    llm = transformers.AutoModelForCausalLM.from_pretrained(
        path, dtype=getattr(torch, dtype), attn_implementation=attention).requires_grad_(False)
    layer = llm.model.layers[1]
    hidden = torch.randn(BATCH, SEQ, 32, dtype=getattr(torch, dtype), requires_grad=True)
    mask = torch.ones(BATCH, SEQ, dtype=torch.long)
    if padded:
        mask[0, -5:] = 0
    context = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else torch.autocast("cpu", enabled=False)
    saved: dict[int, int] = {}
    with context:
        position_ids = torch.arange(SEQ)[None]
        embeddings = llm.model.rotary_emb(hidden, position_ids)
        causal = transformers.masking_utils.create_causal_mask(
            config=llm.config, inputs_embeds=hidden, attention_mask=mask, cache=None, position_ids=position_ids)
        with saving_into(saved, llm):
            layer(hidden, attention_mask=causal, position_embeddings=embeddings, position_ids=position_ids)
    types = step_dtypes(dtype, precision, quantized=False)
    shape = replace(llm_shape_of(llm), adapters=0)
    expected = BATCH * SEQ * layer_bytes_per_token(shape, types, LayerSetup(attention=attention, padded=padded), SEQ)
    copies = 2 * shape.frozen_linear_params if types.cast_copies else 0
    cos_sin = 2 * SEQ * 8 * (4 if dtype == "float32" else 2)  # RoPE's cos and sin, shared by every layer
    assert sum(saved.values()) == pytest.approx(expected + copies + cos_sin, abs=4 * BATCH * SEQ)


@pytest.mark.parametrize("family", ["qwen2", "mistral", "gemma", "phi", "gpt2"])
def test_layer_formula_across_llm_families(tiny_root, family):
    """Every layer of other tiny families (GQA, gelu_new, parallel blocks, GPT-2's Conv1D) and the
    final norm: the formula within 12 % of the storages autograd keeps."""
    llm = transformers.AutoModelForCausalLM.from_pretrained(tiny.save_llm(tiny_root, family)).requires_grad_(False)
    hidden = torch.randn(BATCH, SEQ, 32, requires_grad=True)
    mask = torch.ones(BATCH, SEQ, dtype=torch.long)
    mask[0, -5:] = 0
    saved: dict[int, int] = {}
    with saving_into(saved, llm):
        llm(inputs_embeds=hidden, attention_mask=mask)
    shape = llm_shape_of(llm)
    per_token = layer_bytes_per_token(shape, step_dtypes("float32", "fp32", quantized=False), LayerSetup(), SEQ)
    expected = BATCH * SEQ * (shape.layers * per_token + shape.hidden * 4)
    assert sum(saved.values()) == pytest.approx(expected, rel=0.12)


def saving_into(saved: dict[int, int], llm):
    """Records into ``saved`` (storage pointer -> bytes) every storage autograd keeps for backward
    inside the block, except ``llm``'s frozen weights."""
    frozen = {p.untyped_storage().data_ptr() for p in llm.parameters()}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in frozen:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    return torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)


def llm_shape_of(llm):
    """llm_shape for a bare causal LM (it reads ``model.llm``)."""
    class Holder:
        pass

    holder = Holder()
    holder.llm = llm
    return llm_shape(holder)


# ----------------------------------------------------------------- weights
def test_static_terms_equal_the_real_parameters(tiny_root, tmp_path):
    config = tiny_config(tiny_root, tmp_path, ["model.llm.dtype=bfloat16", "model.encoders.image.dtype=bfloat16"])
    model = build_model(config)
    plan = plan_memory(config, batch_size=BATCH, seq_len=SEQ)
    weights = {t.name: t.bytes for t in plan.static}
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert weights["trainable parameters"] == 4 * sum(p.numel() for p in trainable)
    assert weights["AdamW states"] == 8 * sum(p.numel() for p in trainable)
    for component, module in model.components().items():
        frozen = sum(p.numel() * p.element_size() for p in module.parameters() if not p.requires_grad)
        assert weights.get(f"weights {component}", 0) == frozen


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="bitsandbytes not installed")
@pytest.mark.parametrize("bits, double_quant", [(4, True), (4, False), (8, False)])
def test_quantized_bytes_equal_bitsandbytes_storage(bits, double_quant):
    import bitsandbytes as bnb

    from cotune.config.model import QuantizationConfig

    out_features, in_features = 256, 512
    weight = torch.randn(out_features, in_features)
    if bits == 4:
        param = bnb.nn.Params4bit(weight, requires_grad=False, quant_type="nf4", compress_statistics=double_quant).to("cpu")
        state = param.quant_state
        tensors = [param, state.absmax, state.code]
        if state.nested:
            tensors += [state.state2.absmax, state.state2.code, state.offset]
    else:
        param = bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=False).to("cpu")
        tensors = [param, param.SCB]
    stored = sum(t.numel() * t.element_size() for t in tensors)
    assert quantized_bytes(weight.numel(), out_features, QuantizationConfig(bits=bits, double_quant=double_quant)) == stored


# ----------------------------------------------------------------- invariants of a plan
def test_plan_grows_with_the_batch_and_shrinks_with_checkpointing_and_bits(tiny_root, tmp_path):
    config = tiny_config(tiny_root, tmp_path)
    estimator = MemoryEstimator(config, build_model(config, meta=True))
    peaks = [estimator.plan(estimator.settings(b, SEQ)).peak for b in (1, 2, 4, 8)]
    assert peaks == sorted(peaks) and len(set(peaks)) == 4
    longer = [estimator.plan(estimator.settings(2, s)).peak for s in (32, 64, 128)]
    assert longer == sorted(longer) and len(set(longer)) == 3
    plan = estimator.plan(estimator.settings(8, SEQ))
    checkpointed = estimator.plan(estimator.settings(8, SEQ, gradient_checkpointing=True))
    assert checkpointed.peak == plan.peak_with < plan.peak_without == plan.peak
    from cotune.config.model import QuantizationConfig

    quantization = QuantizationConfig()
    four_bit = replace(config, model=replace(config.model, llm=replace(config.model.llm, quantization=quantization)))
    weights = {t.name: t.bytes for t in estimator.plan(estimator.settings(8, SEQ), four_bit).static}
    # Only the frozen linear layers of the LLM's blocks are quantized; embeddings, norms, the LM head stay.
    linears = [m for m in estimator.model.llm.model.layers.modules() if type(m) is torch.nn.Linear and not m.weight.requires_grad]
    saved = sum(4 * m.weight.numel() - quantized_bytes(m.weight.numel(), m.out_features, quantization) for m in linears)
    assert weights["weights llm"] == {t.name: t.bytes for t in plan.static}["weights llm"] - saved
    assert estimator.plan(estimator.settings(8, SEQ), four_bit).peak < plan.peak


def test_device_memory_verdict_and_advice(tiny_root, tmp_path):
    config = tiny_config(tiny_root, tmp_path)
    model = build_model(config, meta=True)
    roomy = plan_memory(config, model, batch_size=8, seq_len=SEQ, device_memory=2**30)
    assert roomy.fits is True and roomy.advice == ()
    need = roomy.peak
    # A device whose usable part lies between the checkpointed peak and the plain one.
    tight = int((0.5 * (roomy.peak_with + need) + 0.5 * 2**30) / 0.92)
    plan = plan_memory(config, model, batch_size=8, seq_len=SEQ, device_memory=tight)
    assert plan.fits is False and plan.usable < plan.peak
    assert any(line.startswith("--set train.gradient_checkpointing=true") and "(fits)" in line for line in plan.advice)
    assert any("--set data.batch_size=" in line and "train.grad_accum=" in line for line in plan.advice)
    tiny_device = plan_memory(config, model, batch_size=8, seq_len=SEQ, device_memory=int(0.5 * 2**30 / 0.92) + 1)
    assert tiny_device.fits is False and "nothing above fits" in tiny_device.advice[-1]


def test_autocast_to_another_dtype_keeps_weight_copies_and_says_so(tiny_root, tmp_path):
    config = tiny_config(tiny_root, tmp_path, ["train.precision=bf16"])
    model = build_model(config, meta=True)
    plan = plan_memory(config, model, batch_size=BATCH, seq_len=SEQ, device_memory=2**30)
    copies = {t.name: t.bytes for t in plan.activations}["autocast weight copies"]
    in_layers = sum(m.weight.numel() for m in model.llm.model.layers.modules()
                    if type(m) is torch.nn.Linear and not m.weight.requires_grad)
    assert copies == 2 * 2 * in_layers  # bfloat16 copies, in the main and the routing pass
    assert any(line.startswith("model.llm.dtype float32 under train.precision bf16") for line in plan.advice)
    matched = plan_memory(load_config(data=corpus.run_config(tiny_root, tmp_path / "data"), overrides=[
        "train.precision=bf16", "model.llm.dtype=bfloat16"]), batch_size=BATCH, seq_len=SEQ)
    assert "autocast weight copies" not in {t.name for t in matched.activations} and matched.peak < plan.peak
