"""Tiny random backbones saved with ``save_pretrained`` so tests load them through the real code.

Nothing here downloads anything: configs are built in code, tokenizers from a word-level vocabulary. Every
``save_*`` writes under the given root once and returns the existing directory afterwards, so one root can be
shared by a whole test session.
"""

from __future__ import annotations

from pathlib import Path

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

WORDS = "the a an is of and to in what colour shape image sound answer yes no red blue green circle square loud quiet".split()
SPECIAL = ["<pad>", "<unk>", "<s>", "</s>"]
TOKENIZER_SIZE = 300  # byte-level BPE: 256 bytes + specials + merges
VOCAB_SIZE = 320  # LLM rows: room for placeholder tokens added after the tokenizer's vocabulary
#: A ChatML chat template for the tiny tokenizer (after adding ``<|im_start|>`` and ``<|im_end|>`` as special tokens).
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

LLM_CONFIGS = {
    "llama": lambda: transformers.LlamaConfig(
        vocab_size=VOCAB_SIZE, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, pad_token_id=0, bos_token_id=2, eos_token_id=3,
        tie_word_embeddings=False,
    ),
    "qwen2": lambda: transformers.Qwen2Config(
        vocab_size=VOCAB_SIZE, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, pad_token_id=0, bos_token_id=2, eos_token_id=3,
        tie_word_embeddings=True,
    ),
    "mistral": lambda: transformers.MistralConfig(
        vocab_size=VOCAB_SIZE, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, pad_token_id=0, bos_token_id=2, eos_token_id=3,
        sliding_window=None,
    ),
    "gpt2": lambda: transformers.GPT2Config(
        vocab_size=VOCAB_SIZE, n_embd=32, n_layer=2, n_head=4, n_positions=256, bos_token_id=2, eos_token_id=3,
    ),
    "gemma": lambda: transformers.GemmaConfig(
        vocab_size=VOCAB_SIZE, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=1, head_dim=8, max_position_embeddings=256, pad_token_id=0, bos_token_id=2, eos_token_id=3,
    ),
    "phi": lambda: transformers.PhiConfig(
        vocab_size=VOCAB_SIZE, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=256, pad_token_id=0, bos_token_id=2, eos_token_id=3, partial_rotary_factor=0.5,
    ),
}
# bitsandbytes' 4-bit CPU inference kernel packs weights in blocks of 64 input features: quantized
# tests use these 64-wide variants (real backbones are always multiples of 64).
LLM_CONFIGS["llama-64"] = lambda: transformers.LlamaConfig(
    vocab_size=VOCAB_SIZE, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=256, pad_token_id=0, bos_token_id=2, eos_token_id=3,
    tie_word_embeddings=False,
)


def _byte_level_bpe(special: list[str]) -> Tokenizer:
    """A byte-level BPE backend with ``special`` tokens, trained on WORDS (deterministic)."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TOKENIZER_SIZE, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator([" ".join(WORDS)] * 10, trainer)
    return backend


def make_tokenizer() -> transformers.PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on WORDS; every family's tokenizer class loads it alike."""
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=_byte_level_bpe(SPECIAL), pad_token="<pad>", unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )


def save_llm(root: Path, family: str = "llama", seed: int = 0) -> Path:
    """A tiny random causal LM of ``family`` plus tokenizer, saved under ``root/family``."""
    path = Path(root) / f"llm-{family}"
    if not (path / "config.json").exists():
        torch.manual_seed(seed)
        model = transformers.AutoModelForCausalLM.from_config(LLM_CONFIGS[family]())
        model.save_pretrained(path)
        make_tokenizer().save_pretrained(path)
    return path


ENCODER_MODELS = {
    "clip": lambda: transformers.CLIPVisionModel(transformers.CLIPVisionConfig(
        hidden_size=24, intermediate_size=48, num_hidden_layers=3, num_attention_heads=2, image_size=30, patch_size=6,
    )),
    "siglip": lambda: transformers.SiglipVisionModel(transformers.SiglipVisionConfig(
        hidden_size=24, intermediate_size=48, num_hidden_layers=3, num_attention_heads=2, image_size=30, patch_size=6,
    )),
    "vit": lambda: transformers.ViTModel(transformers.ViTConfig(
        hidden_size=24, intermediate_size=48, num_hidden_layers=3, num_attention_heads=2, image_size=30, patch_size=6,
    ), add_pooling_layer=False),
    "dinov2": lambda: transformers.Dinov2Model(transformers.Dinov2Config(
        hidden_size=24, intermediate_size=48, num_hidden_layers=3, num_attention_heads=2, image_size=30, patch_size=6,
    )),
    "whisper": lambda: transformers.WhisperModel(transformers.WhisperConfig(
        d_model=24, encoder_layers=2, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
        encoder_ffn_dim=48, decoder_ffn_dim=48, num_mel_bins=8, max_source_positions=16, vocab_size=64,
        pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1,
    )),
    "wav2vec2": lambda: transformers.Wav2Vec2Model(transformers.Wav2Vec2Config(
        hidden_size=24, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2, conv_dim=(16, 16),
        conv_stride=(5, 2), conv_kernel=(10, 3), num_feat_extract_layers=2, num_conv_pos_embeddings=8,
        num_conv_pos_embedding_groups=2, vocab_size=32,
    )),
    "hubert": lambda: transformers.HubertModel(transformers.HubertConfig(
        hidden_size=24, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2, conv_dim=(16, 16),
        conv_stride=(5, 2), conv_kernel=(10, 3), num_feat_extract_layers=2, num_conv_pos_embeddings=8,
        num_conv_pos_embedding_groups=2, vocab_size=32,
    )),
}
ENCODER_MODELS["clip-64"] = lambda: transformers.CLIPVisionModel(transformers.CLIPVisionConfig(
    hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=2, image_size=30, patch_size=6,
))

PROCESSORS = {
    "clip": lambda: transformers.CLIPImageProcessor(size={"shortest_edge": 30}, crop_size={"height": 30, "width": 30}),
    "clip-64": lambda: transformers.CLIPImageProcessor(size={"shortest_edge": 30}, crop_size={"height": 30, "width": 30}),
    "whisper": lambda: transformers.WhisperFeatureExtractor(feature_size=8, chunk_length=1, hop_length=500, n_samples=16000),
}


def save_encoder(root: Path, kind: str, seed: int = 0) -> Path:
    """A tiny random encoder of ``kind`` (and its processor where one is defined) under ``root``."""
    path = Path(root) / f"enc-{kind}"
    if not (path / "config.json").exists():
        torch.manual_seed(seed)
        ENCODER_MODELS[kind]().save_pretrained(path)
        if kind in PROCESSORS:
            PROCESSORS[kind]().save_pretrained(path)
    return path


WHISPER_SPECIAL = [
    "<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|translate|>", "<|transcribe|>", "<|startoflm|>",
    "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>",
]
WHISPER_TIMESTAMPS = 4  # model rows after the tokenizer's vocabulary, as Whisper's <|0.00|>... tokens


def save_whisper_generator(root: Path, seed: int = 0) -> Path:
    """A tiny random WhisperForConditionalGeneration with a Whisper-style tokenizer (byte-level BPE
    plus Whisper's special tokens), feature extractor and generation config, under ``root``."""
    path = Path(root) / "whisper-generator"
    if (path / "config.json").exists():
        return path
    tokenizer = transformers.WhisperTokenizer(tokenizer_object=_byte_level_bpe(WHISPER_SPECIAL), pad_token="<|endoftext|>")
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in WHISPER_SPECIAL}
    config = transformers.WhisperConfig(
        vocab_size=len(tokenizer) + WHISPER_TIMESTAMPS, d_model=24, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=48, decoder_ffn_dim=40, num_mel_bins=8,
        max_source_positions=16, max_target_positions=32, pad_token_id=ids["<|endoftext|>"],
        bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|endoftext|>"],
        decoder_start_token_id=ids["<|startoftranscript|>"],
    )
    torch.manual_seed(seed)
    model = transformers.WhisperForConditionalGeneration(config)
    with torch.no_grad():  # every tensor distinct (init leaves biases 0 and norms 1): mix-ups show
        for param in model.parameters():
            param.normal_(0.0, 0.3)
    model.generation_config = transformers.GenerationConfig(
        decoder_start_token_id=config.decoder_start_token_id, eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id, max_length=config.max_target_positions, suppress_tokens=[ids["<|nocaptions|>"]],
        begin_suppress_tokens=[ids["<|endoftext|>"]], alignment_heads=[[1, 0], [1, 1]],
        no_timestamps_token_id=ids["<|notimestamps|>"], is_multilingual=False, return_timestamps=False,
    )
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    PROCESSORS["whisper"]().save_pretrained(path)
    return path


def media_input(kind: str, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random processed inputs for a tiny encoder of ``kind`` ([B, 3, 30, 30], [B, 8, 32] or [B, 400])."""
    if kind in ("clip", "siglip", "vit", "dinov2"):
        return torch.randn(batch, 3, 30, 30, generator=generator)
    if kind == "whisper":
        return torch.randn(batch, 8, 32, generator=generator)
    return torch.randn(batch, 400, generator=generator)


def model_config(llm_path: Path, encoders: dict | None = None, **llm_fields) -> dict:
    """Raw config mapping for load_config(data=...)."""
    return {"model": {"llm": {"name_or_path": str(llm_path), **llm_fields}, "encoders": encoders or {}}}


def build(root: Path, llm: str = "llama", encoders: dict | None = None, overrides=(), **llm_fields):
    """Builds a CotuneModel over tiny saved backbones. ``encoders``: name -> dict with ``kind``
    (a key of ENCODER_MODELS) and any EncoderConfig fields."""
    from cotune.config import load_config
    from cotune.model import build_model

    enc_cfg = {}
    for name, spec in (encoders or {}).items():
        spec = dict(spec)
        kind = spec.pop("kind")
        enc_cfg[name] = {"type": kind, "name_or_path": str(save_encoder(root, kind)), **spec}
    config = load_config(data=model_config(save_llm(root, llm), enc_cfg, **llm_fields), overrides=overrides)
    return build_model(config)


def randomise_trainables(model, seed: int = 0, std: float = 0.2) -> None:
    """Gives every trainable tensor random values (so zero-initialised adapters do something)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _name, p in sorted(model.named_parameters()):
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g) * std)


def encode(model, text: str, placeholders: dict[str, int] | None = None) -> torch.Tensor:
    """Token ids [1, T]: BOS, ``n`` placeholder tokens per encoder name, then the words of ``text``."""
    tok = model.tokenizer
    ids = [tok.bos_token_id]
    for name, count in (placeholders or {}).items():
        ids += [model.placeholder_ids[name]] * count
    ids += tok(text, add_special_tokens=False).input_ids
    return torch.tensor([ids])


def pad_batch(rows: list[torch.Tensor], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pads [1, T_i] rows -> (ids [B, T], attention_mask [B, T])."""
    width = max(r.shape[1] for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : r.shape[1]] = r[0]
        mask[i, : r.shape[1]] = 1
    return ids, mask


def save_image_run(root: Path, out: Path, seed: int = 0) -> Path:
    """A saved model directory (``out``): tiny LLaMA + CLIP (CLS token, MLP connector) with random
    MM-Adapters, LaVIN template; what ``cotune eval`` and friends load as a run."""
    from cotune.config import load_config
    from cotune.model import build_model, save_model

    encoders = {"image": {"type": "clip", "name_or_path": str(save_encoder(root, "clip")), "reduce": "cls",
                          "connector": {"type": "mlp2x-gelu"}}}
    config = load_config(data=model_config(save_llm(root), encoders, trainable="adapter", adapter={"type": "mm_adapter"}))
    model = build_model(config)
    randomise_trainables(model, seed=seed)
    return save_model(model, config, out)
