"""The zoo's real small backbones and demo-shaped synthetic batches, for the ``--zoo`` runs of
train_throughput.py, balance_overhead.py and generation.py (``mini_model.py`` is the mini twin).

Backbones: SmolLM2-135M-Instruct (LLaMA-style, hidden 576, 30 layers, 9 query / 3 key-value heads
of 64, MLP 1536, vocab 49152, tied embeddings) and torchvision's ImageNet MobileNetV2, read from
the zoo cache (``cotune zoo fetch NAME``; ``$COTUNE_CACHE`` or ``~/.cache/cotune``). Two cases:

* ``mma``:  the demo recipe (``cotune/demo/demo.yaml``) without its audio encoder: MM-Adapters
  (dim 8, 2 groups, 2 experts, t = 10, dropout 0.1) in all 30 LLM layers and all 18
  MobileNetV2 blocks, LaVIN neck (hidden 128) on the 7x7 grid of block 18 averaged row by row
  (7 image tokens);
* ``lora``: LoRA r=16 (alpha 32) on every linear of the LLM's blocks, MobileNetV2 frozen,
  mlp2x-gelu on the 49 tokens of the 7x7 grid (LLaVA-1.5 style).

Batches follow SmolLM2's chat template (ChatML): system "Answer briefly.", a user turn of image
placeholders then random question tokens, an assistant answer of random tokens; labels supervise the
answer and its ``<|im_end|>``. Shapes (``SHAPES``): ``demo`` = batch 16, 41 text tokens (48 with
the 7 image tokens, as the demo's samples) and a 2-token answer; ``long`` = batch 4, 249 text
tokens (256 with 7 image tokens) and a 128-token answer: 1024 LLM tokens per step instead of
768 spread over 16 short rows, a GEMM-friendlier size for the FLOP/s fraction.
"""

from __future__ import annotations

from pathlib import Path

import torch

LLM_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
IMAGE_ID = "torchvision/mobilenet_v2"
CASES = ("mma", "lora")
SMOL = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, kv_size=3 * 64, vocab_size=49152)
LORA_R = 16
IMAGE_SIZE = 224
#: shape name -> (batch, text tokens per row, answer tokens per row); image tokens come on top.
SHAPES = {"demo": (16, 41, 2), "long": (4, 249, 128)}
SYSTEM = "<|im_start|>system\nAnswer briefly.<|im_end|>\n<|im_start|>user\n"
ASSISTANT = "<|im_end|>\n<|im_start|>assistant\n"
END = "<|im_end|>"
FIRST_WORD_ID = 100  # random text ids are drawn from [FIRST_WORD_ID, vocab): no special tokens

MODEL_TEXT = (
    "Model: SmolLM2-135M-Instruct (LLaMA-style, hidden 576, 30 layers, 9 query / 3 key-value heads, MLP 1536, vocab 49152, "
    "tied embeddings, float32) and MobileNetV2 (ImageNet weights, 224 px, 3.5M params) from the zoo. `mma`: the demo "
    "recipe's image path: MM-Adapters (dim 8, 2 groups, 2 experts, t = 10, dropout 0.1) in all 30 LLM layers "
    "(routed by the modality row) and all 18 MobileNetV2 blocks (per-token router), LaVIN neck (hidden 128) on the 7x7x1280 "
    "grid of block 18 averaged row by row (7 image tokens). `lora`: LoRA r=16, alpha 32, dropout 0.05 on every linear of "
    "the LLM blocks, MobileNetV2 frozen, mlp2x-gelu on the 49 grid tokens."
)


def zoo_paths() -> dict[str, str]:
    """Where the LLM and the image encoder are read from: the hub id when the Hugging Face cache has
    it, else the zoo copy (the hub is not probed); raises, naming ``cotune zoo fetch``, when missing."""
    from cotune.zoo.sources import resolve_path

    offline = lambda: False  # noqa: E731
    return {"llm": resolve_path(LLM_ID, probe=offline, key="model.llm.name_or_path"),
            "image": resolve_path(IMAGE_ID, probe=offline, key="model.encoders.image.name_or_path")}


def zoo_config(case: str):
    """The config of one case (module docstring), with the demo's optimisation settings (per-group
    peak learning rates: LLM 1e-3, encoder 3e-4, the rest 3e-3)."""
    from cotune.config import load_config
    from benchmarks.recipes import mm_adapter_recipe

    recipe = mm_adapter_recipe()
    model, train = recipe["model"], recipe["train"]
    del model["encoders"]["audio"], train["groups"]["encoder"]["audio"]
    paths = zoo_paths()
    model["llm"]["name_or_path"] = paths["llm"]
    image = model["encoders"]["image"]
    image["name_or_path"] = paths["image"]
    if case == "lora":
        model["llm"].update(trainable="lora", adapter={"type": "lora", "lora_r": LORA_R, "lora_alpha": 2 * LORA_R,
                                                       "target_modules": ["all-linear"]})
        for key in ("window", "adapter"):
            image.pop(key)
        image.update(reduce="patches", trainable="frozen", connector={"type": "mlp2x-gelu"})
    return load_config(data={"seed": 0, "model": model, "train": train})


def text_ids(generator: torch.Generator, n: int) -> list[int]:
    return torch.randint(FIRST_WORD_ID, SMOL["vocab_size"], (n,), generator=generator).tolist()


def chat_batch(model, shape: str, device: str) -> dict:
    """input_ids / labels / attention_mask [B, S] of ``SHAPES[shape]`` rows (module docstring; no
    padding), pixel_values [B, 3, 224, 224] float; also sample_ids, as the collator gives them."""
    batch, text, answer = SHAPES[shape]
    tok, media = model.tokenizer, model.num_media_tokens("image")
    system, assistant, end = (tok(s, add_special_tokens=False).input_ids for s in (SYSTEM, ASSISTANT, END))
    question = text - len(system) - len(assistant) - answer - len(end)
    g = torch.Generator().manual_seed(0)
    rows, labels = [], []
    for _ in range(batch):
        reply = text_ids(g, answer) + end
        prompt = system + [model.placeholder_ids["image"]] * media + text_ids(g, question) + assistant
        rows.append(prompt + reply)
        labels.append([-100] * len(prompt) + reply)
    ids = torch.tensor(rows)
    pixels = torch.randn(batch, 3, IMAGE_SIZE, IMAGE_SIZE, generator=g)
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device), "labels": torch.tensor(labels).to(device),
            "media": {"image": pixels.to(device)}, "sample_ids": [f"synthetic-{i}" for i in range(batch)]}


def supervised_positions(batch: dict) -> int:
    """K: the positions where some row's next token is supervised (where the Trainer runs the LM head)."""
    return int((batch["labels"][:, 1:] != -100).any(0).sum())


# ---------------------------------------------------------------------------------- FLOPs, GEMM shapes


def analytic_flops(case: str, batch: int, seq: int, kept: int) -> dict[str, dict[str, float]]:
    """Matmul FLOPs of the LLM in one step (2 per multiply-add): {"llm": {"fwd": ..., "bwd": ...}}.

    Forward: 2 x (weights) x (tokens) for the q, k, v, o, gate, up and down projections of the 30
    blocks (k and v are 576 -> 192: 3 key-value heads), the tied LM head at the K supervised positions
    only (``supervised_logits``, as the Trainer runs it), attention 4 x L x S^2 x 576 per sample (full
    square, the FlopCounterMode convention), and LoRA's A and B in ``lora``. Backward: the frozen
    projections and head give input gradients only (1x forward), attention 2.5x, LoRA 2x. The MM-Adapters
    (under 0.3 % of the LLM's FLOPs), MobileNetV2 (convolutions, counted only by FlopCounterMode) and
    the connector are left out.
    """
    d, inner, layers, kv, vocab = (SMOL[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "kv_size", "vocab_size"))
    t = batch * seq
    linear = 2 * t * layers * (2 * d * d + 2 * d * kv + 3 * d * inner)
    head = 2 * batch * kept * d * vocab
    attention = 4 * batch * layers * seq * seq * d
    lora = 2 * t * layers * LORA_R * (2 * (d + d) + 2 * (d + kv) + 2 * (d + inner) + (inner + d)) if case == "lora" else 0
    return {"llm": {"fwd": linear + head + attention + lora, "bwd": linear + head + 2.5 * attention + 2 * lora}}


def model_shapes(batch: int, seq: int, kept: int) -> tuple:
    """[M x K] @ [K x N] GEMMs of one LLM forward at B*S tokens and their counts (the LM head at the
    K supervised positions of every row), for the model-shape GEMM rate."""
    t, d, inner, layers = batch * seq, SMOL["hidden_size"], SMOL["intermediate_size"], SMOL["num_hidden_layers"]
    return (((t, d, d), 2 * layers), ((t, d, SMOL["kv_size"]), 2 * layers), ((t, d, inner), 2 * layers),
            ((t, inner, d), layers), ((batch * kept, d, SMOL["vocab_size"]), 1))


def base_llm(dtype=torch.float32):
    """The bare SmolLM2 (transformers' LlamaForCausalLM) and its path."""
    import transformers

    path = zoo_paths()["llm"]
    return transformers.AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval(), Path(path)
