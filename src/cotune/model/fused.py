"""CotuneModel: named encoders -> feature selection -> connectors -> spliced into a causal LM,
with mixture-of-modality routing driven by a learned modality embedding.

Trainable parameters: adapter modules in the LLM and encoders (unless their component is frozen),
connectors (unless frozen), the modality embedding (when the LLM's MM-Adapters train), and whole
backbones trained ``full``. Everything else is frozen and stays in eval mode.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from cotune.adapters.bottleneck import MMAdapter, RepAdapter
from cotune.adapters.gate import LoraGate
from cotune.adapters.routing import RoutingState
from cotune.config.io import ConfigError
from cotune.config.model import ModelConfig
from cotune.data.templates import IGNORE_INDEX
from cotune.model.loss import next_token_loss, next_token_targets
from cotune.model.splice import SpliceError, inline_attention_mask, modality_codes, splice_features


@dataclass
class CotuneOutput:
    """Forward result.

    loss: mean cross-entropy over supervised next-token positions (None without labels).
    loss_sum / num_tokens: the sum and the count behind ``loss`` (for token-normalised accumulation).
    logits: [B, S, V], or [B, K, V] at ``logit_positions`` [K] (ascending sequence positions) when
    the forward was asked for ``supervised_logits`` only.
    routing_weights: [B, L, E] for LLM MM-Adapters, else None.
    modality_index: [B] row of the modality embedding used by each sample.
    """

    logits: torch.Tensor
    logit_positions: torch.Tensor | None = None
    loss: torch.Tensor | None = None
    loss_sum: torch.Tensor | None = None
    num_tokens: torch.Tensor | None = None
    routing_weights: torch.Tensor | None = None
    modality_index: torch.Tensor | None = None
    cache: object = None


class CotuneModel(nn.Module):
    """The assembled multimodal model; build it with :func:`cotune.model.build_model`."""

    def __init__(
        self,
        config: ModelConfig,
        llm: nn.Module,
        tokenizer,
        encoders: Mapping[str, nn.Module],
        selectors: Mapping[str, nn.Module],
        connectors: Mapping[str, nn.Module],
        modality_embedding: nn.Embedding | None,
        routing_state: RoutingState | None,
        adapter_modules: Mapping[str, Sequence[nn.Module]],
        placeholder_ids: Mapping[str, int] | None,
        lora_gate: LoraGate | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.llm = llm
        self.tokenizer = tokenizer
        self.encoders = nn.ModuleDict(dict(encoders))
        self.selectors = nn.ModuleDict(dict(selectors))
        self.connectors = nn.ModuleDict(dict(connectors))
        self.modality_embedding = modality_embedding
        self.routing_state = routing_state
        self.adapter_modules = {k: list(v) for k, v in adapter_modules.items()}
        self.placeholder_ids = dict(placeholder_ids or {})
        self.lora_gate = lora_gate
        self.modality_keys = config.resolved_modality_keys()
        self._code_to_row = self._modality_lookup()

    # ----------------------------------------------------------------- structure
    def _modality_lookup(self) -> list[int]:
        names = list(self.config.encoders)
        table = []
        for code in range(2 ** len(names)):
            present = {n for bit, n in enumerate(names) if code >> bit & 1}
            key = "+".join(sorted(present)) if present else "text"
            table.append(self.modality_keys.index(key) if key in self.modality_keys else -1)
        return table

    def components(self) -> dict[str, nn.Module]:
        """Named components: ``llm``, ``encoder.<name>``, ``connector.<name>``, ``modality_embedding``."""
        parts: dict[str, nn.Module] = {"llm": self.llm}
        for name in self.encoders:
            parts[f"encoder.{name}"] = self.encoders[name]
            parts[f"connector.{name}"] = self.connectors[name]
        if self.modality_embedding is not None:
            parts["modality_embedding"] = self.modality_embedding
        return parts

    def parameter_counts(self) -> dict[str, dict[str, int]]:
        """Per component {total, trainable} parameter counts (adapters count with their host)."""
        return {
            name: {
                "total": sum(p.numel() for p in module.parameters()),
                "trainable": sum(p.numel() for p in module.parameters() if p.requires_grad),
            }
            for name, module in self.components().items()
        }

    def train(self, mode: bool = True) -> "CotuneModel":
        """Frozen or adapted backbones stay in eval mode (no dropout, no batch-norm drift);
        trained adapters, connectors and fully trained backbones follow ``mode``."""
        super().train(mode)
        backbones = {"llm": (self.llm, self.config.llm.trainable)}
        for name, enc in self.encoders.items():
            backbones[f"encoder.{name}"] = (enc, self.config.encoders[name].trainable)
        for module, trainable in backbones.values():
            if trainable != "full":
                module.eval()
                for sub in module.modules():
                    if _is_adapter_module(sub):
                        sub.train(mode and trainable != "frozen")
                    elif getattr(sub, "gradient_checkpointing", False) is True:
                        # transformers checkpoints a layer only when the layer itself is in training
                        # mode; flip that flag alone so its dropouts and attention stay in eval mode.
                        sub.training = mode
        return self

    def enable_gradient_checkpointing(self) -> None:
        """Recompute the blocks of the LLM and of encoders with trainable parameters in backward."""
        llm_kwargs = {"use_reentrant": False}
        if self.routing_state is not None:
            llm_kwargs["context_fn"] = self.routing_state.checkpoint_contexts
        elif self.lora_gate is not None:
            llm_kwargs["context_fn"] = self.lora_gate.checkpoint_contexts
        self.llm.activation_checkpointing_enable(llm_kwargs)
        for encoder in self.encoders.values():
            trainable = any(p.requires_grad for p in encoder.parameters())
            if trainable and hasattr(encoder.backbone, "activation_checkpointing_enable"):
                encoder.backbone.activation_checkpointing_enable({"use_reentrant": False})
        self.train(self.training)

    def num_media_tokens(self, name: str, input_length: int | None = None) -> int | None:
        """LLM tokens one item of encoder ``name`` becomes; for encoders whose token count depends
        on the input, pass ``input_length`` (samples/frames per item), else None is returned."""
        n = self.encoders[name].num_tokens(input_length)
        if n is None:
            return None
        return self.connectors[name].num_tokens(self.selectors[name].num_tokens(n))

    # ----------------------------------------------------------------- state
    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Exactly the parameters with ``requires_grad`` (detached, by their model key)."""
        return {name: p.detach() for name, p in self.named_parameters() if p.requires_grad}

    def load_trainable_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Loads a :meth:`trainable_state_dict`; keys must match the trainable keys exactly."""
        params = {name: p for name, p in self.named_parameters() if p.requires_grad}
        missing = sorted(set(params) - set(state))
        unexpected = sorted(set(state) - set(params))
        if missing or unexpected:
            raise KeyError(
                f"trainable state does not match this model: {len(missing)} missing (e.g. {missing[:3]}), "
                f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})"
            )
        with torch.no_grad():
            for name, p in params.items():
                value = state[name]
                if value.shape != p.shape:
                    raise ValueError(f"{name}: saved shape {tuple(value.shape)} != model shape {tuple(p.shape)}")
                p.copy_(value.to(p.dtype))

    # ----------------------------------------------------------------- forward pieces
    def placeholder_mask(self, input_ids: torch.Tensor) -> torch.Tensor:
        """True [B, S] where ``input_ids`` hold any encoder's placeholder token."""
        placeholders = torch.tensor(list(self.placeholder_ids.values()), device=input_ids.device)
        return torch.isin(input_ids, placeholders)

    def modality_index(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Row of the modality embedding per sample [B], from which placeholders occur in it."""
        ids = [self.placeholder_ids[n] for n in self.config.encoders]
        codes = modality_codes(input_ids, ids)
        table = torch.tensor(self._code_to_row, device=input_ids.device)
        rows = table[codes]
        if (rows < 0).any():
            code = int(codes[rows < 0][0])
            names = [n for bit, n in enumerate(self.config.encoders) if code >> bit & 1]
            raise SpliceError(
                f"a sample holds {'+'.join(names)} inputs, which routing.modality_keys {self.modality_keys} does not list"
            )
        return rows

    def encode_media(self, media: Mapping[str, torch.Tensor], features: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Per encoder: processed inputs [items, ...] (``media``) or precomputed selected features
        [items, n, D_enc] (``features``, e.g. from a feature cache) -> LLM tokens [items, n', D_llm]."""
        return self._encode(media, features, touch_absent=False)[0]

    def _encode(self, media: Mapping[str, torch.Tensor], features: Mapping[str, torch.Tensor] | None,
                touch_absent: bool) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        """:meth:`encode_media` in the config's encoder order; ``touch_absent``: every encoder with
        neither inputs nor features runs on one all-zero item, in that same order, and the second
        value is 0 x their outputs (a scalar, None when nothing ran). A fixed order matters under
        FSDP: each process gathers the encoders' shards in the order it runs them, whatever its batch."""
        features = features or {}
        for name in (*features, *media):
            if name not in self.encoders:
                raise KeyError(f"{'features' if name in features else 'media'} for unknown encoder {name!r}; encoders: {', '.join(self.encoders)}")
            if name in features and name in media:
                raise ValueError(f"encoder {name!r} got both raw inputs and precomputed features")
        out, zero = {}, None
        for name, encoder in self.encoders.items():
            if name in features:
                out[name] = self._connect(name, features[name])
            elif name in media or touch_absent:
                dummy = name not in media
                inputs = (encoder.dummy_input() if dummy else media[name]).to(next(encoder.parameters()).device)
                needs_grad = torch.is_grad_enabled() and any(p.requires_grad for p in encoder.parameters())
                with torch.set_grad_enabled(needs_grad):
                    hidden = encoder.hidden_states(inputs)
                tokens = self._connect(name, self.selectors[name](hidden))
                if dummy:
                    term = 0.0 * tokens.float().sum()
                    zero = term if zero is None else zero + term
                else:
                    out[name] = tokens
        return out, zero

    def _connect(self, name: str, selected: torch.Tensor) -> torch.Tensor:
        """Selected features [items, n, D_enc] -> LLM tokens via connector ``name`` (in its dtype)."""
        connector = self.connectors[name]
        parameter = next(connector.parameters())
        return connector(selected.to(device=parameter.device, dtype=parameter.dtype))

    def embed(
        self,
        input_ids: torch.Tensor,
        media: Mapping[str, torch.Tensor] | None = None,
        sample_ids: Sequence | None = None,
        features: Mapping[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Token embeddings [B, S, D_llm] with encoder tokens spliced in at their placeholders."""
        return self._splice(input_ids, self.encode_media(media or {}, features), sample_ids)

    def _splice(self, input_ids: torch.Tensor, features: Mapping[str, torch.Tensor], sample_ids: Sequence | None) -> torch.Tensor:
        """Token embeddings [B, S, D_llm] of ``input_ids`` [B, S] with the encoded ``features``
        (name -> [items, n, D_llm]) written over their placeholder rows."""
        unknown = set(features) - set(self.placeholder_ids)
        if unknown:
            raise SpliceError(f"no placeholder token id for encoders {sorted(unknown)} (model built without a tokenizer?)")
        safe_ids = input_ids
        for token_id in self.placeholder_ids.values():
            # Placeholder ids may lie beyond the LLM's vocabulary; their rows are overwritten anyway.
            safe_ids = safe_ids.masked_fill(input_ids == token_id, 0)
        embeds = self.llm.get_input_embeddings()(safe_ids)
        for name, token_id in self.placeholder_ids.items():
            embeds = splice_features(embeds, input_ids, token_id, features.get(name), name, sample_ids)
        return embeds

    def gated(self, input_ids: torch.Tensor, repeats: int = 1) -> contextlib.AbstractContextManager:
        """The LLM's media gate for prompts ``input_ids`` [B, S] (each row repeated ``repeats`` times,
        as generation repeats rows per beam): LoRA updates on rows with media only. A no-op
        without a gated LoRA."""
        if self.lora_gate is None:
            return contextlib.nullcontext()
        gate = self.media_gate(input_ids)
        return self.lora_gate.applying(gate.repeat_interleave(repeats) if repeats > 1 else gate)

    def check_generation(self) -> None:
        """ConfigError unless the model can generate: inline routing's modality row cannot be cached."""
        if self.config.routing.mode == "inline" and self.routing_state is not None:
            raise ConfigError("model.routing.mode: 'inline' routing cannot generate (its modality row cannot be cached); "
                              "train with 'separate'")

    def media_gate(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The LoRA media gate of prompts ``input_ids`` [B, S]: [B], 1.0 on rows with media."""
        return self.placeholder_mask(input_ids).any(1).float()

    def compute_routing(self, modality_index: torch.Tensor) -> torch.Tensor:
        """Routing weights [L, B, E] from the modality rows run alone through the LLM (separate mode)."""
        per_sample = self.config.routing.rows == "per_sample"
        rows_index, inverse = (modality_index, None) if per_sample else modality_index.unique(return_inverse=True)
        rows = self.modality_embedding(rows_index)[:, None].to(self.llm.get_input_embeddings().weight.dtype)
        with self.routing_state.computing(use_dropout=per_sample and self.training) as recorded:
            self.llm(inputs_embeds=rows, use_cache=False)
        weights = self.routing_state.stacked(recorded)
        return weights if inverse is None else weights[:, inverse]

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        media: Mapping[str, torch.Tensor] | None = None,
        sample_ids: Sequence | None = None,
        features: Mapping[str, torch.Tensor] | None = None,
        touch_all: bool = False,
        supervised_logits: bool = False,
        **llm_kwargs,
    ) -> CotuneOutput:
        """input_ids / attention_mask / labels [B, S] (labels -100 where unsupervised); media: encoder
        name -> processed inputs of the items in batch order; features: encoder name -> selected
        features [items, n, D_enc] instead of inputs. Returns logits [B, S, V] and the loss.

        ``touch_all`` (multi-process training): every encoder absent from this batch runs on one
        all-zero item, in the config's encoder order before the LLM, and enters the loss times 0, so
        every process runs the same modules in the same order and produces a gradient for every
        parameter (peers hang when one rank's batch is text-only; FSDP gathers shards in run order).

        ``supervised_logits`` (with labels): the LM head runs only at the positions [K] where some
        row's next token is supervised, through the LLM's own ``logits_to_keep`` (the head is about
        a fifth of a small LLM's forward, and answers are a few tokens of a longer prompt). The loss
        is the same; ``logits`` are [B, K, V] at ``logit_positions``. LLMs without
        ``logits_to_keep`` return all positions."""
        encoded, untouched = self._encode(media or {}, features, touch_absent=touch_all)
        embeds = self._splice(input_ids, encoded, sample_ids)
        positions = None
        if labels is not None:
            llm_kwargs.setdefault("use_cache", False)  # training: no KV cache to build
            labels = labels.masked_fill(self.placeholder_mask(input_ids), IGNORE_INDEX)
            if supervised_logits and self._keeps_logits():
                positions = (next_token_targets(labels) != IGNORE_INDEX).any(0).nonzero().squeeze(1)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        routing = None
        modality_index = None
        if positions is not None:
            llm_kwargs["logits_to_keep"] = positions
        if self.routing_state is None:
            with self.gated(input_ids):
                out = self.llm(inputs_embeds=embeds, attention_mask=attention_mask, **llm_kwargs)
            logits = out.logits
        else:
            modality_index = self.modality_index(input_ids)
            if self.config.routing.mode == "inline":
                logits, routing, out = self._forward_inline(embeds, attention_mask, modality_index, llm_kwargs)
            else:
                routing = self.compute_routing(modality_index)
                with self.routing_state.applying(routing):
                    out = self.llm(inputs_embeds=embeds, attention_mask=attention_mask, **llm_kwargs)
                logits = out.logits
        result = CotuneOutput(
            logits=logits,
            logit_positions=positions,
            routing_weights=None if routing is None else routing.transpose(0, 1),
            modality_index=modality_index,
            cache=out.get("cache"),
        )
        if labels is not None:
            result.loss_sum, result.num_tokens = next_token_loss(logits, labels, positions)
            if untouched is not None:
                result.loss_sum = result.loss_sum + untouched
            result.loss = result.loss_sum / result.num_tokens.clamp(min=1)
        return result

    def _keeps_logits(self) -> bool:
        """Whether the LLM's forward takes ``logits_to_keep`` (transformers' causal LMs mostly do)."""
        return "logits_to_keep" in inspect.signature(self.llm.forward).parameters

    def _forward_inline(self, embeds, attention_mask, modality_index, llm_kwargs):
        """LaVIN's reference layout: modality row at position 0, masked from every text token."""
        rows = self.modality_embedding(modality_index)[:, None].to(embeds.dtype)
        with self.routing_state.computing(use_dropout=True) as recorded:
            logits, out = run_inline(self.llm, torch.cat([rows, embeds], 1), attention_mask, llm_kwargs)
        return logits, self.routing_state.stacked(recorded), out


def run_inline(llm: nn.Module, sequence: torch.Tensor, attention_mask: torch.Tensor, llm_kwargs: dict):
    """The LLM on ``sequence`` [B, 1 + S, D] (a modality row, then the text) with the row masked
    from every text token; returns (logits at the text's positions [B, S, V] or at the
    ``logits_to_keep`` positions counted in the text, the LLM's output)."""
    if llm_kwargs.get("use_cache"):
        raise ValueError("routing.mode 'inline' does not support cached decoding; use 'separate'")
    mask = inline_attention_mask(attention_mask, sequence.dtype)
    position_ids = torch.arange(sequence.shape[1], device=sequence.device)[None].expand(sequence.shape[0], -1)
    keep = llm_kwargs.get("logits_to_keep", 0)
    kwargs = {**llm_kwargs, "use_cache": False}
    if isinstance(keep, torch.Tensor):
        kwargs["logits_to_keep"] = keep + 1  # positions: the modality row occupies position 0
    out = llm(inputs_embeds=sequence, attention_mask=mask, position_ids=position_ids, **kwargs)
    # An int keeps the last ``keep`` positions (0: all, the row's among them).
    return (out.logits[:, 1:] if isinstance(keep, int) and keep == 0 else out.logits), out


def _is_adapter_module(module: nn.Module) -> bool:
    if isinstance(module, (MMAdapter, RepAdapter)):
        return True
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:  # pragma: no cover - peft is a core dependency
        return False
    return isinstance(module, LoraLayer)
