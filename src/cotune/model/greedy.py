"""Greedy decoding that drops finished rows from the batch.

transformers' ``generate`` keeps decoding a row that has produced its stop token (it appends the pad
id) until the batch's longest row ends. Here a row leaves the batch at its stop token: its KV cache,
attention mask, position and per-row state (the MM-Adapters' routing weights) are dropped, and
later steps run the LLM on the rows still going. The tokens are those of greedy ``generate``
(:func:`cotune.model.generate.generate`): the same left-padded prefill of the prompt embeddings
[B, T, D_llm], positions counted from the attention mask as ``generate`` counts them, and the LM
head on the last position only.

:func:`plain_greedy` decides, from the generation settings alone, whether this loop gives what
``generate`` would; :func:`generate_rows` is the one entry point that asks it and takes whichever
applies. Nothing here has trainable parameters.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
from collections.abc import Callable, Iterator, Mapping, Sequence

import torch

from cotune.model.generate import generate

#: Settings this loop takes (the sampling ones only where they leave decoding greedy: ``do_sample``
#: false, one beam); any other keyword (stop strings, streamers, logits processors, stopping
#: criteria, returned sequences, ...) goes to transformers' ``generate``.
PLAIN_KEYS = frozenset({"do_sample", "max_new_tokens", "eos_token_id", "pad_token_id", "use_cache", "num_beams",
                        "temperature", "top_p", "top_k"})
#: Fields of the LLM's generation config that change greedy tokens or how they end when set away
#: from transformers' defaults (logits processors, stopping criteria, caches); then ``generate`` runs.
GENERATE_ONLY_FIELDS = (
    "repetition_penalty", "encoder_repetition_penalty", "no_repeat_ngram_size", "encoder_no_repeat_ngram_size",
    "bad_words_ids", "min_length", "min_new_tokens", "forced_bos_token_id", "forced_eos_token_id", "sequence_bias",
    "exponential_decay_length_penalty", "suppress_tokens", "begin_suppress_tokens", "guidance_scale",
    "watermarking_config", "max_time", "stop_strings", "cache_implementation", "prefill_chunk_size",
)


def plain_greedy(llm, generate_kwargs: Mapping[str, object]) -> bool:
    """Whether ``generate_kwargs`` with ``llm``'s generation config ask for plain greedy decoding
    with a KV cache: only :data:`PLAIN_KEYS`, greedy search once merged with the LLM's config (no
    sampling, one beam; an instruction-tuned LLM's ``do_sample: true`` needs ``do_sample=False``),
    and none of :data:`GENERATE_ONLY_FIELDS` changed."""
    if set(generate_kwargs) - PLAIN_KEYS:
        return False
    from transformers import GenerationConfig
    from transformers.generation.configuration_utils import GenerationMode

    merged = copy.deepcopy(llm.generation_config)
    merged.update(**{k: v for k, v in generate_kwargs.items() if k != "max_new_tokens"})
    if merged.use_cache is False or merged.get_generation_mode() != GenerationMode.GREEDY_SEARCH:
        return False
    default = GenerationConfig()
    return all(getattr(merged, name, None) == getattr(default, name, None) for name in GENERATE_ONLY_FIELDS)


def generate_rows(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                  media: Mapping[str, torch.Tensor] | None = None, **generate_kwargs) -> torch.Tensor:
    """New ids [B, <= max_new_tokens] for left-padded prompts [B, T]: :func:`greedy_generate` when
    :func:`plain_greedy` says it applies, else :func:`~cotune.model.generate.generate`."""
    if plain_greedy(model.llm, generate_kwargs):
        return greedy_generate(model, input_ids, attention_mask, media=media, **generate_kwargs)
    return generate(model, input_ids, attention_mask, media=media, **generate_kwargs)


class RowState:
    """Per-row tensors applied around every LLM call of one decoding call, sliced together when rows
    leave the batch. Each entry: a tensor, its batch dimension and the model's context manager that
    applies it (``routing_state.applying`` for routing weights [L, B, E], ``lora_gate.applying`` for
    the LoRA's media gate [B])."""

    def __init__(self) -> None:
        self.entries: list[tuple[torch.Tensor, int, Callable]] = []

    def add(self, tensor: torch.Tensor, batch_dim: int, applying: Callable) -> None:
        self.entries.append((tensor, batch_dim, applying))

    def keep(self, index: torch.Tensor) -> None:
        """Keeps rows ``index`` [R] (positions in the current batch) of every tensor."""
        self.entries = [(t.index_select(dim, index.to(t.device)), dim, applying) for t, dim, applying in self.entries]

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        with contextlib.ExitStack() as stack:
            for tensor, _dim, applying in self.entries:
                stack.enter_context(applying(tensor))
            yield


def row_state(model, input_ids: torch.Tensor, routing: torch.Tensor | None = None) -> RowState:
    """The per-row state of ``model`` for prompts ``input_ids`` [B, T]: the LLM's MM-Adapter routing
    weights [L, B, E] (``routing``, or computed from each row's modality as ``generate`` does) and
    the media gate of its LoRA [B] (1.0 on rows with media; :meth:`CotuneModel.gated`'s)."""
    state = RowState()
    if model.routing_state is not None:
        if routing is None:
            routing = model.compute_routing(model.modality_index(input_ids))
        state.add(routing, 1, model.routing_state.applying)
    if model.lora_gate is not None:
        state.add(model.media_gate(input_ids), 0, model.lora_gate.applying)
    return state


class _Batch:
    """The rows still decoding: their original row numbers [R], KV cache, attention mask [R, T']
    (None when no prompt was padded, as ``generate`` drops an all-ones mask), next position [R]
    and per-row state. :meth:`keep` is the one place rows leave."""

    def __init__(self, rows, cache, mask, position, state: RowState) -> None:
        self.rows, self.cache, self.mask, self.position, self.state = rows, cache, mask, position, state

    def keep(self, index: torch.Tensor) -> None:
        self.rows, self.position = self.rows[index], self.position[index]
        self.mask = None if self.mask is None else self.mask[index]
        self.cache.batch_select_indices(index)
        self.state.keep(index)


@torch.no_grad()
def greedy_generate(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    media: Mapping[str, torch.Tensor] | None = None,
    features: Mapping[str, torch.Tensor] | None = None,
    max_new_tokens: int = 64,
    routing: torch.Tensor | None = None,
    eos_token_id: int | Sequence[int] | None = None,
    pad_token_id: int | None = None,
    **settings,
) -> torch.Tensor:
    """Greedy new ids [B, <= max_new_tokens] for left-padded prompts ``input_ids`` [B, T] (media,
    features and ``routing`` [L, B, E] as for :func:`~cotune.model.generate.generate`), each row
    ending at its first id in ``eos_token_id`` (default: the tokenizer's EOS, else the LLM's) and
    padded with ``pad_token_id`` after it, rows in input order; as wide as the longest row.
    ``settings``: what :func:`plain_greedy` accepts (``do_sample=False``, ``num_beams=1``, ...);
    others raise (use :func:`~cotune.model.generate.generate` or :func:`generate_rows`)."""
    if not plain_greedy(model.llm, settings):
        raise ValueError(f"greedy_generate decodes greedily with a cache; {settings} (or the LLM's generation config) "
                         "ask for more: use generate() or generate_rows()")
    model.check_generation()
    stops, pad = _stops_and_pad(model, eos_token_id, pad_token_id)
    llm = model.llm
    device = llm.get_input_embeddings().weight.device
    input_ids = input_ids.to(device)
    mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(device)
    was_training = model.training
    if was_training:
        model.eval()
    try:
        step_args, cache_name = _llm_args(llm), _cache_name(llm)
        batch, result = _prefill(model, input_ids, mask, media, features, routing, step_args)
        out = torch.full((len(input_ids), max_new_tokens), pad, dtype=torch.long, device=device)
        width = 0
        for step in range(max_new_tokens):
            batch.cache = result.get(cache_name)
            tokens = result.logits[:, -1].float().argmax(-1)  # [R]
            out[batch.rows, step] = tokens
            width = step + 1
            going = ~torch.isin(tokens, stops)
            if step + 1 == max_new_tokens or not bool(going.any()):
                break
            if not bool(going.all()):
                index = going.nonzero().squeeze(1)
                batch.keep(index)
                tokens = tokens[index]
            batch.position = batch.position + 1
            if batch.mask is not None:
                batch.mask = torch.cat([batch.mask, batch.mask.new_ones(len(batch.mask), 1)], 1)
            with batch.state.applied():
                result = llm(input_ids=tokens[:, None], attention_mask=batch.mask, position_ids=batch.position[:, None],
                             **{cache_name: batch.cache}, **step_args)
        return out[:, :width]
    finally:
        if was_training:
            model.train(True)


def _prefill(model, input_ids, mask, media, features, routing, step_args) -> tuple[_Batch, object]:
    """The prompts [B, T] with their media through the LLM: the batch of every row and the LLM's
    output (logits at the last position [B, 1, V], the cache). Positions count the mask's ones
    (0 on padding), as ``generate`` counts them; an all-ones mask is dropped, as ``generate`` drops it."""
    embeds = model.embed(input_ids, media, features=features)  # [B, T, D_llm]
    positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)  # [B, T]
    state = row_state(model, input_ids, routing)
    batch = _Batch(torch.arange(len(input_ids), device=input_ids.device), None,
                   None if bool((mask == 1).all()) else mask, positions[:, -1], state)
    with state.applied():
        result = model.llm(inputs_embeds=embeds, attention_mask=batch.mask, position_ids=positions, **step_args)
    return batch, result


def _stops_and_pad(model, eos_token_id, pad_token_id) -> tuple[torch.Tensor, int]:
    """Stop ids [K] and the pad id, defaulted as :func:`~cotune.model.generate.generate` and
    transformers default them (tokenizer first, then the LLM's generation config; pad falls back to EOS)."""
    tokenizer, config = model.tokenizer, model.llm.generation_config
    if eos_token_id is None:
        eos_token_id = tokenizer.eos_token_id if tokenizer is not None else config.eos_token_id
    stops = [] if eos_token_id is None else [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
    if pad_token_id is None and tokenizer is not None:
        pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_token_id is None:
        pad_token_id = config.pad_token_id if config.pad_token_id is not None else (stops[0] if stops else 0)
    device = model.llm.get_input_embeddings().weight.device
    return torch.tensor(stops, dtype=torch.long, device=device), int(pad_token_id)


def _cache_name(llm) -> str:
    """The forward's KV cache argument and output field: ``cache`` (recent transformers 5) or ``past_key_values``."""
    return "cache" if "cache" in inspect.signature(llm.forward).parameters else "past_key_values"


def _llm_args(llm) -> dict:
    """Arguments of every LLM call: a cache, and the LM head on the last position only when the
    forward takes ``logits_to_keep`` (as ``generate`` asks)."""
    args: dict = {"use_cache": True}
    if "logits_to_keep" in inspect.signature(llm.forward).parameters:
        args["logits_to_keep"] = 1
    return args
