"""Generation for the assembled model through transformers' ``generate`` on input embeddings.

Encoder tokens are computed once and spliced into the prompt's embeddings; the LLM's
mixture-of-modality routing weights are computed once per sample (from its modality row) and held
in the routing state for the prefill and every decoding step, so neither is recomputed per token.
Prompts in a batch are left-padded. Greedy, sampling (temperature, top-p), beam search, EOS and
stop strings, and the KV cache all come from transformers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id lists -> (input_ids [B, T], attention_mask [B, T]) padded on the left."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            ids[i, width - len(row):] = torch.tensor(list(row))
            mask[i, width - len(row):] = 1
    return ids, mask


@torch.no_grad()
def generate(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    media: Mapping[str, torch.Tensor] | None = None,
    features: Mapping[str, torch.Tensor] | None = None,
    max_new_tokens: int = 64,
    routing: torch.Tensor | None = None,
    **generate_kwargs,
) -> torch.Tensor:
    """New token ids [B, <= max_new_tokens] for left-padded prompts ``input_ids`` [B, T].

    ``generate_kwargs`` go to transformers' ``generate`` (``do_sample``, ``temperature``, ``top_p``,
    ``num_beams``, ``stop_strings`` with ``tokenizer``, ``use_cache``, ...). EOS defaults to the
    tokenizer's; rows that finish early are padded with the pad id. ``routing``: the rows' routing
    weights [L, B, E] when the caller already has them (in eval mode they depend only on each row's
    modality row, so a server computes them once per modality); computed from the prompts if None.
    """
    model.check_generation()
    device = model.llm.get_input_embeddings().weight.device
    input_ids = input_ids.to(device)
    attention_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(device)
    was_training = model.training
    if was_training:  # model.eval() walks every module (~40 ms with LoRA injected): only when needed
        model.eval()
    try:
        embeds = model.embed(input_ids, media, features=features)
        # generate repeats every row per beam / returned sequence
        beams = int(generate_kwargs.get("num_beams", 1)) * int(generate_kwargs.get("num_return_sequences", 1))
        context = model.gated(input_ids, beams)
        if model.routing_state is not None:
            if routing is None:
                routing = model.compute_routing(model.modality_index(input_ids))  # [L, B, E]
            if beams > 1:
                routing = routing.repeat_interleave(beams, dim=1)
            context = model.routing_state.applying(routing)
        tokenizer = model.tokenizer
        defaults = {}
        if tokenizer is not None:
            defaults = {"eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id}
            if "stop_strings" in generate_kwargs:
                defaults["tokenizer"] = tokenizer
        with context:
            return model.llm.generate(
                inputs_embeds=embeds, attention_mask=attention_mask, max_new_tokens=max_new_tokens, **{**defaults, **generate_kwargs}
            )
    finally:
        if was_training:
            model.train(True)
