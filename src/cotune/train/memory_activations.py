"""Activation memory of one training step from shapes alone: the LLM by formula, encoders by a
shape-only trace on the meta device.

Frozen weights need no gradient, so autograd keeps only what the backward pass through them needs:
a frozen linear layer keeps nothing of its input (its input gradient needs only its weight), while
norms, attention, the activation function and every trainable part keep tensors. Per LLM decoder
layer and token, in bytes (d: hidden size; q = heads x head_dim; kv: key/value width as attention
receives it, the query width when grouped heads are repeated for a padding mask; I: intermediate
size; s, l, t: bytes of the residual stream, of the frozen linear layers' outputs and of attention's
inputs, see :class:`DTypes`):

    norms      n_norms x (d x 4 + 4)      RMSNorm keeps its float32 input and 1 / rms (LayerNorm: its
                                          input in s, 4 under autocast, with mean and 1 / std)
    attention  (2q + 2kv) x t + 4 heads   q, k, v, output and log-sum-exp (SDPA flash/efficient kernels;
               + S x t                    eager attention keeps 3q x t and the float32 softmax, heads x S x 4,
                                          and its cast to t instead of the output and the mask);
                                          SDPA's additive padding mask, made and kept in every layer
    MLP        (f + 2 if gated) x I x l   f = tensors the activation keeps (silu 1, quick_gelu 2, gelu_new 4)
    adapters   sites x d x c              the input of each adapter's trainable down projection
    LoRA       sum(in) x (c + m) + n x r x c   per target: its (dropped-out) input and the dropout mask
                                          (m: 1 byte on CUDA, a float32 noise tensor on the CPU)
    8-bit/full 2d x s + I x l             the linear inputs bitsandbytes' int8 matmul keeps (the output
                                          projection's input is attention's output, already kept)
    cast copy  P x 2 per pass             autocast to another dtype than the frozen weights' copies every
                                          weight a linear uses, and autograd keeps the copies
(c = 2 under autocast, else 4: trainable parts are float32; P: frozen linear weights of the layer.)
Times T = batch x sequence tokens, and the routing pass (MM-Adapters: the modality rows, one token
each, through the whole LLM) adds the same per row. With gradient checkpointing a layer keeps only
its input, T x d x s, and one layer is recomputed at a time in backward.

Logits: N = batch x K x vocab elements (K: positions whose next token is supervised; the trainer
runs the LM head there only). The loss is taken in float32: the logits (t bytes), their log-softmax
(4, kept) and in backward its gradient and the input gradient (4 each): N x (t + 12) at the start
of backward. The logits themselves stay alive until the step's backward ends.
"""

from __future__ import annotations

from dataclasses import dataclass
from unittest import mock

import torch
from torch import nn

from cotune.adapters import find_blocks
from cotune.adapters.bottleneck import MMAdapter, RepAdapter

#: tensors [T, I] the MLP's activation function keeps for backward (measured with saved-tensor hooks).
ACTIVATION_SAVES = {"gelu_new": 4, "gelu_fast": 7, "gelu_accurate": 4, "quick_gelu": 2}
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
AUTOCAST_DTYPES = {"bf16": "bfloat16", "fp16": "float16"}


def linear_shape(module: nn.Module) -> tuple[int, int] | None:
    """(in, out) features of a linear layer (``nn.Linear`` or GPT-2's transposed ``Conv1D``), else None."""
    if type(module) is nn.Linear:
        return module.in_features, module.out_features
    if type(module).__name__ == "Conv1D" and getattr(module, "weight", None) is not None and module.weight.dim() == 2:
        return tuple(module.weight.shape)
    return None


def frozen_linears(module: nn.Module) -> list[nn.Module]:
    """The linear layers under ``module`` whose weight is frozen (what bitsandbytes would quantize)."""
    return [m for m in module.modules() if linear_shape(m) is not None and not m.weight.requires_grad]


@dataclass(frozen=True)
class LLMShape:
    """What the formula needs from the LLM: config sizes and one decoder layer's parts."""

    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    gated: bool
    activation_saves: int
    norms: int
    rms_norm: bool
    adapters: int  # MM-/Rep-Adapters per layer
    lora_inputs: int  # sum of in_features over the LoRA-wrapped linear layers of one layer
    lora_targets: int
    frozen_linear_params: int  # weights of the frozen linear layers of one layer
    lm_head_params: int


def llm_shape(model) -> LLMShape:
    """Reads :class:`LLMShape` from a (meta) :class:`CotuneModel`'s LLM and its config."""
    text = model.llm.config.get_text_config()
    d, layers = text.hidden_size, text.num_hidden_layers
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or d // heads
    intermediate = getattr(text, "intermediate_size", None) or getattr(text, "n_inner", None) or 4 * d
    _path, blocks = find_blocks(model.llm, layers)
    block = blocks[0]
    shapes = [linear_shape(m) for m in frozen_linears(block)]
    to_intermediate = sum(out for n_in, out in shapes if n_in == d and out % intermediate == 0)
    lora = [m for m in block.modules() if hasattr(m, "lora_A") and hasattr(m, "in_features")]
    act = getattr(text, "hidden_act", None) or getattr(text, "activation_function", None) or "gelu"
    norms = [m for m in block.children() if "norm" in type(m).__name__.lower()]
    head = model.llm.get_output_embeddings()
    return LLMShape(
        layers=layers, hidden=d, heads=heads, kv_heads=getattr(text, "num_key_value_heads", None) or heads,
        head_dim=head_dim, intermediate=intermediate, vocab=head.weight.shape[0],
        gated=to_intermediate >= 2 * intermediate, activation_saves=ACTIVATION_SAVES.get(act, 1),
        norms=len(norms) or 2, rms_norm=any("rms" in type(m).__name__.lower() for m in norms),
        adapters=sum(isinstance(m, (MMAdapter, RepAdapter)) for m in block.modules()),
        lora_inputs=sum(m.in_features for m in lora), lora_targets=len(lora),
        frozen_linear_params=sum(n_in * out for n_in, out in shapes), lm_head_params=head.weight.numel(),
    )


@dataclass(frozen=True)
class DTypes:
    """Bytes per element in a step: ``stream`` (residual stream: float16 + bfloat16 promote to
    float32), ``linear`` (frozen linear outputs: bitsandbytes layers return their input's dtype),
    ``attention`` (attention inputs and outputs), ``trainable`` (inputs trainable float32 parts keep:
    the autocast copy, else float32), ``logits``; ``cast_copies``: autocast copies frozen weights."""

    stream: int
    linear: int
    attention: int
    trainable: int
    logits: int
    cast_copies: bool
    autocast: bool


def step_dtypes(dtype: str, precision: str, quantized: bool) -> DTypes:
    """The :class:`DTypes` of a component in ``dtype`` trained at ``train.precision``."""
    weight = DTYPE_BYTES[dtype]
    autocast = AUTOCAST_DTYPES.get(precision)
    if autocast is None:
        return DTypes(weight, weight, weight, 4, weight, False, False)
    mismatch = autocast != dtype
    stream = 4 if weight == 4 or mismatch else weight
    linear = stream if quantized else 2
    return DTypes(stream, linear, 2, 2, 2, mismatch and not quantized, True)


@dataclass(frozen=True)
class LayerSetup:
    """How the layers run: ``keeps_linear_inputs`` (8-bit or fully trained weights), ``lora_r``,
    ``lora_dropout``, ``attention`` (sdpa, eager or flash_attention_2), ``padded`` (a padding
    mask is passed: grouped key/value heads are repeated to the query heads for SDPA, which turns
    the boolean mask into an additive one in every layer and keeps it), ``dropout_mask_bytes``
    (per element: CUDA's fused dropout keeps a boolean mask, the CPU a float32 noise tensor)."""

    keeps_linear_inputs: bool = False
    lora_r: int = 0
    lora_dropout: float = 0.0
    attention: str = "sdpa"
    padded: bool = True
    dropout_mask_bytes: int = 1


def layer_bytes_per_token(shape: LLMShape, types: DTypes, setup: LayerSetup, seq: int) -> int:
    """Activation bytes one decoder layer keeps per token (module docstring), cast copies excluded."""
    d, q, inter = shape.hidden, shape.heads * shape.head_dim, shape.intermediate
    repeat = setup.padded and setup.attention == "sdpa"
    kv = q if repeat else shape.kv_heads * shape.head_dim
    norm = 4 if shape.rms_norm or types.autocast else types.stream
    total = shape.norms * (d * norm + (4 if shape.rms_norm else 8))
    if setup.attention == "eager":
        # q, k and v (repeated to the query heads), the float32 softmax and its cast to t.
        total += 3 * q * types.attention + shape.heads * seq * (4 + (types.attention if types.attention != 4 else 0))
    else:
        total += (2 * q + 2 * kv) * types.attention + 4 * shape.heads
        if setup.padded and setup.attention == "sdpa":
            total += seq * types.attention
    total += (shape.activation_saves + (2 if shape.gated else 0)) * inter * types.linear
    total += shape.adapters * d * (types.trainable if types.autocast else 4)
    if shape.lora_targets:
        mask = setup.dropout_mask_bytes if setup.lora_dropout > 0 else 0
        total += shape.lora_inputs * (types.trainable + mask) + shape.lora_targets * setup.lora_r * types.trainable
    if setup.keeps_linear_inputs:
        total += 2 * d * types.stream + inter * types.linear
    return total


def backward_working_bytes(shape: LLMShape, types: DTypes, tokens: int) -> int:
    """Gradients alive while one layer back-propagates: about three [T, I] MLP gradients and two
    [T, d] residual gradients."""
    return tokens * (3 * shape.intermediate * types.linear + 2 * shape.hidden * 4)


def logits_bytes(shape: LLMShape, types: DTypes, rows: int, kept: int) -> tuple[int, int]:
    """(logits kept through backward, extra float32 loss tensors at the start of backward)."""
    n = rows * kept * shape.vocab
    return n * types.logits, n * 12


# ----------------------------------------------------------------------------------- encoders
class _FlashAttention(torch.autograd.Function):
    """Stands in for SDPA during a meta trace: keeps q, k, v, output and log-sum-exp as the
    flash/efficient kernels do (on the meta device SDPA takes the math path, which keeps the
    [heads, N, N] attention matrix)."""

    @staticmethod
    def forward(ctx, query, key, value, mask):
        out = query.new_empty(*query.shape[:-1], value.shape[-1])
        lse = query.new_empty(query.shape[:-1], dtype=torch.float32)
        ctx.save_for_backward(*(t for t in (query, key, value, out, lse, mask) if t is not None))
        return out

    @staticmethod
    def backward(ctx, grad):  # pragma: no cover - meta traces never run backward
        raise RuntimeError("shape-only trace")


def _sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    return _FlashAttention.apply(query, key, value, attn_mask)


@dataclass(frozen=True)
class EncoderTrace:
    """One item through encoder ``name``, its feature selection and connector: ``saved`` bytes
    autograd keeps, ``block_input`` bytes of one block's input (what a checkpointed block keeps),
    ``blocks``, and whether the encoder's blocks can be checkpointed."""

    saved: int
    block_input: int
    blocks: int
    checkpointable: bool


def trace_encoder(model, name: str, dtype: torch.dtype, keeps_linear_inputs: bool = False) -> EncoderTrace:
    """Runs one meta item through ``model.encode_media`` with the encoder's frozen weights in
    ``dtype`` (converted in place) and counts the distinct storages saved for backward (parameters
    and buffers excluded).
    ``keeps_linear_inputs`` (8-bit weights, whose matmul keeps its input): the frozen linear layers
    of an encoder that back-propagates count their inputs, as a trainable weight's would."""
    encoder = model.encoders[name]
    trainable = any(p.requires_grad for p in encoder.parameters())
    for p in encoder.parameters():
        if not p.requires_grad and p.is_floating_point():
            p.data = p.data.to(dtype)
    lent = [m.weight for m in frozen_linears(encoder)]
    lent = lent if keeps_linear_inputs and trainable else []
    params = {t.untyped_storage()._cdata for t in (*model.parameters(), *model.buffers())}
    saved: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage._cdata not in params:
            saved[storage._cdata] = storage.nbytes()
        return tensor

    model.train()
    item = encoder.dummy_input()
    for weight in lent:
        weight.requires_grad_(True)
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), mock.patch.object(
            torch.nn.functional, "scaled_dot_product_attention", _sdpa
        ):
            model.encode_media({name: item})
    finally:
        for weight in lent:
            weight.requires_grad_(False)
    with torch.no_grad():
        first = encoder.hidden_states(item)[0]
    return EncoderTrace(
        saved=sum(saved.values()), block_input=first.numel() * first.element_size(), blocks=encoder.num_blocks,
        checkpointable=trainable and hasattr(encoder.backbone, "activation_checkpointing_enable"),
    )
