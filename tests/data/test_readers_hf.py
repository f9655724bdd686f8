"""The optional `hf` reader (Hugging Face datasets: local folders and files, cached Hub ids, media
embedded as bytes); skipped where `datasets` is not installed."""

import io
import json
import os
import sys

import numpy as np
import pytest
import soundfile
from PIL import Image

from cotune.data.media import load_audio, load_image
from cotune.testing.readers import assert_counts, chat, gpt, human, png, read


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


def test_hf_parquet_llava_and_alpaca(tmp_path):
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


def png_bytes(colour) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (6, 5), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def wav_bytes(frequency: float) -> tuple[bytes, np.ndarray]:
    samples = (0.25 * np.sin(2 * np.pi * frequency * np.arange(1600) / 16000)).astype(np.float32)
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, 16000, format="WAV", subtype="FLOAT")
    return buffer.getvalue(), samples


def embedded_parquet(datasets, path, rows: int = 3):
    """The Hub's layout: data/train-00000-of-00001.parquet with PNG and WAV bytes inside (datasets
    Image and Audio features), a messages column with content parts, no files beside it."""
    colours = [(255, 0, 0), (0, 0, 255), (255, 0, 0)][:rows]
    waves = [wav_bytes(220.0 * (i + 1)) for i in range(rows)]
    user = [{"type": "image", "text": None}, {"type": "audio", "text": None}, {"type": "text", "text": "what colour and sound"}]
    features = datasets.Features({
        "messages": [{"role": datasets.Value("string"),
                      "content": [{"type": datasets.Value("string"), "text": datasets.Value("string")}]}],
        "images": datasets.Sequence(datasets.Image()), "audio": {"bytes": datasets.Value("binary"), "path": datasets.Value("string")},
    })
    table = datasets.Dataset.from_dict({
        "messages": [[{"role": "user", "content": user},
                      {"role": "assistant", "content": [{"type": "text", "text": f"red {i}"}]}] for i in range(rows)],
        "images": [[{"bytes": png_bytes(c), "path": f"img{i}.png"}] for i, c in enumerate(colours)],
        "audio": [{"bytes": data, "path": None} for data, _ in waves],
    }, features=features)
    # Audio typed by a storage cast, as on the Hub (encoding audio values would need torchcodec)
    table = table.cast_column("audio", datasets.Audio(sampling_rate=16000, decode=False))
    target = path / "data" / "train-00000-of-00001.parquet"
    target.parent.mkdir(parents=True)
    table.to_parquet(str(target))
    return colours, [samples for _, samples in waves]


def test_hf_embedded_png_and_wav_bytes_become_cached_files(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("COTUNE_CACHE", str(tmp_path / "cache"))
    colours, waves = embedded_parquet(datasets, tmp_path / "hub")
    samples, report = read("hf", tmp_path / "hub")
    assert report.total == 3 and not report.skipped
    assert samples[0].messages == chat(("user", "<image>\n<audio>\nwhat colour and sound"), ("assistant", "red 0"))
    for sample, colour, wave in zip(samples, colours, waves):
        (image,), (audio,) = sample.media["image"], sample.media["audio"]
        assert image.parent.parent == (tmp_path / "cache" / "media").resolve() and image.suffix == ".png"
        assert load_image(image, sample.id).getpixel((3, 2)) == colour
        np.testing.assert_allclose(load_audio(audio, sample.id, 16000), wave, atol=1e-6)
    # content-addressed: equal bytes share one file, and a second read writes nothing new
    assert samples[0].media["image"] == samples[2].media["image"] != samples[1].media["image"]
    files = sorted((tmp_path / "cache" / "media").rglob("*.*"))
    stamps = [os.stat(f).st_mtime_ns for f in files]
    again, _ = read("hf", tmp_path / "hub")
    assert [s.media for s in again] == [s.media for s in samples]
    assert sorted((tmp_path / "cache" / "media").rglob("*.*")) == files and [os.stat(f).st_mtime_ns for f in files] == stamps
    assert len(files) == 5  # two distinct images, three distinct clips


def test_hf_question_answer_and_texts_layouts(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("COTUNE_CACHE", str(tmp_path / "cache"))
    image = {"bytes": png_bytes((0, 255, 0)), "path": None}
    qa = datasets.Dataset.from_dict({"question": ["Q?", "", "Q2"], "answer": ["A", "A", ""], "image": [image, image, None]},
                                    features=datasets.Features({"question": datasets.Value("string"), "answer": datasets.Value("string"),
                                                                "image": datasets.Image()}))
    qa.to_parquet(str(tmp_path / "qa.parquet"))
    samples, report = read("hf", tmp_path / "qa.parquet")
    assert [s.messages for s in samples] == [chat(("user", "Q?"), ("assistant", "A"))]
    assert samples[0].media["image"][0].read_bytes() == image["bytes"]
    assert_counts(report, 1, {"missing_field": 1, "empty_answer": 1})

    cauldron = datasets.Dataset.from_dict({"texts": [[{"user": "U1", "assistant": "A1", "source": "x"},
                                                      {"user": "U2", "assistant": "A2", "source": "x"}]]})
    cauldron.to_parquet(str(tmp_path / "cauldron.parquet"))
    samples, _ = read("hf", tmp_path / "cauldron.parquet")
    assert samples[0].messages == chat(("user", "U1"), ("assistant", "A1"), ("user", "U2"), ("assistant", "A2"))

    datasets.Dataset.from_dict({"text": ["t"]}).to_parquet(str(tmp_path / "plain.parquet"))
    with pytest.raises(ValueError, match="no conversation columns .*question \\+ answer.*; columns: text"):
        read("hf", tmp_path / "plain.parquet")


def test_hf_hub_id_is_read_from_the_datasets_cache_only(tmp_path, monkeypatch):
    """A Hub id is found where load_dataset left it (<cache>/<owner>___<name>/<config>/<version>/<hash>);
    an id that is not cached is an error naming the cache, never a download."""
    datasets = pytest.importorskip("datasets")
    from datasets.packaged_modules.parquet.parquet import Parquet

    monkeypatch.setenv("COTUNE_CACHE", str(tmp_path / "cotune-cache"))
    embedded_parquet(datasets, tmp_path / "src", rows=2)
    source = str(tmp_path / "src" / "data" / "train-00000-of-00001.parquet")
    # Build the cache the way load_dataset's parquet builder does, under the names a Hub id gets.
    Parquet(cache_dir=str(tmp_path / "hf"), dataset_name="toy", data_files={"train": [source]}, hash="0123abcd").download_and_prepare()
    (tmp_path / "hf" / "toy").rename(tmp_path / "hf" / "me___toy")
    next((tmp_path / "hf" / "me___toy").glob("default-*")).rename(tmp_path / "hf" / "me___toy" / "default")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf")
    monkeypatch.chdir(tmp_path)  # "me/toy" must not exist as a local path

    samples, report = read("hf", "me/toy")
    assert [s.id for s in samples] == ["toy-0", "toy-1"] and report.total == 2
    assert samples[1].messages[-1].content == "red 1" and samples[1].media["image"][0].suffix == ".png"
    assert [s.id for s in read("hf", "me/toy/default")[0]] == ["toy-0", "toy-1"]  # owner/name/config
    with pytest.raises(ValueError, match="no split 'test' in the cached copy; splits: train"):
        read("hf", "me/toy", split="test")
    with pytest.raises(FileNotFoundError, match="not a local path, and the datasets cache .* holds no copy of it"):
        read("hf", "me/other")


def test_a_run_trains_on_a_hub_format_parquet_without_conversion(tiny_root, tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    from cotune.testing import corpus
    from cotune.config import load_config
    from cotune import load
    from cotune.train import Trainer

    monkeypatch.setenv("COTUNE_CACHE", str(tmp_path / "cache"))
    colours = [(255, 0, 0), (0, 0, 255), (0, 255, 0), (255, 255, 0)]
    rows = datasets.Dataset.from_dict(
        {"question": ["what colour is the image"] * 4, "answer": ["red", "blue", "green", "yellow"],
         "image": [{"bytes": png_bytes(c), "path": None} for c in colours]},
        features=datasets.Features({"question": datasets.Value("string"), "answer": datasets.Value("string"), "image": datasets.Image()}))
    (tmp_path / "hub" / "data").mkdir(parents=True)
    rows.to_parquet(str(tmp_path / "hub" / "data" / "train-00000-of-00001.parquet"))
    raw = corpus.run_config(tiny_root, tmp_path / "unused", max_steps=2)
    raw["data"]["train"] = [{"kind": "hf", "path": str(tmp_path / "hub")}]
    final = Trainer(load_config(data=raw), tmp_path / "run").run()
    report = json.loads((tmp_path / "run" / "data_report.json").read_text())
    assert report["kept"] == 4 and report["total"] == 4
    assert len(load(tmp_path / "run").trainable_state_dict()) > 0 and (final / "trainable.safetensors").is_file()
