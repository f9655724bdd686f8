"""End to end: readers -> template -> media -> mixture loader -> model, plus `cotune data check`."""

import json

import pytest
import torch
import yaml

from cotune.cli.main import main
from cotune.config import load_config
from cotune.data.dataset import DataError
from cotune.data.loader import build_train_data
from cotune.data.report import DataReport
from cotune.model import build_model
from cotune.model.data_spec import data_spec_from_model
from cotune.testing import tiny
from cotune.testing.corpus import write_alpaca, write_audioqa, write_scienceqa


def model_and_config(tiny_root, data):
    encoders = {
        "image": {"type": "clip", "name_or_path": str(tiny.save_encoder(tiny_root, "clip")), "layers": [1, 2, 3], "reduce": "cls",
                  "trainable": "adapter", "adapter": {"type": "mm_adapter"}, "connector": {"type": "lavin-neck", "hidden": 16}},
        "audio": {"type": "whisper", "name_or_path": str(tiny.save_encoder(tiny_root, "whisper")), "reduce": "all",
                  "connector": {"type": "audio-pool", "stride": 4}},
    }
    raw = tiny.model_config(tiny.save_llm(tiny_root), encoders, trainable="adapter", adapter={"type": "mm_adapter"})
    raw["data"] = data
    config = load_config(data=raw)
    return build_model(config), config, raw


@pytest.fixture
def corpus(tmp_path):
    (tmp_path / "sqa").mkdir()
    (tmp_path / "aqa").mkdir()
    return {
        "scienceqa": write_scienceqa(tmp_path / "sqa", corrupt=("101",)),
        "alpaca": write_alpaca(tmp_path / "alpaca.json"),
        "audioqa": write_audioqa(tmp_path / "aqa"),
    }


def data_section(corpus, **extra):
    return {
        "train": [
            {"kind": "scienceqa", "path": str(corpus["scienceqa"]), "split": "train"},
            {"kind": "alpaca", "path": str(corpus["alpaca"])},
            {"kind": "audioqa", "path": str(corpus["audioqa"]), "split": "train"},
        ],
        "template": "lavin", "batch_size": 3, "max_skip_fraction": 0.5, **extra,
    }


def test_mixed_batches_train_and_labels_are_exactly_the_answers(tiny_root, corpus):
    model, config, _ = model_and_config(tiny_root, data_section(corpus))
    spec = data_spec_from_model(model, config.data)
    assert {e.name: e.tokens for e in spec.encoders} == {"image": 3, "audio": 4}
    train = build_train_data(config.data, spec, seed=0)
    tok = model.tokenizer

    sqa = train.mixture.datasets[0]
    for index in range(len(sqa)):
        ids, labels = sqa.tokens(index)
        answer = tok.decode(ids[labels != -100].tolist())
        assert answer.startswith("The answer is ") and answer.endswith(" BECAUSE: Shapes. Look." + tok.eos_token)
    alpaca_ids, alpaca_labels = train.mixture.datasets[1].tokens(2)
    assert tok.decode(alpaca_ids[alpaca_labels != -100].tolist()) == "yes 2" + tok.eos_token

    model.train()
    seen_kinds = set()
    for batch in train.loader:
        train.report.record_batch(batch)
        if not batch["sample_ids"]:
            continue
        out = model(batch["input_ids"], batch["attention_mask"], labels=batch["labels"], media=batch["media"], sample_ids=batch["sample_ids"])
        assert torch.isfinite(out.loss) and int(out.num_tokens) == batch["num_supervised"]
        out.loss.backward()
        seen_kinds.update(out.modality_index.tolist())
    assert seen_kinds == {0, 1, 2}  # text, image and audio samples all trained
    report = train.report.as_dict()
    sqa_report = report["datasets"]["scienceqa:train"]
    assert sqa_report["skipped"] == {"unreadable_media": 1} and sqa_report["kept"] == 4 and sqa_report["total"] == 5
    assert report["total"] == 5 + 4 + 3 and report["kept"] == 4 + 4 + 3


def test_workers_give_the_same_batches(tiny_root, corpus):
    model, config, _ = model_and_config(tiny_root, data_section(corpus))
    spec = data_spec_from_model(model, config.data)
    single = build_train_data(config.data, spec, seed=1)
    parallel = build_train_data(config.data.__class__(**{**config.data.__dict__, "num_workers": 2}), spec, seed=1)
    for a, b in zip(single.loader, parallel.loader, strict=True):
        assert a["sample_ids"] == b["sample_ids"] and torch.equal(a["input_ids"], b["input_ids"])
        assert a["media"].keys() == b["media"].keys()
        for name in a["media"]:
            assert torch.equal(a["media"][name], b["media"][name])


def test_too_many_bad_samples_stop_before_training(tiny_root, corpus, tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps([{"instruction": "q", "output": ""}] * 3 + [{"instruction": "q", "output": "a"}]))
    data = data_section(corpus, max_skip_fraction=0.01)
    data["train"] = [{"kind": "alpaca", "path": str(broken)}]
    model, config, _ = model_and_config(tiny_root, data)
    with pytest.raises(DataError, match=r"3 of 4 records unusable .*empty_answer.*broken.json record 0"):
        build_train_data(config.data, data_spec_from_model(model, config.data), seed=0, report=DataReport())


def test_data_check_command(tiny_root, corpus, tmp_path, capsys):
    _, _, raw = model_and_config(tiny_root, data_section(corpus))
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["data", "check", str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["total"], report["kept"], report["skipped"]) == (12, 11, {"unreadable_media": 1})
    # The same file checked alone, with a strict threshold, fails the check.
    assert main(["data", "check", str(corpus["scienceqa"]), "--kind", "scienceqa", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["skipped"] == {"unreadable_media": 1} and report["kept"] == 4
    assert main(["data", "check", str(corpus["scienceqa"])]) == 2
    assert "needs --kind" in capsys.readouterr().err


def test_frozen_encoder_features_come_from_the_cache(tiny_root, corpus, tmp_path):
    cache_dir = tmp_path / "features"
    model, config, _ = model_and_config(tiny_root, data_section(corpus, feature_cache=str(cache_dir)))
    spec = data_spec_from_model(model, config.data)
    # The image encoder trains adapters (not cacheable); the frozen audio encoder is cached.
    train = build_train_data(config.data, spec, seed=0, model=model)
    caches = train.mixture.datasets[2].feature_caches
    assert list(caches) == ["audio"]
    entries = sorted(cache_dir.rglob("*.safetensors"))
    assert len(entries) == 3  # one per distinct clip

    plain = build_train_data(config.data.__class__(**{**config.data.__dict__, "feature_cache": None}), spec, seed=0)
    model.eval()
    compared = 0
    with torch.no_grad():
        for cached, raw in zip(train.loader, plain.loader, strict=True):
            assert cached["sample_ids"] == raw["sample_ids"]
            if "audio" not in raw["media"]:
                continue
            assert "audio" not in cached["media"] and cached["features"]["audio"].shape[0] == raw["media"]["audio"].shape[0]
            common = dict(attention_mask=raw["attention_mask"], labels=raw["labels"])
            media_without_audio = {k: v for k, v in raw["media"].items() if k != "audio"}
            a = model(cached["input_ids"], media=media_without_audio, features=cached["features"], **common)
            b = model(raw["input_ids"], media=raw["media"], **common)
            torch.testing.assert_close(a.logits, b.logits, atol=1e-5, rtol=1e-5)
            compared += 1
    assert compared > 0

    # A copy of a clip under another name hits the same entry; other encoder settings use another folder.
    from cotune.data.feature_cache import FeatureCache, encoder_cache_key

    key = encoder_cache_key(config.model.encoders["audio"], config.data)
    copy = tmp_path / "copy.wav"
    copy.write_bytes((corpus["audioqa"] / "clip1.wav").read_bytes())
    assert FeatureCache(cache_dir, key).get(copy, "copy").shape[-1] == 24
    other = load_config(data=config_dict_with(config, "model.encoders.audio.layers=[-2]"))
    assert encoder_cache_key(other.model.encoders["audio"], other.data) != key


def config_dict_with(config, override):
    from cotune.config import apply_overrides, to_dict

    return apply_overrides(to_dict(config), [override])
