"""`cotune demo` end to end on tiny saved backbones, through the same code paths as the real demo
(zoo names replaced by local paths, easy-VQA by a tiny corpus in its shipped layout)."""

from __future__ import annotations

import csv
import json
import shutil
from dataclasses import replace

import pytest
import yaml
import torch
from safetensors.torch import save_file

from cotune import load
from cotune.config import ConfigError
from cotune.demo import DemoPlan, run_demo
from cotune.encoders.mobilenet import MobileNetV2
from cotune.testing import tiny
from cotune.testing.corpus import write_easyvqa

SHAPES, COLOURS = ("circle", "rectangle", "triangle"), ("red", "blue", "green")


def _tiny_mobilenet(root):
    path = root / "mobilenet"
    if not path.is_dir():
        path.mkdir()
        torch.manual_seed(0)
        net = MobileNetV2(width_mult=0.35)
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path / "model.safetensors"))
        (path / "config.json").write_text('{"width_mult": 0.35, "image_size": 64}')
    return path


def _easyvqa(root):
    """Per image: its colour and shape asked openly, and four yes/no questions (both answers, both
    polarities), so every yes/no question has a description for "describe, then answer"."""
    images = list(enumerate((s, c) for s in SHAPES for c in COLOURS))
    rows = []
    for i, (s, c) in images:
        other = SHAPES[(SHAPES.index(s) + 1) % len(SHAPES)]
        rows += [["what color is the shape?", c, i], ["what shape is this?", s, i], [f"is there a {s}?", "yes", i],
                 [f"is there a {other}?", "no", i], [f"is there not a {s}?", "no", i], [f"is there not a {other}?", "yes", i]]
    # The test split without one affirmative "no": affirmative questions' majority answer is "yes",
    # so their "no" questions are the ones the wording does not predict (negated ones tie: none).
    records = {"train": rows, "test": [r for r in rows if r != ["is there a rectangle?", "no", 0]]}
    for split, rows in records.items():
        data = write_easyvqa(root, split, rows)
    return data


@pytest.fixture(scope="module")
def demo_run(tiny_root, tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    overrides = [
        f"model.llm.name_or_path={tiny.save_llm(tiny_root)}",
        f"model.encoders.image.name_or_path={_tiny_mobilenet(tiny_root)}",
        f"model.encoders.audio.name_or_path={tiny.save_encoder(tiny_root, 'whisper')}",
        "model.encoders.audio.crop_seconds=0.5",  # the tiny Whisper's window is 1 s
        "model.encoders.image.connector.hidden=16",
        "model.encoders.audio.connector.hidden=16",
        "model.llm.dtype=float32",
        "train.precision=fp32",
        "balance.every_k=2",
    ]
    plan = DemoPlan(steps=4, batch_size=4, image_questions=24, audio_clips=80, audio_test_clips=None, eval_image=6, eval_audio=8, eval_text=5,
                    eval_counter_prior=5, before_image=4, before_audio=4, max_new_tokens=3, text_max_new_tokens=4, eval_batch_size=4)
    out = root / "out"
    result = run_demo(out, plan, easyvqa=_easyvqa(root), overrides=overrides)
    return result, plan, overrides, root


def test_demo_writes_metrics_run_and_report(demo_run):
    result, plan, _, _ = demo_run
    out, metrics = result.out, result.metrics
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk == metrics
    for key in ("image_accuracy", "audio_accuracy", "text_accuracy", "text_accuracy_base"):
        assert 0.0 <= metrics[key] <= 100.0, key
    assert metrics["questions"] == {"image": 6, "audio": 8, "text": 5, "image_counter_prior": 5}
    # Every reported accuracy is the fraction of correct lines in its predictions file.
    for key, name in (("image", "image_accuracy"), ("audio", "audio_accuracy"), ("text", "text_accuracy")):
        lines = [json.loads(line) for line in (out / "eval-after" / key / "predictions.jsonl").read_text().splitlines()]
        assert len(lines) == metrics["questions"][key]
        assert metrics[name] == pytest.approx(100.0 * sum(r["correct"] for r in lines) / len(lines), abs=0.01)
    # Media reliance: accuracy with shuffled media is that of the ablated predictions, the drop the difference.
    for key in ("image", "audio"):
        shuffled = [json.loads(line) for line in (out / "eval-after" / key / "ablate-shuffle" / "predictions.jsonl").read_text().splitlines()]
        own = [json.loads(line) for line in (out / "eval-after" / key / "predictions.jsonl").read_text().splitlines()]
        assert [r["id"] for r in shuffled] == [r["id"] for r in own] and [r["question"] for r in shuffled] == [r["question"] for r in own]
        accuracy = round(100.0 * sum(r["correct"] for r in shuffled) / len(shuffled), 2)
        group = metrics["grounding"][key]["all"]
        assert (group["own"], group["shuffled"]) == (metrics[f"{key}_accuracy"], accuracy) == (metrics[f"{key}_accuracy"], metrics[f"{key}_shuffled_accuracy"])
        assert metrics[f"{key}_shuffle_drop"] == round(group["own"] - group["shuffled"], 2)
        yes_no = [r for r in own if r["references"][0] in ("yes", "no")]
        assert metrics["grounding"][key]["yes_no"]["count"] == len(yes_no)
    # The LoRA is gated by media: text questions are answered by the untuned LLM, word for word.
    before, after = ([json.loads(line)["prediction"] for line in (out / phase / "text" / "predictions.jsonl").read_text().splitlines()]
                     for phase in ("eval-before", "eval-after"))
    assert before == after and metrics["text_accuracy"] == metrics["text_accuracy_base"]
    # easy-VQA's questions against the wording, in a set of their own: 5 of the 8 affirmative "no"
    # questions of the test split; the target reads this set, not the few of them among the 6 above.
    counter = [json.loads(line) for line in (out / "eval-after" / "image-counter-prior" / "predictions.jsonl").read_text().splitlines()]
    assert len(counter) == 5 and all(r["references"] == ["no"] and "not" not in r["question"] for r in counter)
    own = round(100.0 * sum(r["correct"] for r in counter) / len(counter), 2)
    assert metrics["grounding"]["image"]["counter_prior_set"] == {"own": own, "shuffled": None, "drop": None, "count": 5}
    assert metrics["image_counter_prior_accuracy"] == own and metrics["questions"]["image_counter_prior"] == 5
    assert not (out / "eval-before" / "image-counter-prior").exists()  # the untuned model is not asked them
    assert sorted(metrics["targets"]) == sorted(
        ["image_accuracy", "image_counter_prior_accuracy", "audio_accuracy", "audio_yes_no_accuracy", "text_retention",
         "image_shuffle_drop", "audio_shuffle_drop", "total_minutes"])
    assert sorted(p.name for p in (out / "report").glob("*.png"))  # report figures were drawn
    assert metrics["targets"]["text_retention"]["target"] == 95.0
    timed = metrics["targets"]["total_minutes"]  # a first run is judged on its whole time
    assert timed["met"] is (timed["value"] <= 15.0) and timed["value"] == pytest.approx(metrics["total_seconds"] / 60, abs=0.01)
    assert len(result.examples) == 9


def test_demo_run_is_an_ordinary_run_directory(demo_run):
    result, plan, overrides, _ = demo_run
    run = result.out / "run"
    assert (run / "config.yaml").is_file() and (run / "model").is_dir() and (run / "metrics.jsonl").is_file()
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert max(steps) == plan.steps
    model = load(run)
    # Training moved the adapters away from their zero initialisation.
    ups = [v for k, v in model.trainable_state_dict().items() if k.endswith("up.weight")]
    assert ups and any(float(v.abs().max()) > 0 for v in ups)
    # The mixture held image and audio data, per set its open questions and its yes/no questions by
    # answer (and, for easy-VQA, polarity) as separate entries; the entries that found samples
    # partition each set (the data report counts the rest of the set as filtered). No text-only
    # samples: the LoRA is gated by media, they would train nothing.
    report = json.loads((run / "data_report.json").read_text())["datasets"]
    assert not any(name.startswith("textqa") for name in report)
    for name in ("easyvqa", "audioqa"):
        entries = {k: v for k, v in report.items() if k.startswith(f"{name}:")}
        assert f"{name}:open" in entries and any(k.startswith((f"{name}:yes", f"{name}:no")) for k in entries)
        total = entries[f"{name}:open"]["total"] + entries[f"{name}:open"]["filtered"]
        assert sum(v["kept"] for v in entries.values()) == total
        assert all(v["total"] + v["filtered"] == total for v in entries.values())


def test_demo_rerun_reuses_the_run_and_reproduces_the_scores(demo_run):
    result, plan, overrides, root = demo_run
    weights = result.out / "run" / "model"
    stamp = {p.name: p.stat().st_mtime_ns for p in weights.iterdir()}
    again = run_demo(result.out, plan, easyvqa=root / "easy_vqa" / "data", overrides=overrides)
    assert {p.name: p.stat().st_mtime_ns for p in weights.iterdir()} == stamp  # not trained again
    for key in ("image_accuracy", "audio_accuracy", "text_accuracy", "text_accuracy_base"):
        assert again.metrics[key] == result.metrics[key]
    assert again.metrics["targets"]["total_minutes"]["met"] is None  # a rerun's time is not the first run's
    # Another seed in the same folder would reuse this seed's data and run: refused before any work.
    with pytest.raises(ConfigError, match="seed 0"):
        run_demo(result.out, replace(plan, seed=1), easyvqa=root / "easy_vqa" / "data", overrides=overrides)



def test_a_new_sound_test_split_evaluates_the_untuned_model_again(demo_run, tmp_path):
    """A demo folder whose sound test split is written anew (another size here) keeps its run, and
    its untuned evaluation, which read the old split, runs again; the same settings reuse it."""
    result, plan, overrides, root = demo_run
    out = tmp_path / "copy"
    shutil.copytree(result.out, out)
    before = out / "eval-before" / "summary.json"
    weights = {p.name: p.stat().st_mtime_ns for p in (out / "run" / "model").iterdir()}
    stamp = before.stat().st_mtime_ns
    run_demo(out, plan, easyvqa=root / "easy_vqa" / "data", overrides=overrides)
    assert before.stat().st_mtime_ns == stamp
    run_demo(out, replace(plan, audio_test_clips=24), easyvqa=root / "easy_vqa" / "data", overrides=overrides)
    assert before.stat().st_mtime_ns != stamp
    assert {p.name: p.stat().st_mtime_ns for p in (out / "run" / "model").iterdir()} == weights
    with open(out / "data" / "audioqa" / "test.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 24


def test_demo_seed_changes_training_and_keeps_the_evaluation(demo_run, tmp_path):
    result, plan, overrides, root = demo_run
    other = run_demo(tmp_path / "seed1", replace(plan, seed=1), easyvqa=root / "easy_vqa" / "data", overrides=overrides)

    def digest(out):
        return json.loads((out / "data" / "audioqa" / "synth.json").read_text())["sha256"]

    def ids(out, key):
        return [json.loads(line)["id"] for line in (out / "eval-after" / key / "predictions.jsonl").read_text().splitlines()]

    assert digest(other.out) != digest(result.out)  # the synthetic sound set (its training split)
    # The same questions for every seed: easy-VQA's subsets and the sound QA test split.
    for key in ("image", "audio", "image-counter-prior"):
        assert ids(other.out, key) == ids(result.out, key)
    assert (other.out / "data" / "audioqa" / "test.csv").read_bytes() == (result.out / "data" / "audioqa" / "test.csv").read_bytes()
    first, second = (json.loads((out / "run" / "metrics.jsonl").read_text().splitlines()[0]) for out in (result.out, other.out))
    assert first["loss"] != second["loss"]  # the first batch and the initialisation
    assert yaml.safe_load((other.out / "run" / "config.yaml").read_text())["seed"] == 1


def test_demo_table_shows_each_group_and_the_counter_prior_set(demo_run):
    from cotune.cli.demo import format_grounding

    metrics = demo_run[0].metrics
    lines = format_grounding(metrics).splitlines()
    group = metrics["grounding"]["image"]["all"]
    row = next(line for line in lines if line.startswith("easy-VQA: all questions"))
    assert row.split()[-4:] == [f"{group['own']:.1f}", f"{group['shuffled']:.1f}", f"{group['drop']:.1f}", str(group["count"])]
    row = next(line for line in lines if line.startswith("easy-VQA: yes/no against the wording, own set"))
    assert row.split()[-4:] == [f"{metrics['image_counter_prior_accuracy']:.1f}", "n/a", "n/a", "5"]
    assert not any(line.startswith("sound QA: yes/no against the wording") for line in lines)


def test_every_seed_is_tested_on_the_same_sound_clips(tmp_path):
    from cotune.demo.pipeline import synthesise

    def files(folder, split):
        sound = folder / "data" / "audioqa"
        return (sound / f"{split}.csv").read_bytes(), {p.name: p.read_bytes() for p in sorted((sound / "audio").glob(f"{split}-*.wav"))}

    plan = DemoPlan(audio_clips=60, audio_test_clips=None, seed=3)
    synthesise(tmp_path / "a", plan)
    synthesise(tmp_path / "b", replace(plan, seed=4))
    assert files(tmp_path / "a", "test") == files(tmp_path / "b", "test")  # the evaluation's seed, not the run's
    assert files(tmp_path / "a", "train")[0] != files(tmp_path / "b", "train")[0]
    # Another evaluation seed: the test split is written anew, the training split stays byte for byte.
    train, test = files(tmp_path / "a", "train"), files(tmp_path / "a", "test")
    summaries = synthesise(tmp_path / "a", replace(plan, eval_seed=1))
    assert summaries["audioqa"]["test_seed"] == 1 and summaries["audioqa"]["seed"] == 3
    assert files(tmp_path / "a", "train") == train and files(tmp_path / "a", "test")[0] != test[0]
    again = synthesise(tmp_path / "a", replace(plan, eval_seed=1))  # the same settings: reused
    assert again == summaries
    # A test split of its own size: written anew, with that many questions; training split unchanged.
    summaries = synthesise(tmp_path / "a", replace(plan, eval_seed=1, audio_test_clips=36))
    assert summaries["audioqa"]["splits"] == {"train": 48, "test": 36} and summaries["audioqa"]["test_count"] == 36
    assert files(tmp_path / "a", "train") == train and len(files(tmp_path / "a", "test")[1]) == 36
