"""Greedy decoding that drops finished rows: the tokens of transformers' greedy ``generate`` on
LLaMA-, GPT-2- (absolute positions) and Qwen2-like LLMs with left padding, media, MM-Adapter
routing or a media-gated LoRA, rows ending at different steps; ended rows really leave the batch;
and the settings that send a batch to ``generate`` instead."""

from __future__ import annotations

import pytest
import torch

from cotune.model.generate import generate, left_pad
from cotune.model.greedy import generate_rows, greedy_generate, plain_greedy
from cotune.testing import tiny

IMAGE = {"kind": "clip", "layers": [1, 2, 3], "reduce": "cls", "trainable": "adapter",
         "adapter": {"type": "mm_adapter"}, "connector": {"type": "lavin-neck", "hidden": 16}}
QUESTIONS = ["what colour is the circle", "the answer is", "is the sound loud and quiet", "red", "a blue square of the image"]
STEPS = 10


def batch(tiny_root, family, llm_adapter="mm_adapter"):
    """A tiny ``family`` LLM with CLIP, random MM-Adapters in CLIP and ``llm_adapter`` in the LLM
    (``mm_adapter``, or ``gated-lora``: LoRA on rows with media only), and five left-padded prompts
    of different lengths: rows 0, 2 and 4 with an image, 1 and 3 text-only."""
    if llm_adapter == "gated-lora":
        llm = {"trainable": "lora", "adapter": {"type": "lora", "lora_r": 4, "lora_dropout": 0.0, "gate": "media"}}
    else:
        llm = {"trainable": "adapter", "adapter": {"type": llm_adapter}}
    model = tiny.build(tiny_root, family, {"image": IMAGE}, **llm)
    tiny.randomise_trainables(model, seed=4, std=1.0)  # large enough that the tiny LLMs do not repeat one token
    rows = [tiny.encode(model, q, {"image": 3} if i % 2 == 0 else None)[0].tolist() for i, q in enumerate(QUESTIONS)]
    ids, mask = left_pad(rows, model.tokenizer.pad_token_id)
    assert len({int(m.sum()) for m in mask}) >= 3  # rows padded by different lengths
    pixels = torch.randn(3, 3, 30, 30, generator=torch.Generator().manual_seed(2))
    return model, ids, mask, {"image": pixels}


def ends(free: torch.Tensor, stops: list[int]) -> list[int]:
    """Tokens each row of the unstopped greedy ids ``free`` [B, N] makes with ``stops``: up to and
    including its first stop id, else N."""
    return [next((i + 1 for i, t in enumerate(row) if t in stops), len(row)) for row in free.tolist()]


def stops_ending_rows_apart(free: torch.Tensor) -> list[int]:
    """Up to three ids the rows of ``free`` [B, N] produce, chosen one at a time so that the rows end
    at as many different steps as possible."""
    stops: list[int] = []
    for _ in range(3):
        best = max(sorted(set(free.flatten().tolist()) - set(stops)), key=lambda t: len(set(ends(free, stops + [t]))))
        if len(set(ends(free, stops + [best]))) <= len(set(ends(free, stops))):
            break
        stops.append(best)
    return stops


@pytest.mark.parametrize("family,llm_adapter", [("llama", "mm_adapter"), ("gpt2", "mm_adapter"), ("qwen2", "mm_adapter"),
                                                ("llama", "gated-lora")])
def test_tokens_equal_greedy_generate_with_rows_ending_at_different_steps(tiny_root, family, llm_adapter):
    model, ids, mask, media = batch(tiny_root, family, llm_adapter)
    assert (model.routing_state is not None) == (llm_adapter == "mm_adapter") and (model.lora_gate is not None) == (llm_adapter != "mm_adapter")
    free = generate(model, ids, mask, media=media, max_new_tokens=STEPS, do_sample=False, eos_token_id=None)
    assert free.shape == (5, STEPS)
    assert torch.equal(greedy_generate(model, ids, mask, media=media, max_new_tokens=STEPS, eos_token_id=[]), free)
    stops = stops_ending_rows_apart(free)
    lengths = ends(free, stops)
    assert len(set(lengths)) >= 3, (free.tolist(), stops)  # two rows end early, at different steps
    expected = generate(model, ids, mask, media=media, max_new_tokens=STEPS, do_sample=False, eos_token_id=stops)
    dropped = greedy_generate(model, ids, mask, media=media, max_new_tokens=STEPS, eos_token_id=stops)
    assert dropped.tolist() == expected.tolist()
    pad = model.tokenizer.pad_token_id
    for row, greedy, length in zip(dropped.tolist(), free.tolist(), lengths):  # its greedy tokens to its stop, then pad
        assert row[:length] == greedy[:length] and row[length:] == [pad] * (len(row) - length)
    assert dropped.shape[1] == max(lengths)


def llm_batch_sizes(model, run) -> list[int]:
    """Rows of every cached LLM call (prefill and decoding steps) while ``run()`` runs, counted by a
    forward hook on the LLM (routing's own LLM pass runs without a cache and is not counted)."""
    sizes: list[int] = []

    def hook(_module, _args, kwargs, output):
        if kwargs.get("use_cache"):
            sizes.append(output.logits.shape[0])

    handle = model.llm.register_forward_hook(hook, with_kwargs=True)
    try:
        run()
    finally:
        handle.remove()
    return sizes


def test_finished_rows_leave_the_batch(tiny_root):
    model, ids, mask, media = batch(tiny_root, "llama")
    free = greedy_generate(model, ids, mask, media=media, max_new_tokens=STEPS, eos_token_id=[])
    stops = stops_ending_rows_apart(free)
    lengths = ends(free, stops)
    width = max(lengths)
    # Call k (k >= 1) makes token k of the rows that have not ended by then.
    expected = [5] + [sum(length > k for length in lengths) for k in range(1, width)]
    assert expected[-1] < 5  # some row ended before the last step
    sizes = llm_batch_sizes(model, lambda: greedy_generate(model, ids, mask, media=media, max_new_tokens=STEPS, eos_token_id=stops))
    assert sizes == expected
    # transformers' generate decodes every row to the end (what this loop saves).
    waiting = llm_batch_sizes(model, lambda: generate(model, ids, mask, media=media, max_new_tokens=STEPS, do_sample=False, eos_token_id=stops))
    assert set(waiting) == {5} and len(waiting) >= width


def test_no_padding_single_row_and_every_row_ending_at_once(tiny_root):
    model, ids, mask, media = batch(tiny_root, "llama")
    one, image = ids[:1, -int(mask[0].sum()):], {"image": media["image"][:1]}  # row 0 alone, unpadded
    third = int(generate(model, one, media=image, max_new_tokens=3, eos_token_id=None)[0, 2])
    for stops in ([], [third]):
        expected = generate(model, one, media=image, max_new_tokens=STEPS, do_sample=False, eos_token_id=stops)
        assert torch.equal(greedy_generate(model, one, media=image, max_new_tokens=STEPS, eos_token_id=stops), expected)
    first = generate(model, ids, mask, media=media, max_new_tokens=1, eos_token_id=None)[:, 0].tolist()
    done = greedy_generate(model, ids, mask, media=media, max_new_tokens=STEPS, eos_token_id=first)  # every row ends at once
    assert done.tolist() == [[t] for t in first]


def test_given_routing_is_sliced_with_the_rows(tiny_root):
    model, ids, mask, media = batch(tiny_root, "llama")
    with torch.no_grad():
        routing = model.compute_routing(model.modality_index(ids))  # [L, B, E]
    free = greedy_generate(model, ids, mask, media=media, max_new_tokens=STEPS, eos_token_id=[])
    stops = stops_ending_rows_apart(free)
    expected = generate(model, ids, mask, media=media, max_new_tokens=STEPS, eos_token_id=stops, routing=routing)
    assert torch.equal(greedy_generate(model, ids, mask, media=media, max_new_tokens=STEPS, eos_token_id=stops, routing=routing), expected)
    swapped = routing.roll(1, dims=1)  # each row gets its neighbour's weights (image <-> text): other tokens
    assert not torch.equal(greedy_generate(model, ids, mask, media=media, max_new_tokens=STEPS, eos_token_id=stops, routing=swapped), expected)


def test_plain_greedy_decides_which_loop_runs(tiny_root):
    model, ids, mask, media = batch(tiny_root, "llama")
    llm = model.llm
    assert plain_greedy(llm, {"do_sample": False, "max_new_tokens": 4, "eos_token_id": [3, 5], "pad_token_id": 0})
    assert plain_greedy(llm, {})
    assert plain_greedy(llm, {"do_sample": False, "num_beams": 1, "top_p": 0.9})  # lmms-eval's greedy settings
    for kwargs in ({"do_sample": True}, {"num_beams": 2}, {"stop_strings": ["x"]}, {"streamer": object()},
                   {"use_cache": False}, {"repetition_penalty": 1.2}, {"temperature": 0.5, "do_sample": True}):
        assert not plain_greedy(llm, kwargs), kwargs
    with pytest.raises(ValueError, match="generate_rows"):
        greedy_generate(model, ids, mask, media=media, num_beams=2)
    saved = llm.generation_config
    try:
        llm.generation_config = saved.__class__(**{**saved.to_dict(), "repetition_penalty": 1.1})
        assert not plain_greedy(llm, {"do_sample": False})  # an LLM's own setting that changes greedy tokens
        llm.generation_config = saved.__class__(**{**saved.to_dict(), "do_sample": True, "top_p": 0.9})
        assert not plain_greedy(llm, {}) and plain_greedy(llm, {"do_sample": False})  # an instruct LLM's sampling default
    finally:
        llm.generation_config = saved
    # generate_rows: rows leave the batch on the plain path, not with beams.
    stops = [int(generate(model, ids, mask, media=media, max_new_tokens=1, eos_token_id=None)[0, 0])]
    plain = llm_batch_sizes(model, lambda: generate_rows(model, ids, mask, media=media, max_new_tokens=4, do_sample=False, eos_token_id=stops))
    beams = llm_batch_sizes(model, lambda: generate_rows(model, ids, mask, media=media, max_new_tokens=4, num_beams=2, eos_token_id=stops))
    assert plain[0] == 5 and plain[1] < 5
    assert set(beams) == {10}
