"""Loading the causal LM and its tokenizer through the Auto classes."""

from __future__ import annotations

import transformers
from transformers import AddedToken

from cotune.backbones.loading import LoadError, load_config_only, load_pretrained, meta_device
from cotune.config.model import LLMConfig


def _require_gguf() -> None:
    """transformers reads GGUF checkpoints through the gguf package (the ``zoo`` extra); its own
    error for a missing gguf comes after the download and as a traceback."""
    try:
        import gguf  # noqa: F401
    except ImportError as err:
        from cotune.extras import missing

        raise missing("model.llm.gguf_file (a GGUF checkpoint)", "gguf", "zoo") from err


def load_llm(config: LLMConfig, meta: bool = False):
    """Returns (model, tokenizer). With ``meta`` the model is built from config.json on the meta
    device and the tokenizer is None (no weights or tokenizer files are read)."""
    hub = {"revision": config.revision, "trust_remote_code": config.trust_remote_code}
    extra = {}
    if config.gguf_file is not None:
        _require_gguf()
        extra["gguf_file"] = config.gguf_file
    if meta:
        hf_config = load_config_only(transformers.AutoConfig, config.name_or_path, **hub, **extra)
        with meta_device():
            model = transformers.AutoModelForCausalLM.from_config(hf_config, trust_remote_code=config.trust_remote_code)
        return model, None
    if config.attn_implementation is not None:
        extra["attn_implementation"] = config.attn_implementation
    model = load_pretrained(
        transformers.AutoModelForCausalLM, config.name_or_path, dtype=config.dtype, quantization=config.quantization, **hub, **extra
    )
    return model, load_tokenizer(config)


def load_tokenizer(config: LLMConfig):
    """The LLM's tokenizer (from the same path, revision and remote-code setting)."""
    extra = {"gguf_file": config.gguf_file} if config.gguf_file else {}
    if extra:
        _require_gguf()
    try:
        return transformers.AutoTokenizer.from_pretrained(
            config.name_or_path, revision=config.revision, trust_remote_code=config.trust_remote_code, **extra
        )
    except (OSError, ValueError) as err:
        raise LoadError(f"cannot load the tokenizer of {config.name_or_path!r}: {err}") from None


def add_placeholders(tokenizer, placeholders: dict[str, str]) -> dict[str, int]:
    """Registers each placeholder string as a special token (unless the vocabulary has it) -> ids."""
    vocab = tokenizer.get_vocab()
    new = [p for p in placeholders.values() if p not in vocab]
    if new:
        tokenizer.add_tokens([AddedToken(p, special=True, normalized=False) for p in new], special_tokens=True)
    ids = {name: tokenizer.convert_tokens_to_ids(p) for name, p in placeholders.items()}
    for name, token_id in ids.items():
        if token_id is None or token_id == tokenizer.unk_token_id:
            raise LoadError(f"placeholder {placeholders[name]!r} for encoder {name!r} did not get its own token id")
    return ids
