"""The mini backbones and synthetic batches shared by the training benchmarks (see train_throughput.py)."""

from __future__ import annotations

import random
from pathlib import Path

import torch



CASES = ("mma", "lora")
BATCH, SEQ = 8, 256
LLM = dict(vocab_size=8000, hidden_size=512, intermediate_size=1376, num_hidden_layers=8, num_attention_heads=8,
           num_key_value_heads=8, max_position_embeddings=1024)
TOKENIZER_SIZE = 7936  # the LLM has 8000 rows: room above the tokenizer's ids
CLIP = dict(hidden_size=384, intermediate_size=1536, num_hidden_layers=6, num_attention_heads=6, image_size=224, patch_size=16)
LORA_R = 16
#: [M x K] @ [K x N] GEMMs at the model's shapes (M = B*S LLM tokens or B*197 CLIP tokens) and the
#: number of such products in one forward pass, used to weight a "model-shape GEMM" rate.
SQUARE = (4096, 4096, 4096)
MODEL_SHAPES = (
    ((BATCH * SEQ, 512, 512), 4 * 8), ((BATCH * SEQ, 512, 1376), 2 * 8), ((BATCH * SEQ, 1376, 512), 8),
    ((BATCH * SEQ, 512, 8000), 1), ((BATCH * 197, 384, 384), 4 * 6), ((BATCH * 197, 384, 1536), 6),
    ((BATCH * 197, 1536, 384), 6),
)


# ---------------------------------------------------------------------------------- backbones


def make_tokenizer():
    """A byte-level BPE of TOKENIZER_SIZE entries trained on pseudo-words (offline, < 1 s)."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    rng = random.Random(0)
    syllables = [c + v for c in "bcdfghjklmnprstvwz" for v in "aeiou"] + ["th", "sh", "ch", "qu", "ng"]
    words = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(30000)]
    lines = [" ".join(rng.choice(words) for _ in range(20)) for _ in range(5000)]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TOKENIZER_SIZE, special_tokens=["<pad>", "<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    backend.train_from_iterator(lines, trainer)
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )


def save_backbones(work: Path) -> dict[str, Path]:
    """Random mini LLaMA (+ tokenizer) and CLIP (+ image processor) saved with save_pretrained."""
    import transformers

    paths = {"llm": work / "llm-mini", "clip": work / "clip-mini"}
    if all((p / "config.json").exists() for p in paths.values()):
        return paths
    torch.manual_seed(0)
    config = transformers.LlamaConfig(**LLM, pad_token_id=0, bos_token_id=2, eos_token_id=3, tie_word_embeddings=False)
    transformers.LlamaForCausalLM(config).save_pretrained(paths["llm"])
    make_tokenizer().save_pretrained(paths["llm"])
    transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**CLIP)).save_pretrained(paths["clip"])
    transformers.CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}).save_pretrained(paths["clip"])
    return paths


def cotune_config(work: Path, case: str):
    """The config of one case (see the module docstring)."""
    from cotune.config import load_config

    paths = save_backbones(work)
    if case == "mma":
        adapter = {"type": "mm_adapter", "dim": 8, "groups": 2, "experts": 2, "dropout": 0.1}
        llm = {"trainable": "adapter", "adapter": adapter}
        image = {"layers": [2, 4, 6], "reduce": "cls", "trainable": "adapter", "adapter": adapter,
                 "connector": {"type": "lavin-neck", "hidden": 128}}
    else:
        llm = {"trainable": "lora", "adapter": {"type": "lora", "lora_r": LORA_R, "lora_alpha": 2 * LORA_R, "target_modules": ["all-linear"]}}
        image = {"layers": [-2], "reduce": "patches", "trainable": "frozen", "connector": {"type": "mlp2x-gelu"}}
    raw = {"model": {"llm": {"name_or_path": str(paths["llm"]), **llm},
                     "encoders": {"image": {"type": "clip", "name_or_path": str(paths["clip"]), **image}}}}
    return load_config(data=raw)


# ---------------------------------------------------------------------------------- one case


def synthetic_batch(model, media: int, batch: int, seq: int, device: str) -> dict:
    """input_ids [B, S]: <s>, ``media`` image placeholders, random text ids; labels supervise the
    second half of each row; pixel_values [B, 3, 224, 224] float; no padding."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, TOKENIZER_SIZE, (batch, seq), generator=g)
    ids[:, 0] = model.tokenizer.bos_token_id
    ids[:, 1:1 + media] = model.placeholder_ids["image"]
    labels = ids.clone()
    labels[:, : seq // 2] = -100
    pixels = torch.randn(batch, 3, CLIP["image_size"], CLIP["image_size"], generator=g)
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device),
            "labels": labels.to(device), "media": {"image": pixels.to(device)}}
