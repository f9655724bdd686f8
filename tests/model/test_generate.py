"""Generation: cached and uncached greedy decoding agree with a full recompute, batching with left
padding changes nothing, and routing is computed once per sample."""

import torch

from cotune.model.generate import generate, left_pad
from cotune.testing import tiny

IMAGE = {"kind": "clip", "layers": [1, 2, 3], "reduce": "cls", "trainable": "adapter",
         "adapter": {"type": "mm_adapter"}, "connector": {"type": "lavin-neck", "hidden": 16}}


def model_and_prompts(tiny_root):
    model = tiny.build(tiny_root, "llama", {"image": IMAGE}, trainable="adapter", adapter={"type": "mm_adapter"})
    tiny.randomise_trainables(model, seed=4, std=0.3)
    image = tiny.encode(model, "what colour is the circle", {"image": 3})[0].tolist()
    text = tiny.encode(model, "the answer is")[0].tolist()
    pixels = torch.randn(1, 3, 30, 30, generator=torch.Generator().manual_seed(2))
    return model, image, text, pixels


def greedy_by_recompute(model, ids, media, steps):
    """Reference: the full forward over prompt + generated tokens at every step."""
    ids = torch.tensor([ids])
    out = []
    with torch.no_grad():
        for _ in range(steps):
            nxt = int(model(ids, media=media).logits[0, -1].argmax())
            out.append(nxt)
            ids = torch.cat([ids, torch.tensor([[nxt]])], 1)
    return out


def test_cached_uncached_and_recomputed_greedy_agree(tiny_root):
    model, image, _text, pixels = model_and_prompts(tiny_root)
    ids = torch.tensor([image])
    media = {"image": pixels}
    cached = generate(model, ids, media=media, max_new_tokens=6, do_sample=False, eos_token_id=None)
    uncached = generate(model, ids, media=media, max_new_tokens=6, do_sample=False, use_cache=False, eos_token_id=None)
    assert cached.tolist() == uncached.tolist()
    assert cached[0].tolist() == greedy_by_recompute(model, image, media, 6)


def test_left_padded_batch_equals_single_prompts(tiny_root):
    model, image, text, pixels = model_and_prompts(tiny_root)
    pad = model.tokenizer.pad_token_id
    ids, mask = left_pad([image, text], pad)
    batched = generate(model, ids, mask, media={"image": pixels}, max_new_tokens=5, eos_token_id=None)
    alone_image = generate(model, torch.tensor([image]), media={"image": pixels}, max_new_tokens=5, eos_token_id=None)
    alone_text = generate(model, torch.tensor([text]), max_new_tokens=5, eos_token_id=None)
    assert batched[0].tolist() == alone_image[0].tolist()
    assert batched[1].tolist() == alone_text[0].tolist()


def count_routing(model) -> dict:
    """Counts the model's routing computations (``calls["rows"]``) from now on."""
    calls = {"rows": 0}
    original = model.compute_routing

    def counting(index):
        calls["rows"] += 1
        return original(index)

    model.compute_routing = counting
    return calls


def test_routing_is_computed_once_per_call(tiny_root):
    model, image, _text, pixels = model_and_prompts(tiny_root)
    calls = count_routing(model)
    beams = generate(model, torch.tensor([image]), media={"image": pixels}, max_new_tokens=4, num_beams=2, eos_token_id=None)
    assert calls["rows"] == 1 and beams.shape == (1, 4)


def test_given_routing_is_used_instead_of_computed(tiny_root):
    model, image, text, pixels = model_and_prompts(tiny_root)
    ids, mask = left_pad([image, text], model.tokenizer.pad_token_id)
    computed = generate(model, ids, mask, media={"image": pixels}, max_new_tokens=5, eos_token_id=None)
    with torch.no_grad():  # one modality row at a time, as a server caches them
        rows = [model.compute_routing(row[None]) for row in model.modality_index(ids)]
    calls = count_routing(model)
    given = generate(model, ids, mask, media={"image": pixels}, max_new_tokens=5, eos_token_id=None, routing=torch.cat(rows, 1))
    assert calls["rows"] == 0 and given.tolist() == computed.tolist()
    other = torch.rand(torch.cat(rows, 1).shape, generator=torch.Generator().manual_seed(0)) * 50
    changed = generate(model, ids, mask, media={"image": pixels}, max_new_tokens=5, eos_token_id=None, routing=other)
    assert changed.tolist() != computed.tolist()  # the given weights are the ones applied


def test_inline_routing_is_refused_by_every_generation_path_naming_the_key(tiny_root):
    """Inline routing's modality row sits in the sequence and cannot be cached: generate, the
    row-dropping greedy loop and evaluation all refuse it with the same ConfigError."""
    import pytest

    from cotune.config import ConfigError
    from cotune.model.greedy import greedy_generate

    model = tiny.build(tiny_root, "llama", {"image": IMAGE}, trainable="adapter", adapter={"type": "mm_adapter"},
                       overrides=["model.routing.mode=inline", "model.routing.rows=per_sample"])
    ids, mask = left_pad([tiny.encode(model, "the answer is")[0].tolist()], 0)
    for run in (generate, greedy_generate):
        with pytest.raises(ConfigError, match="model.routing.mode: 'inline' routing cannot generate"):
            run(model, ids, mask, max_new_tokens=2)
