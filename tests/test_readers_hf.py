"""The optional `hf` reader (local Hugging Face datasets); skipped where `datasets` is not installed."""

import sys
from collections import Counter

import pytest
from PIL import Image

from test_readers import assert_counts, chat, gpt, human, png, read


def test_hf_without_datasets_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(ImportError, match=r"pip install 'cotune\[hf-datasets\]'"):
        read("hf", tmp_path)


def test_hf_reader(tmp_path):
    datasets = pytest.importorskip("datasets")
    image = png(tmp_path / "ds" / "i.png")
    user, answer = {"role": "user", "content": "<image>\nQ"}, {"role": "assistant", "content": "A"}
    rows = {
        "id": ["a", "b", "c", "d", "a"],
        "messages": [[user, answer], [user, answer], [user, {"role": "assistant", "content": ""}], [user, answer], [user, answer]],
        "images": [["i.png"], ["missing.png"], ["i.png"], [], ["i.png"]],
    }
    split = datasets.Dataset.from_dict(rows)
    datasets.DatasetDict({"train": split}).save_to_disk(str(tmp_path / "ds"))
    samples, report = read("hf", tmp_path / "ds")
    assert [s.id for s in samples] == ["a"]
    assert samples[0].messages == chat(("user", "<image>\nQ"), ("assistant", "A"))
    assert samples[0].media == {"image": [image.resolve()]}
    assert_counts(report, 1, {"missing_media": 1, "empty_answer": 1, "marker_mismatch": 1, "malformed_record": 1})
    with pytest.raises(ValueError, match="no split 'val'; splits: train"):
        read("hf", tmp_path / "ds", split="val")
    samples, report = read("hf", tmp_path / "ds", limit=2)
    assert len(samples) == 1 and report.total == 2


def test_hf_parquet_llava_alpaca_and_embedded_bytes(tmp_path):
    datasets = pytest.importorskip("datasets")
    image = png(tmp_path / "data" / "i.png")
    llava = datasets.Dataset.from_dict({"conversations": [[human("<image>\nQ"), gpt("A")]], "image": ["i.png"]})
    llava.to_parquet(str(tmp_path / "data" / "train-00000-of-00001.parquet"))
    samples, _ = read("hf", tmp_path / "data")
    assert samples[0].id == "data-0" and samples[0].media == {"image": [image.resolve()]}
    assert samples[0].messages == chat(("user", "<image>\nQ"), ("assistant", "A"))

    alpaca = datasets.Dataset.from_dict({"instruction": ["Add.", "X"], "input": ["1, 2", None], "output": ["3", ""]})
    alpaca.to_parquet(str(tmp_path / "alpaca.parquet"))
    samples, report = read("hf", tmp_path / "alpaca.parquet")
    assert samples[0].messages == chat(("user", "Add.\n\n1, 2"), ("assistant", "3"))
    assert_counts(report, 1, {"empty_answer": 1})

    features = datasets.Features({"image": datasets.Image(), "instruction": datasets.Value("string"), "output": datasets.Value("string")})
    cells = [{"bytes": image.read_bytes(), "path": None}, {"bytes": None, "path": str(image)}]
    embedded = datasets.Dataset.from_dict({"image": cells, "instruction": ["Q", "Q"], "output": ["A", "A"]}, features=features)
    embedded.to_parquet(str(tmp_path / "embedded.parquet"))
    samples, report = read("hf", tmp_path / "embedded.parquet")
    assert [s.media for s in samples] == [{"image": [image.resolve()]}]  # an absolute path inside media_root
    assert report.skipped == Counter({"embedded_media": 1})
    with pytest.raises(ValueError, match="no parquet/arrow file for split 'test'"):
        read("hf", tmp_path / "data", split="test")


def test_hf_single_dataset_folder_and_arrow_file(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = {"messages": [[{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]]}
    datasets.Dataset.from_dict(rows).save_to_disk(str(tmp_path / "one"))
    samples, _ = read("hf", tmp_path / "one", split="ignored")
    assert [s.id for s in samples] == ["one-0"] and samples[0].messages == chat(("user", "Q"), ("assistant", "A"))
    arrow = next((tmp_path / "one").glob("*.arrow"))
    samples, report = read("hf", arrow)
    assert len(samples) == 1 and report.total == 1
