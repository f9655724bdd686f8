"""LoRA gated by media: rows with media get the LoRA update, text-only rows run the untuned LLM
exactly, in one mixed batch, in training (gradients, activation checkpointing) and in generation.
The LoRA weights are randomised first (zero-initialised LoRA B would make every check trivial)."""

import pytest
import torch

from cotune.adapters import GateError
from cotune.config import ConfigError, load_config
from cotune.merge.model import MergeError, merge_model
from cotune.model import generate, left_pad
from cotune.testing import tiny

IMAGE = {"image": {"kind": "clip", "layers": [-2], "connector": {"type": "mlp2x-gelu"}}}
LORA = {"type": "lora", "lora_r": 4, "lora_dropout": 0.0}


def gated_and_ungated(tiny_root):
    """Two models with identical weights: LoRA gated by media, and the same LoRA on every row."""
    models = []
    for gate in ("media", "none"):
        model = tiny.build(tiny_root, encoders=IMAGE, trainable="lora", adapter={**LORA, "gate": gate})
        tiny.randomise_trainables(model, seed=3)
        models.append(model.eval())
    return models


def mixed_batch(model):
    """Right-padded rows: text-only, image, text-only (longer); and one image input."""
    rows = [tiny.encode(model, "what is two and two"), tiny.encode(model, "what colour is it", {"image": model.num_media_tokens("image")}),
            tiny.encode(model, "name a fruit that is red and round")]
    ids, mask = tiny.pad_batch(rows)
    return ids, mask, {"image": tiny.media_input("clip", 1, torch.Generator().manual_seed(0))}


def test_text_rows_run_the_untuned_llm_and_media_rows_the_tuned_one(tiny_root):
    gated, ungated = gated_and_ungated(tiny_root)
    ids, mask, media = mixed_batch(gated)
    with torch.no_grad():
        ours = gated(ids, mask, media=media).logits
        everywhere = ungated(ids, mask, media=media).logits
        with gated.lora_gate.applying(torch.zeros(len(ids))):  # the LoRA switched off on every row
            embeds = gated.embed(ids, media)
            untuned = gated.llm(inputs_embeds=embeds, attention_mask=mask).logits
    valid = mask.bool()
    for row in (0, 2):  # text-only
        assert torch.equal(ours[row][valid[row]], untuned[row][valid[row]])
        assert (everywhere[row][valid[row]] - untuned[row][valid[row]]).abs().max() > 1e-2
    assert torch.allclose(ours[1][valid[1]], everywhere[1][valid[1]], atol=1e-5)
    assert (ours[1][valid[1]] - untuned[1][valid[1]]).abs().max() > 1e-2


def test_only_rows_with_media_train_the_lora(tiny_root):
    gated, _ = gated_and_ungated(tiny_root)
    gated.train()
    ids, mask, media = mixed_batch(gated)
    lora = [p for name, p in gated.named_parameters() if p.requires_grad and "lora_" in name]
    text = ids[[0]], mask[[0]]
    gated(*text, labels=text[0]).loss.backward()  # a text-only batch backpropagates, to zero
    assert all(p.grad is None or not p.grad.any() for p in lora)
    gated.zero_grad()
    image = ids[[1]], mask[[1]]
    gated(*image, labels=image[0], media=media).loss.backward()
    assert sum(float(p.grad.abs().sum()) for p in lora if p.grad is not None) > 0


def test_activation_checkpointing_recomputes_with_the_gate_the_forward_saw(tiny_root):
    grads = []
    for checkpointing in (False, True):
        model = tiny.build(tiny_root, encoders=IMAGE, trainable="lora", adapter={**LORA, "gate": "media"})
        tiny.randomise_trainables(model, seed=3)
        if checkpointing:
            model.enable_gradient_checkpointing()
        model.train()
        ids, mask, media = mixed_batch(model)
        model(ids, mask, labels=ids.masked_fill(~mask.bool(), -100), media=media).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-6), name


def test_generation_gates_every_row_and_every_beam(tiny_root):
    gated, ungated = gated_and_ungated(tiny_root)
    rows = [tiny.encode(gated, "name a fruit")[0].tolist(), tiny.encode(gated, "what is it", {"image": gated.num_media_tokens("image")})[0].tolist()]
    ids, mask = left_pad(rows, 0)
    media = {"image": tiny.media_input("clip", 1, torch.Generator().manual_seed(0))}
    for kwargs in ({}, {"num_beams": 2}):
        ours = generate(gated, ids, mask, media=media, max_new_tokens=6, eos_token_id=None, **kwargs)
        everywhere = generate(ungated, ids, mask, media=media, max_new_tokens=6, eos_token_id=None, **kwargs)
        text_alone = generate(gated, ids[[0]], mask[[0]], max_new_tokens=6, eos_token_id=None, **kwargs)
        with gated.lora_gate.applying(torch.zeros(1 if not kwargs else 2)):
            untuned = gated.llm.generate(inputs_embeds=gated.embed(ids[[0]]), attention_mask=mask[[0]], max_new_tokens=6,
                                         eos_token_id=None, pad_token_id=0, **kwargs)
        assert torch.equal(ours[0], untuned[0]) and torch.equal(text_alone[0], untuned[0])
        assert torch.equal(ours[1], everywhere[1])


def test_the_llm_called_without_its_gate_is_an_error(tiny_root):
    gated, _ = gated_and_ungated(tiny_root)
    with pytest.raises(GateError, match="outside the model's forward"):
        gated.llm(input_ids=tiny.encode(gated, "hello"))


def test_a_gated_lora_is_not_merged_into_weights_text_prompts_share(tiny_root):
    gated, _ = gated_and_ungated(tiny_root)
    with pytest.raises(MergeError, match="gate is 'media'"):
        merge_model(gated)


@pytest.mark.parametrize("llm, encoders, fragment", [
    ({"trainable": "adapter", "adapter": {"type": "mm_adapter", "gate": "media"}}, IMAGE, "already route by modality"),
    ({"trainable": "lora", "adapter": {"gate": "media"}}, {}, "needs at least one encoder"),
    ({"trainable": "lora", "adapter": {"gate": "text"}}, IMAGE, "'text' is not one of"),
    ({"trainable": "lora"}, {"image": {**IMAGE["image"], "trainable": "lora", "adapter": {"gate": "media"}}}, "an encoder only ever sees media"),
])
def test_the_gate_is_refused_where_it_means_nothing(tiny_root, llm, encoders, fragment):
    raw = tiny.model_config(tiny.save_llm(tiny_root), {n: {**{k: v for k, v in e.items() if k != "kind"}, "type": e["kind"],
                                                             "name_or_path": "unused"} for n, e in encoders.items()}, **llm)
    with pytest.raises(ConfigError, match=fragment):
        load_config(data=raw)

