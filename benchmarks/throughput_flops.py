"""FLOP counting (FlopCounterMode plus analytic formulas) and the machine's GEMM rate for train_throughput.py."""

from __future__ import annotations

import time

import torch

from benchmarks.mini_model import CLIP, LLM, LORA_R, MODEL_SHAPES, SQUARE


# ---------------------------------------------------------------------------------- FLOPs


def analytic_flops(case: str, batch: int, seq: int, media: int) -> dict[str, dict[str, float]]:
    """Matmul FLOPs of one step (2 per multiply-add): {component: {"fwd": ..., "bwd": ...}}.

    Forward: 2 x (weights) x (tokens) for every linear, adapters included, plus attention 4 x L x S^2 x d
    per sample (QK^T and AV over the full square, the FlopCounterMode convention; the LLM's causal
    kernel skips about half of it). Backward of a frozen linear is its input gradient only (1x
    forward), a trainable one adds its weight gradient (2x); attention backward is 2.5x forward (dQ, dK,
    dV, dP plus the recomputed QK^T of flash kernels, as torch's SDPA backward formula counts). Parts
    below which nothing trains get no backward: all of CLIP in ``lora`` (frozen, run without grad),
    the patch convolution in both cases, linear_1's input gradient in ``lora``'s mlp2x-gelu.
    Elementwise ops, norms, softmax, cross-entropy, the optimizer and the one-token routing pass of
    ``mma`` are not counted.
    """
    d, inner, layers, vocab = LLM["hidden_size"], LLM["intermediate_size"], LLM["num_hidden_layers"], LLM["vocab_size"]
    de, ie, le, patch = CLIP["hidden_size"], CLIP["intermediate_size"], CLIP["num_hidden_layers"], CLIP["patch_size"]
    n = (CLIP["image_size"] // patch) ** 2 + 1
    t, te = batch * seq, batch * n
    llm_linear = 2 * t * (layers * (4 * d * d + 3 * d * inner) + d * vocab)
    llm_attention = 4 * batch * layers * seq * seq * d
    enc_linear = 2 * te * le * (4 * de * de + 2 * de * ie)
    enc_attention = 4 * batch * le * n * n * de
    conv = 2 * batch * (n - 1) * 3 * patch * patch * de
    if case == "mma":
        hidden, groups, experts = 8, 2, 2
        # LLM: down C->h, per-sample mixed grouped up h/g->C. CLIP (per-token router): router C->E,
        # down, and the grouped up of every expert.
        llm_adapter = 2 * t * layers * (d * hidden + hidden // groups * d)
        enc_adapter = 2 * te * le * (de * experts + de * hidden + experts * hidden // groups * de)
        connector = 2 * batch * media * (de * 128 + 128 * d)
        return {
            "llm": {"fwd": llm_linear + llm_attention + llm_adapter, "bwd": llm_linear + 2.5 * llm_attention + 2 * llm_adapter},
            "encoder": {"fwd": enc_linear + enc_attention + conv + enc_adapter, "bwd": enc_linear + 2.5 * enc_attention + 2 * enc_adapter},
            "connector": {"fwd": connector, "bwd": 2 * connector},
        }
    lora = 2 * t * layers * LORA_R * (4 * (d + d) + 2 * (d + inner) + (inner + d))
    first, second = 2 * batch * media * de * d, 2 * batch * media * d * d
    return {
        "llm": {"fwd": llm_linear + llm_attention + lora, "bwd": llm_linear + 2.5 * llm_attention + 2 * lora},
        "encoder": {"fwd": enc_linear + enc_attention + conv, "bwd": 0.0},
        "connector": {"fwd": first + second, "bwd": first + 2 * second},
    }


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_sdpa_backward_flops(grad_out_shape, query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_backward_flop_count

    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def flop_counter():
    """FlopCounterMode that also counts the CPU flash-attention kernels (torch 2.13 has formulas
    only for the CUDA SDPA kernels, so CPU attention would count as 0)."""
    from torch.utils.flop_counter import FlopCounterMode

    aten = torch.ops.aten
    mapping = {aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops,
               aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward_flops}
    return FlopCounterMode(display=False, depth=4, custom_mapping=mapping)


def forward_flops_by_component(counter) -> dict[str, float]:
    """Forward FLOPs per CotuneModel component (``llm``, ``encoder``, ``connector``) from a counter
    that saw only the forward pass (the module tracker's attribution of backward ops is unreliable)."""
    names = {"CotuneModel.llm": "llm", "CotuneModel.encoders.image.backbone": "encoder", "CotuneModel.connectors.image": "connector"}
    counts = counter.get_flop_counts()
    parts = {names[k]: float(sum(ops.values())) for k, ops in counts.items() if k in names}
    if "encoder" not in parts and "CotuneModel" in counts:  # MobileNetV2's blocks are called one by one, not its forward
        parts["encoder"] = float(sum(counts["CotuneModel"].values())) - sum(parts.values())
    return parts


# ---------------------------------------------------------------------------------- GEMM


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _now(device: str) -> float:
    _sync(device)
    return time.perf_counter()


def gemm_rate(shape: tuple[int, int, int], device: str, dtype: torch.dtype, reps: int) -> float:
    """FLOP/s of torch.matmul [M x K] @ [K x N] in ``dtype`` (one untimed call, then the best of ``reps``)."""
    m, k, n = shape
    a, b = torch.randn(m, k, device=device, dtype=dtype), torch.randn(k, n, device=device, dtype=dtype)
    torch.matmul(a, b)
    best = float("inf")
    for _ in range(reps):
        start = _now(device)
        torch.matmul(a, b)
        best = min(best, _now(device) - start)
    return 2 * m * k * n / best


def gemm_table(device: str, dtype: torch.dtype, quick: bool, shapes=MODEL_SHAPES, square: float | None = None) -> dict:
    """The square GEMM rate (measured unless given) and the rates at ``shapes`` ((M, K, N), count per
    forward), with their FLOP-weighted harmonic mean."""
    square = square or gemm_rate(SQUARE, device, dtype, 2 if quick else 4)
    rows, flops, seconds = [], 0.0, 0.0
    for shape, count in shapes:
        rate = gemm_rate(shape, device, dtype, 3 if quick else 10)
        work = 2 * shape[0] * shape[1] * shape[2] * count
        flops, seconds = flops + work, seconds + work / rate
        rows.append({"shape": shape, "count": count, "rate": rate})
    return {"square": square, "shapes": rows, "model_shape_rate": flops / seconds}
