"""CTranslate2 Whisper checkpoints (faster-whisper's format) -> a transformers Whisper directory.

faster-whisper, and the apps built on it, ship Whisper as a CTranslate2 directory: ``model.bin``
(every tensor, CT2's own binary layout), ``config.json`` (suppressed tokens, alignment heads,
language ids), ``tokenizer.json`` and ``vocabulary.txt``. :func:`convert_ct2_whisper` reads it
without importing ctranslate2 and writes what ``WhisperForConditionalGeneration``, ``WhisperModel``
and ``WhisperProcessor`` load with ``from_pretrained``: float32 ``model.safetensors``,
``config.json``, ``generation_config.json``, ``preprocessor_config.json`` and the tokenizer files.
:func:`verify_whisper` is a known-answer check of a converted checkpoint (for zoo installs: no
speech data or synthesiser needed).

model.bin (ctranslate2/specs/model_spec.py ``_serialize``; little-endian): u32 binary version,
string spec name, u32 spec revision, u32 variable count; per variable: string name, u8 rank,
rank x u32 dims, u8 dtype id, u32 byte count, the raw bytes; u32 alias count, then (alias, target)
string pairs. A string is a u16 length (counting a trailing NUL), the UTF-8 bytes and the NUL.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import struct
from pathlib import Path

import numpy as np
import torch
import transformers
from safetensors.torch import save_file
from tokenizers import AddedToken, Tokenizer

log = logging.getLogger(__name__)

SPEC_NAME = "WhisperSpec"
BINARY_VERSIONS = (4, 5, 6)  # 4 introduced per-variable dtype ids; 6 is current (CTranslate2 4.x)
# CT2 DataType ids (include/ctranslate2/types.h); bfloat16 is read as raw 16-bit words.
DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: np.uint16}
DTYPE_NAMES = {0: "float32", 1: "int8", 2: "int16", 3: "int32", 4: "float16", 5: "bfloat16"}
GELU = 3  # ctranslate2.specs.common_spec.Activation.GELU
# Scalars whose value the transformers Whisper architecture fixes; anything else must be 0/False.
FIXED_SCALARS = {"decoder/pre_norm": 1, "decoder/activation": GELU}
# CT2's word-timestamp settings; transformers reads alignment heads from generation_config instead.
RUNTIME_SCALARS = ("decoder/alignment_heads", "decoder/alignment_layer")
REQUIRED_FILES = ("model.bin", "config.json", "tokenizer.json")


class CT2FormatError(ValueError):
    """The directory is not a CTranslate2 Whisper model this converter understands."""


class CT2Variables:
    """The tensors of one ``model.bin``, looked up by CT2 name (aliases and int8 scales resolved)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.arrays: dict[str, np.ndarray] = {}
        self.dtypes: dict[str, int] = {}
        self.aliases: dict[str, str] = {}
        self.used: set[str] = set()
        # Memory-mapped: each variable is copied out once (a large-v3 model.bin is ~3 GB).
        self._parse(np.memmap(path, dtype=np.uint8, mode="r"))

    def _parse(self, data: np.ndarray) -> None:
        offset = 0

        def take(fmt: str):
            nonlocal offset
            size = struct.calcsize("<" + fmt)
            if offset + size > len(data):
                raise CT2FormatError(f"{self.path}: truncated at byte {offset}")
            values = struct.unpack_from("<" + fmt, data, offset)
            offset += size
            return values

        def string() -> str:
            nonlocal offset
            (length,) = take("H")
            raw = bytes(data[offset : offset + length])
            offset += length
            return raw[:-1].decode("utf-8")

        (version,) = take("I")
        if version not in BINARY_VERSIONS:
            raise CT2FormatError(f"{self.path}: binary version {version} is not supported (supported: {list(BINARY_VERSIONS)})")
        self.spec = string()
        (self.revision,) = take("I")
        if self.spec != SPEC_NAME:
            raise CT2FormatError(f"{self.path}: holds a {self.spec!r} model, not a CTranslate2 {SPEC_NAME}")
        (count,) = take("I")
        for _ in range(count):
            name = string()
            (rank,) = take("B")
            shape = take(f"{rank}I") if rank else ()
            dtype, num_bytes = take("BI")
            if dtype not in DTYPES:
                raise CT2FormatError(f"{self.path}: variable {name!r} has unknown dtype id {dtype}")
            if num_bytes != int(np.prod(shape)) * np.dtype(DTYPES[dtype]).itemsize or offset + num_bytes > len(data):
                raise CT2FormatError(f"{self.path}: variable {name!r}: {num_bytes} bytes do not hold shape {list(shape)}")
            self.arrays[name] = data[offset : offset + num_bytes].view(DTYPES[dtype]).reshape(shape).copy()
            self.dtypes[name] = dtype
            offset += num_bytes
        (count,) = take("I")
        for _ in range(count):
            alias = string()
            self.aliases[alias] = string()

    def _resolve(self, name: str) -> str | None:
        while name not in self.arrays:
            if name in self.aliases:
                name = self.aliases[name]
            elif name.endswith("_scale") and name[: -len("_scale")] in self.aliases:
                # CT2 aliases a quantised weight's scale along with it (models/model.cc).
                name = self.aliases[name[: -len("_scale")]] + "_scale"
            else:
                return None
        return name

    def __contains__(self, name: str) -> bool:
        return self._resolve(name) is not None

    def target(self, name: str) -> str:
        resolved = self._resolve(name)
        if resolved is None:
            raise CT2FormatError(f"{self.path}: variable {name!r} is missing")
        return resolved

    def scalar(self, name: str) -> int:
        self.used.add(name)
        return int(self.arrays[self.target(name)])

    def tensor(self, name: str, shape: tuple[int, ...] | None = None) -> torch.Tensor:
        """The variable as float32, dequantised (int8/int16 weights divided by their ``_scale``)."""
        self.used.add(name)
        key = self.target(name)
        array, dtype = self.arrays[key], self.dtypes[key]
        if dtype == 5:  # bfloat16: the high half of a float32
            values = (array.astype(np.uint32) << 16).view(np.float32)
        elif dtype in (1, 2):
            scale_name = name + "_scale"
            if scale_name not in self:
                raise CT2FormatError(f"{self.path}: {DTYPE_NAMES[dtype]} variable {name!r} has no {scale_name!r}")
            scale = self.tensor(scale_name).numpy()
            # Quantisation multiplied each output row (dim 0) by its scale; a scalar scale is int16's.
            values = array.astype(np.float32) / scale.reshape((-1,) + (1,) * (array.ndim - 1))
        elif dtype == 3:
            raise CT2FormatError(f"{self.path}: variable {name!r} is int32, not a weight type")
        else:
            values = array.astype(np.float32)
        if shape is not None and tuple(values.shape) != tuple(shape):
            raise CT2FormatError(f"{self.path}: variable {name!r} has shape {list(values.shape)}, expected {list(shape)}")
        return torch.from_numpy(np.ascontiguousarray(values))

    def unused(self) -> list[str]:
        """Names neither read nor covered by a read alias / scale, excluding ignorable scalars."""
        covered = {self.target(n) for n in self.used} | self.used
        left = []
        for name in sorted(set(self.arrays) | set(self.aliases)):
            if name in covered or self.target(name) in covered:
                continue
            if self.arrays[self.target(name)].ndim == 0 and not int(self.arrays[self.target(name)]):
                continue  # an unset flag (alibi, scale_embeddings, ...): a feature Whisper does not use
            left.append(name)
        return left


def _layer_count(variables: CT2Variables, side: str) -> int:
    indices = {int(m.group(1)) for n in variables.arrays if (m := re.match(rf"{side}/layer_(\d+)/", n))}
    if indices != set(range(len(indices))) or not indices:
        raise CT2FormatError(f"{variables.path}: {side} layers {sorted(indices)} are not 0..n-1")
    return len(indices)


def _state_dict(v: CT2Variables, config: transformers.WhisperConfig) -> dict[str, torch.Tensor]:
    """transformers ``WhisperForConditionalGeneration`` keys -> float32 tensors (proj_out omitted if tied)."""
    d, state = config.d_model, {}

    def linear(hf: str, ct2: str, rows: int = d, cols: int = d) -> None:
        state[f"{hf}.weight"] = v.tensor(f"{ct2}/weight", (rows, cols))
        state[f"{hf}.bias"] = v.tensor(f"{ct2}/bias", (rows,))

    def norm(hf: str, ct2: str) -> None:
        state[f"{hf}.weight"] = v.tensor(f"{ct2}/gamma", (d,))
        state[f"{hf}.bias"] = v.tensor(f"{ct2}/beta", (d,))

    def fused(hf: str, names: tuple[str, ...], ct2: str) -> None:
        # CT2 concatenates q/k/v (or k/v) along the output rows; k_proj has no bias in Whisper, so
        # CT2 stores zeros there. A k bias shifts every score of one query equally: softmax drops it.
        weight = v.tensor(f"{ct2}/weight", (len(names) * d, d))
        bias = v.tensor(f"{ct2}/bias", (len(names) * d,))
        for i, name in enumerate(names):
            state[f"{hf}.{name}.weight"] = weight[i * d : (i + 1) * d].clone()
            if name != "k_proj":
                state[f"{hf}.{name}.bias"] = bias[i * d : (i + 1) * d].clone()

    def ffn(hf: str, ct2: str, width: int) -> None:
        linear(f"{hf}.fc1", f"{ct2}/ffn/linear_0", width, d)
        linear(f"{hf}.fc2", f"{ct2}/ffn/linear_1", d, width)
        norm(f"{hf}.final_layer_norm", f"{ct2}/ffn/layer_norm")

    enc = "model.encoder"
    state[f"{enc}.conv1.weight"] = v.tensor("encoder/conv1/weight", (d, config.num_mel_bins, 3))
    state[f"{enc}.conv1.bias"] = v.tensor("encoder/conv1/bias", (d,))
    state[f"{enc}.conv2.weight"] = v.tensor("encoder/conv2/weight", (d, d, 3))
    state[f"{enc}.conv2.bias"] = v.tensor("encoder/conv2/bias", (d,))
    state[f"{enc}.embed_positions.weight"] = v.tensor("encoder/position_encodings/encodings", (config.max_source_positions, d))
    norm(f"{enc}.layer_norm", "encoder/layer_norm")
    for i in range(config.encoder_layers):
        hf, ct2 = f"{enc}.layers.{i}", f"encoder/layer_{i}"
        fused(f"{hf}.self_attn", ("q_proj", "k_proj", "v_proj"), f"{ct2}/self_attention/linear_0")
        linear(f"{hf}.self_attn.out_proj", f"{ct2}/self_attention/linear_1")
        norm(f"{hf}.self_attn_layer_norm", f"{ct2}/self_attention/layer_norm")
        ffn(hf, ct2, config.encoder_ffn_dim)
    dec = "model.decoder"
    state[f"{dec}.embed_tokens.weight"] = v.tensor("decoder/embeddings/weight", (config.vocab_size, d))
    state[f"{dec}.embed_positions.weight"] = v.tensor("decoder/position_encodings/encodings", (config.max_target_positions, d))
    norm(f"{dec}.layer_norm", "decoder/layer_norm")
    for i in range(config.decoder_layers):
        hf, ct2 = f"{dec}.layers.{i}", f"decoder/layer_{i}"
        fused(f"{hf}.self_attn", ("q_proj", "k_proj", "v_proj"), f"{ct2}/self_attention/linear_0")
        linear(f"{hf}.self_attn.out_proj", f"{ct2}/self_attention/linear_1")
        norm(f"{hf}.self_attn_layer_norm", f"{ct2}/self_attention/layer_norm")
        linear(f"{hf}.encoder_attn.q_proj", f"{ct2}/attention/linear_0")
        fused(f"{hf}.encoder_attn", ("k_proj", "v_proj"), f"{ct2}/attention/linear_1")
        linear(f"{hf}.encoder_attn.out_proj", f"{ct2}/attention/linear_2")
        norm(f"{hf}.encoder_attn_layer_norm", f"{ct2}/attention/layer_norm")
        ffn(hf, ct2, config.decoder_ffn_dim)
    if "decoder/projection/bias" in v and v.tensor("decoder/projection/bias").any():
        raise CT2FormatError(f"{v.path}: decoder/projection/bias is non-zero; transformers' proj_out has no bias")
    projection = v.tensor("decoder/projection/weight", (config.vocab_size, d))
    if not config.tie_word_embeddings:
        state["proj_out.weight"] = projection
    return state


def _hf_config(v: CT2Variables, ct2_config: dict, ids: dict[str, int]) -> transformers.WhisperConfig:
    for name, expected in FIXED_SCALARS.items():
        if name in v and v.scalar(name) != expected:
            raise CT2FormatError(f"{v.path}: {name} is {v.scalar(name)}, transformers' Whisper needs {expected}")
    for name in RUNTIME_SCALARS:
        if name in v:
            v.scalar(name)
    conv1 = v.arrays[v.target("encoder/conv1/weight")].shape
    embeddings, projection = v.target("decoder/embeddings/weight"), v.target("decoder/projection/weight")
    tied = embeddings == projection or np.array_equal(v.arrays[embeddings], v.arrays[projection])
    d_model = conv1[0]
    heads = {side: v.scalar(f"{side}/num_heads") for side in ("encoder", "decoder")}
    for side, count in heads.items():
        if d_model % count:
            raise CT2FormatError(f"{v.path}: {side}/num_heads {count} does not divide d_model {d_model}")
    ffn = {side: v.arrays[v.target(f"{side}/layer_0/ffn/linear_0/weight")].shape[0] for side in heads}
    return transformers.WhisperConfig(
        vocab_size=v.arrays[embeddings].shape[0], num_mel_bins=conv1[1], d_model=d_model,
        encoder_layers=_layer_count(v, "encoder"), decoder_layers=_layer_count(v, "decoder"),
        encoder_attention_heads=heads["encoder"], decoder_attention_heads=heads["decoder"],
        encoder_ffn_dim=ffn["encoder"], decoder_ffn_dim=ffn["decoder"],
        max_source_positions=v.arrays[v.target("encoder/position_encodings/encodings")].shape[0],
        max_target_positions=v.arrays[v.target("decoder/position_encodings/encodings")].shape[0],
        pad_token_id=ids["<|endoftext|>"], bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|endoftext|>"],
        decoder_start_token_id=ids["<|startoftranscript|>"], tie_word_embeddings=tied,
        suppress_tokens=ct2_config.get("suppress_ids") or [], begin_suppress_tokens=ct2_config.get("suppress_ids_begin") or [],
    )


def _generation_config(
    config: transformers.WhisperConfig, ct2_config: dict, ids: dict[str, int]
) -> transformers.GenerationConfig:
    # OpenAI's English-only checkpoints have 51864 tokens, multilingual ones 51865+ (the same test
    # as transformers' convert_openai_to_hf). CT2's lang_ids cannot tell: tiny.en's lists 98 ids.
    multilingual = config.vocab_size >= 51865
    extra = {}
    if multilingual:
        tokens = {i: t for t, i in ids.items()}
        extra["lang_to_id"] = {tokens[i]: i for i in ct2_config.get("lang_ids") or [] if i in tokens}
        extra["task_to_id"] = {t: ids[f"<|{t}|>"] for t in ("transcribe", "translate") if f"<|{t}|>" in ids}
    return transformers.GenerationConfig(
        decoder_start_token_id=config.decoder_start_token_id, bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id, max_length=config.max_target_positions,
        suppress_tokens=config.suppress_tokens, begin_suppress_tokens=config.begin_suppress_tokens,
        alignment_heads=[list(h) for h in ct2_config.get("alignment_heads") or []],
        no_timestamps_token_id=ids["<|notimestamps|>"], prev_sot_token_id=ids.get("<|startofprev|>"),
        max_initial_timestamp_index=50, is_multilingual=multilingual, return_timestamps=False, **extra,
    )


def _read_vocabulary(ct2_dir: Path) -> list[str]:
    if (ct2_dir / "vocabulary.json").is_file():
        return json.loads((ct2_dir / "vocabulary.json").read_text(encoding="utf-8"))
    if (ct2_dir / "vocabulary.txt").is_file():
        return (ct2_dir / "vocabulary.txt").read_text(encoding="utf-8").split("\n")[:-1]
    raise CT2FormatError(f"{ct2_dir}: has neither vocabulary.txt nor vocabulary.json")


def _tokenizer(ct2_dir: Path, vocab_size: int) -> transformers.WhisperTokenizer:
    """tokenizer.json plus the vocabulary entries it lacks (timestamp tokens) as added tokens."""
    backend = Tokenizer.from_file(str(ct2_dir / "tokenizer.json"))
    vocabulary = _read_vocabulary(ct2_dir)
    if len(vocabulary) != vocab_size:
        raise CT2FormatError(f"{ct2_dir}: the vocabulary has {len(vocabulary)} tokens, model.bin's embeddings {vocab_size}")
    size = backend.get_vocab_size(with_added_tokens=True)
    for i in range(min(size, vocab_size)):
        if backend.id_to_token(i) != vocabulary[i]:
            raise CT2FormatError(
                f"{ct2_dir}: tokenizer.json token {i} is {backend.id_to_token(i)!r}, the vocabulary's {vocabulary[i]!r}"
            )
    # WhisperTokenizer takes the id after its last special token as the first timestamp
    # (tokenization_whisper.py), so every special token is listed, in id order, as OpenAI's are.
    added = backend.get_added_tokens_decoder()
    special = [added[i].content for i in sorted(added) if added[i].special]
    backend.add_tokens([AddedToken(t, special=False, normalized=False) for t in vocabulary[size:]])
    return transformers.WhisperTokenizer(tokenizer_object=backend, pad_token="<|endoftext|>", extra_special_tokens=special)


def _feature_extractor(ct2_dir: Path, mel_bins: int) -> transformers.WhisperFeatureExtractor:
    if (ct2_dir / "preprocessor_config.json").is_file():  # faster-whisper ships one for 128-mel models
        extractor = transformers.WhisperFeatureExtractor.from_pretrained(ct2_dir)
        if extractor.feature_size != mel_bins:
            raise CT2FormatError(
                f"{ct2_dir / 'preprocessor_config.json'}: feature_size {extractor.feature_size}, "
                f"but conv1 takes {mel_bins} mel bins"
            )
        return extractor
    return transformers.WhisperFeatureExtractor(feature_size=mel_bins)


def _check_against_model(state: dict[str, torch.Tensor], config: transformers.WhisperConfig, source: Path) -> None:
    """Keys and shapes must be exactly those of transformers' model (built on meta: no memory, no init)."""
    with torch.device("meta"):
        expected = transformers.WhisperForConditionalGeneration(config).state_dict()
    if config.tie_word_embeddings:
        expected.pop("proj_out.weight")
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CT2FormatError(f"{source}: conversion left missing {missing[:5]} / unexpected {unexpected[:5]} weights")
    for key, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise CT2FormatError(f"{source}: {key} has shape {list(tensor.shape)}, expected {list(expected[key].shape)}")


def convert_ct2_whisper(ct2_dir: Path, out_dir: Path, *, overwrite: bool = False) -> Path:
    """Converts a CTranslate2 Whisper directory into a transformers one; returns ``out_dir``.

    Everything is written into a temporary sibling directory that is renamed to ``out_dir`` at the
    end, so ``out_dir`` is either absent or complete. Quantised (int8/int16), float16 and bfloat16
    weights are all written as float32.

    Raises:
        FileNotFoundError: a required file is missing. FileExistsError: ``out_dir`` exists and
            ``overwrite`` is False. CT2FormatError: not a CT2 Whisper model, an unsupported binary
            version or dtype, a shape that does not fit (the message names the variable).
    """
    ct2_dir, out_dir = Path(ct2_dir), Path(out_dir)
    for name in REQUIRED_FILES:
        if not (ct2_dir / name).is_file():
            raise FileNotFoundError(f"{ct2_dir}: no {name}; a CTranslate2 Whisper directory has {', '.join(REQUIRED_FILES)}")
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} exists; pass overwrite=True to replace it")
    variables = CT2Variables(ct2_dir / "model.bin")
    ct2_config = json.loads((ct2_dir / "config.json").read_text(encoding="utf-8"))
    vocab_size = variables.arrays[variables.target("decoder/embeddings/weight")].shape[0]
    tokenizer = _tokenizer(ct2_dir, vocab_size)
    ids = {t: i for t, i in tokenizer.get_vocab().items() if t.startswith("<|")}
    for token in ("<|endoftext|>", "<|startoftranscript|>", "<|notimestamps|>"):
        if token not in ids:
            raise CT2FormatError(f"{ct2_dir / 'tokenizer.json'}: has no {token} token; is this a Whisper tokenizer?")
    config = _hf_config(variables, ct2_config, ids)
    tokenizer.model_max_length = config.max_target_positions
    state = _state_dict(variables, config)
    leftover = variables.unused()
    if leftover:
        raise CT2FormatError(f"{variables.path}: variables this converter does not map: {leftover[:8]}")
    _check_against_model(state, config, variables.path)
    log.info("converting %s (%s rev %d): %d encoder / %d decoder layers, d_model %d, vocab %d",
             ct2_dir, variables.spec, variables.revision, config.encoder_layers, config.decoder_layers,
             config.d_model, config.vocab_size)

    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        save_file(state, tmp / "model.safetensors", metadata={"format": "pt"})
        config.save_pretrained(tmp)
        _generation_config(config, ct2_config, ids).save_pretrained(tmp)
        _feature_extractor(ct2_dir, config.num_mel_bins).save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir
