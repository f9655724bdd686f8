"""Small real-format datasets written on the fly (ScienceQA layout, Alpaca JSON, audio-QA CSV + WAV, easy-VQA),
full run configs over them and the tiny backbones of :mod:`cotune.testing.tiny`, and ScienceQA problems and
predictions whose scores are computed by hand."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from cotune.testing import tiny


def write_scienceqa(root, n_image=3, n_text=2, corrupt=()):
    """ScienceQA's native layout under ``root`` (problems.json, pid_splits.json, images/train/<pid>/image.png):
    ``n_image`` problems with an image, then ``n_text`` without; pids in ``corrupt`` get a broken PNG."""
    problems, split = {}, []
    for i in range(n_image + n_text):
        pid = str(100 + i)
        has_image = i < n_image
        problems[pid] = {
            "question": "What shape is it?", "choices": ["circle", "square"], "answer": i % 2, "hint": "" if has_image else "A hint.",
            "image": "image.png" if has_image else None, "lecture": "Shapes.", "solution": "Look.",
            "subject": "natural science", "grade": "grade3", "split": "train",
        }
        split.append(pid)
        if has_image:
            folder = root / "images" / "train" / pid
            folder.mkdir(parents=True)
            if pid in corrupt:
                (folder / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
            else:
                Image.new("RGB", (40, 36), (40 * i, 90, 200)).save(folder / "image.png")
    (root / "problems.json").write_text(json.dumps(problems))
    (root / "pid_splits.json").write_text(json.dumps({"train": split, "test": []}))
    return root


def write_alpaca(path, n=4):
    """An Alpaca JSON file of ``n`` records at ``path``."""
    path.write_text(json.dumps([{"instruction": "the answer is", "input": "", "output": f"yes {i}"} for i in range(n)]))
    return path


def write_audioqa(root, n=3):
    """An audio-QA folder under ``root``: ``n`` sine-tone WAVs and train.csv (file_name, QuestionText, answer)."""
    import soundfile  # the audio extra

    rows = ["file_name,QuestionText,answer"]
    for i in range(n):
        t = np.arange(8000 + 1000 * i) / 16000
        soundfile.write(root / f"clip{i}.wav", 0.3 * np.sin(2 * np.pi * 440 * (i + 1) * t), 16000)
        rows.append(f"clip{i}.wav,is it loud,{'yes' if i % 2 else 'no'}")
    (root / "train.csv").write_text("\n".join(rows) + "\n")
    return root


def run_config(tiny_root, data_root, **train):
    """A full raw config: tiny LLaMA + CLIP (MM-Adapters, LaVIN neck) on ScienceQA + Alpaca."""
    (data_root / "sqa").mkdir(parents=True, exist_ok=True)
    sqa = write_scienceqa(data_root / "sqa", n_image=4, n_text=4) if not (data_root / "sqa" / "problems.json").exists() else data_root / "sqa"
    alpaca = write_alpaca(data_root / "alpaca.json", n=8)
    encoders = {"image": {
        "type": "clip", "name_or_path": str(tiny.save_encoder(tiny_root, "clip")), "layers": [1, 2, 3], "reduce": "cls",
        "trainable": "adapter", "adapter": {"type": "mm_adapter", "dropout": 0.0}, "connector": {"type": "lavin-neck", "hidden": 16},
    }}
    raw = tiny.model_config(tiny.save_llm(tiny_root), encoders, trainable="adapter", adapter={"type": "mm_adapter", "dropout": 0.0})
    raw["data"] = {"train": [{"kind": "scienceqa", "path": str(sqa)}, {"kind": "alpaca", "path": str(alpaca)}],
                   "template": "lavin", "batch_size": 2}
    raw["train"] = {"lr": 1e-2, "epochs": 2, "warmup_steps": 2, "checkpoint_every": 2, "log_every": 1, **train}
    return raw


def llava_lora_config(tiny_root, data_root, **train):
    """:func:`run_config` made LLaVA-style: CLIP patches of layer -2, mlp2x-gelu, LoRA (r 4) in the
    LLM and in CLIP, the tokenizer's template (LaVIN's layout: the tiny tokenizer has none)."""
    lora = {"type": "lora", "lora_r": 4, "lora_dropout": 0.0}
    raw = run_config(tiny_root, data_root, **train)
    raw["model"]["llm"].update(trainable="lora", adapter=lora)
    raw["model"]["encoders"]["image"].update(layers=[-2], reduce="patches", trainable="lora", adapter=lora,
                                             connector={"type": "mlp2x-gelu"})
    raw["data"]["template"] = "auto"
    return raw


def write_easyvqa(root, split="train", records=None):
    """easy-VQA's shipped layout under ``root/easy_vqa/data``: ``<split>/questions.json`` holding
    ``records`` ([question, answer, image_id]) and a 64x64 PNG for every integer image id in them."""
    data = root / "easy_vqa" / "data"
    if records is None:
        records = [["what color is the shape?", "red", 0], ["is there a circle?", "no", 0], ["what shape is in the image?", "circle", 1]]
    images = data / split / "images"
    images.mkdir(parents=True, exist_ok=True)
    ids = {r[2] for r in records if isinstance(r, list) and len(r) == 3 and type(r[2]) is int and r[2] >= 0}
    for image_id in sorted(ids):
        Image.new("RGB", (64, 64), (200, 40 * image_id % 256, 30)).save(images / f"{image_id}.png")
    (data / split / "questions.json").write_text(json.dumps(records))
    (data / "answers.txt").write_text("circle\nred\nyes\nno\n")
    return data


# --- ScienceQA scoring: problems and predictions whose breakdown is computed by hand ------------------------------


def scienceqa_problem(subject: str, grade: int, hint: str, image: str | None, answer: int, n_choices: int = 3) -> dict:
    """One problems.json entry of the test split (choices c0, c1, ...)."""
    return {
        "question": "q", "choices": [f"c{i}" for i in range(n_choices)], "answer": answer, "hint": hint,
        "image": image, "subject": subject, "grade": f"grade{grade}", "lecture": "", "solution": "", "split": "test",
    }


#: Six test problems covering TXT only, IMG only, TXT+IMG, NO, both grade bands, and one train problem.
SCIENCEQA_PROBLEMS = {
    "p1": scienceqa_problem("natural science", 3, "ctx", "image.png", 0),   # TXT IMG G1-6
    "p2": scienceqa_problem("natural science", 8, "", "image.png", 1),      # IMG G7-12
    "p3": scienceqa_problem("social science", 5, "ctx", None, 0),           # TXT G1-6
    "p4": scienceqa_problem("language science", 10, "", None, 2),           # NO G7-12
    "p5": scienceqa_problem("language science", 1, "", None, 0),            # NO G1-6
    "p6": scienceqa_problem("social science", 12, "more", "x.png", 1),      # TXT IMG G7-12
    "p7": scienceqa_problem("natural science", 2, "", None, 0),             # train split, not scored
}
SCIENCEQA_TEST = ["p1", "p2", "p3", "p4", "p5", "p6"]
# p1, p3, p6 right; p2 wrong; p4 unparsed (-1); p5 without a prediction.
SCIENCEQA_PREDICTIONS = {"p1": 0, "p2": 0, "p3": 0, "p4": -1, "p6": 1}
