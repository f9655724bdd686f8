"""For every reader and both templates, the supervised tokens decode to exactly the answers plus
the end marker (EOS for lavin, the chat template's end-of-turn for chat)."""

import json

import numpy as np
import pytest
import soundfile
from PIL import Image

from cotune.config import DatasetConfig
from cotune.data.readers import READERS
from cotune.data.report import DatasetReport
from cotune.data.templates import IGNORE_INDEX, MediaSlot, encode_sample
from cotune.testing import tiny

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def write_fixtures(root):
    Image.new("RGB", (8, 8), "red").save(root / "a.png")
    soundfile.write(root / "a.wav", np.zeros(1600, dtype=np.float32) + 0.1, 16000)
    (root / "llava.json").write_text(json.dumps([{"id": "l1", "image": "a.png", "conversations": [
        {"from": "human", "value": "<image>\nwhat colour"}, {"from": "gpt", "value": "red"},
        {"from": "human", "value": "and the shape"}, {"from": "gpt", "value": "a square"}]}]))
    (root / "alpaca.json").write_text(json.dumps([{"instruction": "what is the answer", "input": "yes or no", "output": "yes"}]))
    (root / "chat.jsonl").write_text(json.dumps({"id": "j1", "audio": "a.wav", "messages": [
        {"role": "user", "content": "is it loud"}, {"role": "assistant", "content": "no"}]}) + "\n")
    (root / "train.csv").write_text("file_name,QuestionText,answer\na.wav,is it loud,quiet\n")
    (root / "captions.csv").write_text("file_name,caption_1,caption_2\na.wav,a quiet sound,the sound of nothing\n")
    sqa = root / "sqa"
    (sqa / "images" / "train" / "7").mkdir(parents=True)
    Image.new("RGB", (8, 8), "blue").save(sqa / "images" / "train" / "7" / "image.png")
    (sqa / "problems.json").write_text(json.dumps({"7": {
        "question": "which colour", "choices": ["red", "blue"], "answer": 1, "hint": "", "image": "image.png",
        "lecture": "colours", "solution": "it is blue", "subject": "natural science", "grade": "grade2", "split": "train"}}))
    (sqa / "pid_splits.json").write_text(json.dumps({"train": ["7"]}))


CASES = [
    ("llava", "llava.json", "train", ["red", "a square"]),
    ("alpaca", "alpaca.json", "train", ["yes"]),
    ("jsonl", "chat.jsonl", "train", ["no"]),
    ("audioqa", ".", "train", ["quiet"]),
    ("audiocaps", "captions.csv", "train", ["a quiet sound", "the sound of nothing"]),
    ("scienceqa", "sqa", "train", ["The answer is B. BECAUSE: colours it is blue"]),
]


@pytest.mark.parametrize("template", ["lavin", "chat"])
@pytest.mark.parametrize("kind, relative, split, answers", CASES)
def test_supervised_tokens_are_the_answers(tmp_path, kind, relative, split, answers, template):
    write_fixtures(tmp_path)
    tok = tiny.make_tokenizer()
    tok.add_tokens(["<image>", "<audio>", "<|im_start|>", "<|im_end|>"], special_tokens=True)
    tok.chat_template = CHATML
    slots = {k: MediaSlot(k, f"<{k}>", (tok.convert_tokens_to_ids(f"<{k}>"),) * 2) for k in ("image", "audio")}
    report = DatasetReport(kind)
    samples = list(READERS.get(kind)(DatasetConfig(kind=kind, path=str(tmp_path / relative), split=split), report))
    assert report.skipped == {} and samples
    end = tok.eos_token if template == "lavin" else "<|im_end|>"
    decoded = []
    for sample in samples:
        encoded = encode_sample(sample, tok, slots, template, None, 512)
        runs, current = [], []
        for token, label in zip(encoded.input_ids, encoded.labels):
            if label != IGNORE_INDEX:
                current.append(token)
            elif current:
                runs.append(tok.decode(current))
                current = []
        if current:
            runs.append(tok.decode(current))
        decoded.extend(runs)
    assert decoded == [answer + end for answer in answers]
