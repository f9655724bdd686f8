"""The assembled model's invariants on tiny random backbones (CPU, no downloads)."""

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from cotune.model import SpliceError
from cotune.testing import tiny

LAVIN_IMAGE = {
    "kind": "clip", "layers": [1, 2, 3], "reduce": "cls", "trainable": "adapter",
    "adapter": {"type": "mm_adapter"}, "connector": {"type": "lavin-neck", "hidden": 16},
}
MMA_LLM = {"trainable": "adapter", "adapter": {"type": "mm_adapter"}}


def lavin(root, llm="llama", **extra):
    return tiny.build(root, llm, {"image": LAVIN_IMAGE}, **{**MMA_LLM, **extra})


def mixed_batch(model, n_image=3):
    """Two samples: one with an image, one text-only (right padded)."""
    image = tiny.encode(model, "what colour is the circle", {"image": n_image})
    text = tiny.encode(model, "what is the answer yes no red")
    ids, mask = tiny.pad_batch([image, text])
    media = {"image": tiny.media_input("clip", 1, torch.Generator().manual_seed(1))}
    return ids, mask, media


@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt2", "mistral", "phi", "gemma"])
def test_zero_initialised_adapters_leave_base_logits_unchanged(tiny_root, family):
    model = lavin(tiny_root, family)
    plain = tiny.build(tiny_root, family, {"image": {**LAVIN_IMAGE, "trainable": "frozen", "adapter": {"type": "none"}}})
    plain.connectors.load_state_dict(model.connectors.state_dict())
    ids, mask, media = mixed_batch(model)
    with torch.no_grad():
        text_only = tiny.encode(model, "what is the answer")
        bare = transformers.AutoModelForCausalLM.from_pretrained(tiny.save_llm(tiny_root, family))
        torch.testing.assert_close(model(text_only).logits, bare(text_only).logits, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model(ids, mask, media=media).logits, plain(ids, mask, media=media).logits, atol=1e-5, rtol=1e-5)
        # Once the up-projections are non-zero, the adapters must change the output.
        tiny.randomise_trainables(model)
        assert not torch.allclose(model(ids, mask, media=media).logits, plain(ids, mask, media=media).logits, atol=1e-3)


def test_text_and_image_samples_route_differently_and_alone_equals_batched(tiny_root):
    model = lavin(tiny_root)
    tiny.randomise_trainables(model)
    ids, mask, media = mixed_batch(model)
    with torch.no_grad():
        out = model(ids, mask, media=media)
        assert out.routing_weights.shape == (2, 2, 2)  # [B, L, E]
        assert out.modality_index.tolist() == [1, 0]
        assert not torch.allclose(out.routing_weights[0], out.routing_weights[1], atol=1e-4)
        torch.testing.assert_close(out.routing_weights.sum(-1), torch.ones(2, 2))
        for row, sample_media in ((0, media), (1, None)):
            length = int(mask[row].sum())
            alone = model(ids[row : row + 1, :length], media=sample_media)
            torch.testing.assert_close(alone.logits[0], out.logits[row, :length], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(alone.routing_weights[0], out.routing_weights[row])
        # Another image in the same batch changes neither the first sample's output nor its routing.
        two = torch.cat([ids[:1], ids[:1]])
        other_media = {"image": torch.cat([media["image"], torch.randn(1, 3, 30, 30)])}
        paired = model(two, media=other_media)
        torch.testing.assert_close(paired.logits[0], out.logits[0, : two.shape[1]], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_inline_routing_reproduces_separate_routing(tiny_root, family):
    """LaVIN's inline modality row (masked from text) equals the cheaper separate pass in eval mode
    (rotary models exactly; absolute-position models get the same routing weights)."""
    separate = lavin(tiny_root, family)
    inline = lavin(tiny_root, family, overrides=["model.routing.mode=inline", "model.routing.rows=per_sample"])
    tiny.randomise_trainables(separate)
    inline.load_trainable_state_dict(separate.trainable_state_dict())
    ids, mask, media = mixed_batch(separate)
    with torch.no_grad():
        a = separate(ids, mask, media=media)
        b = inline(ids, mask, media=media)
    torch.testing.assert_close(a.routing_weights, b.routing_weights, atol=1e-5, rtol=1e-5)
    if family == "llama":
        valid = mask.bool()
        torch.testing.assert_close(a.logits[valid], b.logits[valid], atol=1e-4, rtol=1e-4)


def test_training_step_moves_only_trainable_weights(tiny_root):
    model = lavin(tiny_root)
    model.train()
    ids, mask, media = mixed_batch(model)
    labels = ids.masked_fill(mask == 0, -100)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
    start = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0)

    out = model(ids, mask, labels=labels, media=media)
    out.loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    # LaVIN's property: with zero up-projections, the down-projections, routers and modality
    # embedding receive exactly zero gradient on the first step.
    for name, grad in grads.items():
        if ".down." in name or ".router." in name or name.startswith("modality_embedding"):
            assert grad is None or torch.count_nonzero(grad) == 0, name
        if ".up." in name:
            assert torch.count_nonzero(grad) > 0, name
    optimizer.step()
    optimizer.zero_grad()
    model(ids, mask, labels=labels, media=media).loss.backward()
    optimizer.step()

    for name, p in model.named_parameters():
        if name in frozen:
            assert torch.equal(p, frozen[name]), f"frozen {name} changed"
        else:
            assert not torch.equal(p, start[name]), f"trainable {name} did not change"
    for name, b in model.named_buffers():
        assert torch.equal(b, buffers[name]), f"buffer {name} changed"


def test_one_step_from_random_adapters_moves_every_trainable_tensor(tiny_root):
    model = lavin(tiny_root)
    tiny.randomise_trainables(model, seed=5, std=0.05)
    model.train()
    ids, mask, media = mixed_batch(model)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    start = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.0)
    model(ids, mask, labels=ids.masked_fill(mask == 0, -100), media=media).loss.backward()
    optimizer.step()
    for name, p in model.named_parameters():
        if name in frozen:
            assert torch.equal(p, frozen[name]), name
        else:
            assert not torch.equal(p, start[name]), name


def test_frozen_adapters_stay_in_eval_mode(tiny_root):
    model = tiny.build(tiny_root, "llama", {"image": {**LAVIN_IMAGE, "trainable": "frozen"}}, **MMA_LLM)
    model.train()
    assert all(a.training for a in model.adapter_modules["llm"])
    assert not any(a.training for a in model.adapter_modules["encoder.image"])
    assert not model.llm.training and not model.encoders["image"].backbone.training
    assert model.connectors["image"].training


def test_trainable_state_round_trip_is_bit_exact(tiny_root, tmp_path):
    model = lavin(tiny_root)
    tiny.randomise_trainables(model, seed=3)
    state = model.trainable_state_dict()
    assert set(state) == {n for n, p in model.named_parameters() if p.requires_grad}
    assert sum(v.numel() for v in state.values()) == sum(c["trainable"] for c in model.parameter_counts().values())
    assert all(v.dtype == torch.float32 for v in state.values())
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "trainable.safetensors")

    fresh = lavin(tiny_root)
    ids, mask, media = mixed_batch(model)
    with torch.no_grad():
        assert not torch.equal(fresh(ids, mask, media=media).logits, model(ids, mask, media=media).logits)
        fresh.load_trainable_state_dict(load_file(tmp_path / "trainable.safetensors"))
        assert torch.equal(fresh(ids, mask, media=media).logits, model(ids, mask, media=media).logits)

    with pytest.raises(KeyError, match="1 missing"):
        fresh.load_trainable_state_dict({k: v for k, v in list(state.items())[1:]})
    with pytest.raises(KeyError, match="1 unexpected"):
        fresh.load_trainable_state_dict({**state, "llm.lm_head.weight": torch.zeros(1)})


def test_trainability_per_component(tiny_root):
    model = lavin(tiny_root)
    counts = model.parameter_counts()
    d_llm, d_enc, layers, blocks = 32, 24, 2, 3
    assert counts["llm"]["trainable"] == layers * (20 * d_llm + 10)
    assert counts["encoder.image"]["trainable"] == blocks * (20 * d_enc + 10)
    assert counts["connector.image"]["trainable"] == (d_enc * 16 + 16) + (16 * d_llm + d_llm)
    assert counts["modality_embedding"]["trainable"] == 2 * d_llm

    frozen_llm = tiny.build(tiny_root, "llama", {"image": {**LAVIN_IMAGE, "connector": {"type": "lavin-neck", "trainable": "frozen"}}},
                            trainable="frozen", adapter={"type": "mm_adapter"})
    counts = frozen_llm.parameter_counts()
    assert counts["llm"]["trainable"] == 0 and counts["modality_embedding"]["trainable"] == 0
    assert counts["connector.image"]["trainable"] == 0 and counts["encoder.image"]["trainable"] > 0

    full = tiny.build(tiny_root, "llama", trainable="full")
    assert full.parameter_counts()["llm"]["trainable"] == full.parameter_counts()["llm"]["total"]


def test_lora_on_llm_and_encoder(tiny_root):
    model = tiny.build(
        tiny_root, "llama",
        {"image": {"kind": "clip", "layers": [-2], "trainable": "lora", "adapter": {"lora_r": 2, "target_modules": ["q_proj", "v_proj"]}}},
        trainable="lora", adapter={"lora_r": 4, "target_modules": ["q_proj", "v_proj"]},
    )
    counts = model.parameter_counts()
    # llama q: 32->32, v: 32->16; r*(in+out) per module, 2 layers
    assert counts["llm"]["trainable"] == 2 * 4 * ((32 + 32) + (32 + 16))
    # layers [-2] of 3 blocks: the last block feeds no feature and gets no LoRA
    assert counts["encoder.image"]["trainable"] == 2 * 2 * ((24 + 24) * 2)
    assert all("lora_" in k or k.startswith("connectors.") for k in model.trainable_state_dict())
    ids, mask, media = mixed_batch(model, n_image=25)
    model.train()
    model(ids, mask, labels=ids, media=media).loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_half_precision_backbones_keep_float32_trainables(tiny_root):
    model = lavin(tiny_root, dtype="bfloat16", overrides=["model.encoders.image.dtype=bfloat16"])
    for name, p in model.named_parameters():
        assert p.dtype == (torch.float32 if p.requires_grad else torch.bfloat16), name
    ids, mask, media = mixed_batch(model)
    out = model(ids, mask, labels=ids, media=media)
    assert out.logits.dtype == torch.bfloat16 and torch.isfinite(out.loss)
    out.loss.backward()


def test_placeholder_count_mismatch_names_the_sample(tiny_root):
    model = lavin(tiny_root)
    ids, mask, media = mixed_batch(model, n_image=2)
    with pytest.raises(SpliceError, match="sample 'q-17'"):
        model(ids, mask, media=media, sample_ids=["q-17", "q-18"])
    ids, mask, media = mixed_batch(model)
    with pytest.raises(SpliceError, match="no image inputs"):
        model(ids, mask)
    with pytest.raises(KeyError, match="unknown encoder 'audio'"):
        model(ids, mask, media={**media, "audio": torch.zeros(1)})


@pytest.mark.parametrize("routing", ["separate", "inline"])
def test_gradient_checkpointing_gives_the_same_gradients(tiny_root, routing):
    """Recomputation runs in backward, after the routing context closed; it must see the same weights."""
    model = lavin(tiny_root, overrides=[f"model.routing.mode={routing}", "model.routing.rows=per_sample"])
    tiny.randomise_trainables(model)
    ids, mask, media = mixed_batch(model)
    model.train()
    torch.manual_seed(0)
    model(ids, mask, labels=ids, media=media).loss.backward()
    plain = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    model.enable_gradient_checkpointing()
    assert all(layer.training for layer in model.llm.model.layers)
    assert not model.llm.model.layers[0].self_attn.module.training  # dropouts and attention stay eval
    torch.manual_seed(0)
    model(ids, mask, labels=ids, media=media).loss.backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p.grad, plain[name], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("family,routing", [("llama", "separate"), ("llama", "inline"), ("gpt2", "separate")])
def test_supervised_logits_give_the_full_loss_and_gradients(tiny_root, family, routing):
    """The LM head at supervised positions only: same loss, same gradients, and the logits are the
    full forward's at those positions (answers of different rows end at different positions)."""
    overrides = [f"model.routing.mode={routing}"] + (["model.routing.rows=per_sample"] if routing == "inline" else [])
    model = lavin(tiny_root, family, overrides=overrides)
    tiny.randomise_trainables(model)
    model.eval()  # dropout off: the two forwards must see the same function
    ids, mask, media = mixed_batch(model)
    labels = torch.full_like(ids, -100)
    labels[0, -4:-1] = ids[0, -4:-1]  # the image row (longer) supervises its last real tokens
    labels[1, 2:4] = ids[1, 2:4]  # the text row (right padded) supervises tokens in the middle
    full = model(ids, mask, labels=labels, media=media)
    full.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    kept = model(ids, mask, labels=labels, media=media, supervised_logits=True)
    kept.loss.backward()
    positions = kept.logit_positions
    assert positions is not None and 0 < len(positions) < ids.shape[1] - 1
    targets = torch.nn.functional.pad(labels[:, 1:], (0, 1), value=-100)
    assert torch.equal(positions, (targets != -100).any(0).nonzero().squeeze(1))
    assert kept.logits.shape == (2, len(positions), full.logits.shape[-1])
    torch.testing.assert_close(kept.logits, full.logits[:, positions], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(kept.loss, full.loss, atol=1e-6, rtol=1e-6)
    assert int(kept.num_tokens) == int(full.num_tokens) == 5
    for name, p in model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p.grad, grads[name], atol=1e-6, rtol=1e-5)
