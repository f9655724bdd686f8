"""``cotune eval`` / ``cotune predict`` end to end on a tiny trained run: one prediction line per
evaluated sample, metrics recomputable from predictions.jsonl, seeded subsets, prompts identical to
the training rendering minus the answer, counted skips and one-line errors."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace

import pytest

from cotune.config import load_config
from cotune.data.readers import READERS
from cotune.data.report import DatasetReport
from cotune.data.templates import IGNORE_INDEX, encode_prompt, encode_sample
from cotune.eval import METRICS, evaluate_run, extract_answer, predict_samples
from cotune.eval.runner import dataset_config
from cotune.eval.tasks import TASKS
from cotune.model import build_model, save_model
from cotune.model.data_spec import data_spec_from_model
from cotune.rundir import RunDir
from cotune.testing import corpus, tiny
from cotune.testing.commands import cli, read_predictions
from cotune.testing.tiny import CHATML


@pytest.fixture(scope="module")
def loaded(trained_run):
    return RunDir(trained_run).load()


@pytest.fixture(scope="module")
def sqa(tmp_path_factory):
    """ScienceQA with a test split of 7 problems: 101's image is corrupt, 102's is missing."""
    root = corpus.write_scienceqa(tmp_path_factory.mktemp("sqa"), n_image=4, n_text=3, corrupt=("101",))
    (root / "images" / "train" / "102" / "image.png").unlink()
    pids = sorted(json.loads((root / "problems.json").read_text()))
    (root / "pid_splits.json").write_text(json.dumps({"train": pids, "test": pids}))
    return root


QUESTIONS = ["what color is the shape?", "is there a circle?", "what shape is in the image?", "is the shape red?", "what is it?"]


def easyvqa(root, answers=None, n=10):
    """easy-VQA test split of ``n`` questions over 3 images; answers ``red`` unless given."""
    answers = answers or ["red"] * n
    return corpus.write_easyvqa(root, "test", [[QUESTIONS[i % 5], answers[i], i % 3] for i in range(n)])


def test_scienceqa_eval_writes_one_line_per_sample_and_recomputable_metrics(trained_run, sqa, tmp_path, capsys):
    code, out, _err = cli(capsys, "eval", str(trained_run), "--dataset", f"scienceqa:{sqa}", "--out", str(tmp_path / "out"),
                          "--batch-size", "3", "--max-new-tokens", "6")
    assert code == 0
    records, metrics = read_predictions(tmp_path / "out"), json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert len(records) == metrics["evaluated"] == 5
    assert metrics["skipped"] == {"missing_media": 1, "unreadable_media": 1} and metrics["records"] == 7
    assert {r["id"] for r in records} == {"100", "103", "104", "105", "106"}
    problems = json.loads((sqa / "problems.json").read_text())
    for record in records:
        problem = problems[record["id"]]
        extraction = extract_answer(record["prediction"], problem["choices"])
        assert (record["choice"], record["rule"], record["target"]) == (extraction.index, extraction.rule, problem["answer"])
        assert record["correct"] == (record["choice"] == problem["answer"])
        assert record["references"] == ["AB"[problem["answer"]]] and record["question"].endswith("Response:")
    # The independent scorer over the same predictions gives the same breakdown.
    again = METRICS.get("scienceqa")(problems, {r["id"]: r["choice"] for r in records}, [r["id"] for r in records])
    columns = ("NAT", "SOC", "LAN", "TXT", "IMG", "NO", "G1-6", "G7-12", "Avg")
    assert {c: metrics[c] for c in columns} == {c: again[c] for c in columns} and metrics["counts"] == again["counts"]
    assert metrics["accuracy"] == again["Avg"] == round(100 * sum(r["correct"] for r in records) / 5, 2)
    assert metrics["rules"] == {rule: Counter(r["rule"] for r in records)[rule] for rule in metrics["rules"]}
    assert metrics["fallbacks"] == sum(r["rule"] != "answer-is" for r in records)
    assert metrics["run_dir"] == str(trained_run) and metrics["dataset"] == "scienceqa" and metrics["template"] == "lavin"
    header = out.splitlines()[0].split()
    assert header == list(columns) and "5 evaluated of 6 selected, 7 records" in out and "missing_media 1" in out


def test_open_ended_accuracy_is_the_metric_of_predictions_jsonl(trained_run, loaded, tmp_path, capsys):
    model, config = loaded
    first = evaluate_run(model, config, f"easyvqa:{easyvqa(tmp_path / 'a')}", max_new_tokens=5, out=tmp_path / "first")
    predictions = [r["prediction"] for r in read_predictions(tmp_path / "first")]
    assert first["evaluated"] == 10 and all(predictions)
    # Same questions and images; every other reference is the model's own answer, so accuracy is 50%.
    answers = [p if i % 2 == 0 else "zzz" for i, p in enumerate(predictions)]
    code, out, _ = cli(capsys, "eval", str(trained_run), "--dataset", f"easyvqa:{easyvqa(tmp_path / 'b', answers)}",
                       "--max-new-tokens", "5", "--out", str(tmp_path / "second"))
    assert code == 0
    records, metrics = read_predictions(tmp_path / "second"), json.loads((tmp_path / "second" / "metrics.json").read_text())
    assert [r["prediction"] for r in records] == predictions
    assert [r["correct"] for r in records] == [i % 2 == 0 for i in range(10)]
    recomputed = METRICS.get("vqa")([r["answer"] for r in records], [r["references"] for r in records])
    assert metrics["accuracy"] == recomputed["accuracy"] == metrics["exact_match"] == 50.0
    assert out.splitlines()[0].split() == ["accuracy", "50.0"]


def test_textqa_scores_text_match_over_metadata_answers(loaded, tmp_path):
    model, config = loaded
    questions = [{"instruction": f"what colour is the {w}", "output": "red", "answers": ["red"]} for w in ("circle", "square", "sound")]
    (tmp_path / "qa.json").write_text(json.dumps(questions))
    first = evaluate_run(model, config, f"textqa:{tmp_path / 'qa.json'}", max_new_tokens=4, out=tmp_path / "a")
    predictions = [r["prediction"] for r in read_predictions(tmp_path / "a")]
    assert first["evaluated"] == 3 and first["accuracy"] == 0.0 and all(predictions)
    for question, prediction in zip(questions, predictions):
        question["answers"] = [prediction]  # the reply contains itself
    (tmp_path / "qa.json").write_text(json.dumps(questions))
    second = evaluate_run(model, config, f"textqa:{tmp_path / 'qa.json'}", max_new_tokens=4, out=tmp_path / "b")
    assert second["accuracy"] == 100.0 and second["metric"] == "text-match" and second["correct"] == 3


def test_limit_and_sample_seed_pick_deterministic_subsets(trained_run, loaded, tmp_path, capsys):
    model, config = loaded
    data = f"easyvqa:{easyvqa(tmp_path / 'd')}"
    runs = {}
    for name, seed in (("a", 1), ("b", 1), ("c", 2), ("first", None)):
        evaluate_run(model, config, data, limit=4, sample_seed=seed, max_new_tokens=3, out=tmp_path / name)
        runs[name] = read_predictions(tmp_path / name)
    ids = {name: [r["id"] for r in records] for name, records in runs.items()}
    assert runs["a"] == runs["b"] and len(ids["a"]) == 4
    assert set(ids["a"]) != set(ids["c"]) and len(ids["c"]) == 4
    assert ids["first"] == ["test-0", "test-1", "test-2", "test-3"]
    code, _, _ = cli(capsys, "eval", str(trained_run), "--dataset", data, "--limit", "4", "--sample-seed", "1",
                     "--max-new-tokens", "3", "--out", str(tmp_path / "cli"))
    assert code == 0 and [r["id"] for r in read_predictions(tmp_path / "cli")] == ids["a"]
    assert json.loads((tmp_path / "cli" / "metrics.json").read_text())["selected"] == 4


def training_prompt(sample, spec) -> list[int]:
    """The ids before the first supervised token of ``sample`` as training renders it."""
    encoded = encode_sample(sample, spec.tokenizer, spec.slots(), spec.template, spec.system_prompt, spec.max_length)
    first = next(i for i, label in enumerate(encoded.labels) if label != IGNORE_INDEX)
    return encoded.input_ids[:first]


@pytest.mark.parametrize("template", ["lavin", "chat"])
def test_prompts_are_the_training_rendering_without_the_answer(loaded, sqa, tmp_path, template):
    model, config = loaded
    data = config.data
    if template == "chat":
        model.tokenizer.chat_template = CHATML
        data = replace(data, template="chat", system_prompt="Answer briefly.")
    try:
        spec = data_spec_from_model(model, data)
        assert spec.template == template
        samples = []
        for dataset in (dataset_config(TASKS.get("scienceqa"), sqa, "test", config), replace(config.data.train[1], split="test")):
            samples += list(READERS.get(dataset.kind)(dataset, DatasetReport("x")))
        expected = {s.id: training_prompt(s, spec) for s in samples}
        assert len(expected) == 14 and len(set(map(tuple, expected.values()))) > 2
        report = DatasetReport("x")
        predicted = list(predict_samples(model, spec, samples, batch_size=4, max_new_tokens=2, report=report))
        assert len(predicted) == 13 and dict(report.skipped) == {"unreadable_media": 1}
        for prediction in predicted:
            assert prediction.prompt_ids == expected[prediction.sample.id], prediction.sample.id
        if template == "chat":
            assert spec.tokenizer.decode(predicted[0].prompt_ids).startswith("<|im_start|>system\nAnswer briefly.<|im_end|>")
            assert spec.tokenizer.decode(predicted[0].prompt_ids).endswith("<|im_start|>assistant\n")
    finally:
        model.tokenizer.chat_template = None


def test_multi_turn_prompt_keeps_history_and_drops_only_the_last_answer(loaded):
    from cotune.data.schema import Message, Sample

    model, config = loaded
    spec = data_spec_from_model(model, config.data)
    turns = [Message("user", "what shape"), Message("assistant", "a circle"), Message("user", "what colour"), Message("assistant", "red")]
    ids = encode_prompt(Sample("s", turns), spec.tokenizer, spec.slots(), spec.template, spec.system_prompt)
    full = encode_sample(Sample("s", turns), spec.tokenizer, spec.slots(), spec.template, spec.system_prompt, 512)
    assert full.input_ids[: len(ids)] == ids
    assert full.labels[len(ids):] == full.input_ids[len(ids):]  # only the last answer (and EOS) follows the prompt
    assert any(label != IGNORE_INDEX for label in full.labels[: len(ids)])  # the first answer is history in the prompt
    assert ids == encode_prompt(Sample("s", turns[:3]), spec.tokenizer, spec.slots(), spec.template, spec.system_prompt)


@pytest.fixture(scope="module")
def audio_run(tiny_root, tmp_path_factory):
    """A saved tiny LLaMA + Whisper model (random trainables), for the audio tasks."""
    encoders = {"audio": {"type": "whisper", "name_or_path": str(tiny.save_encoder(tiny_root, "whisper")), "reduce": "all",
                          "connector": {"type": "audio-pool", "stride": 4}}}
    config = load_config(data=tiny.model_config(tiny.save_llm(tiny_root), encoders, trainable="adapter", adapter={"type": "mm_adapter"}))
    model = build_model(config)
    tiny.randomise_trainables(model, seed=3)
    return save_model(model, config, tmp_path_factory.mktemp("audio-run") / "model")


def test_audio_tasks_and_a_metric_without_accuracy(audio_run, trained_run, tmp_path, capsys):
    root = corpus.write_audioqa(tmp_path, n=3)
    (root / "test.csv").write_text("file_name,caption_1,caption_2\nclip0.wav,a loud tone,a beep\nclip1.wav,a quiet tone,a hum\n")
    code, out, _ = cli(capsys, "eval", str(audio_run), "--dataset", f"audiocaps:{root}", "--out", str(tmp_path / "caps"), "--max-new-tokens", "4")
    assert code == 0
    records, metrics = read_predictions(tmp_path / "caps"), json.loads((tmp_path / "caps" / "metrics.json").read_text())
    assert len(records) == metrics["evaluated"] == 4 and "accuracy" not in metrics
    assert all(r["correct"] is None for r in records) and records[0]["references"] == ["a loud tone", "a beep"]
    recomputed = METRICS.get("caption")([r["answer"] for r in records], [r["references"] for r in records])
    assert {k: metrics[k] for k in recomputed} == recomputed and "CIDEr-D" in out
    code, _, _ = cli(capsys, "eval", str(audio_run), "--dataset", f"audioqa:{root}", "--split", "train", "--out", str(tmp_path / "aqa"))
    metrics = json.loads((tmp_path / "aqa" / "metrics.json").read_text())
    assert code == 0 and metrics["evaluated"] == 3 and metrics["yes_no_count"] == 3 and metrics["accuracy"] is not None
    # The image run has no audio encoder: every sample is a counted skip, not a crash.
    code, out, _ = cli(capsys, "eval", str(trained_run), "--dataset", f"audioqa:{root}", "--split", "train", "--out", str(tmp_path / "none"))
    metrics = json.loads((tmp_path / "none" / "metrics.json").read_text())
    assert code == 1 and metrics["evaluated"] == 0 and metrics["skipped"] == {"unsupported_media": 3} and metrics["accuracy"] is None
    assert (tmp_path / "none" / "predictions.jsonl").read_text() == "" and "nothing evaluated" in out


def test_predict_dataset_and_single_item(trained_run, tmp_path, capsys):
    data = easyvqa(tmp_path / "d", n=4)
    code, _, _ = cli(capsys, "eval", str(trained_run), "--dataset", f"easyvqa:{data}", "--max-new-tokens", "4", "--out", str(tmp_path / "e"))
    expected = {r["id"]: r["prediction"] for r in read_predictions(tmp_path / "e")}
    code, _, _ = cli(capsys, "predict", str(trained_run), "--data", f"easyvqa:{data}", "--max-new-tokens", "4",
                     "--out", str(tmp_path / "p.jsonl"))
    records = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert code == 0 and {r["id"]: r["prediction"] for r in records} == expected
    assert records[0] == {"id": "test-0", "prompt": QUESTIONS[0], "prediction": expected["test-0"], "reference": "red"}
    # One image + prompt: the same prompt as that dataset sample gives the same answer.
    code, out, _ = cli(capsys, "predict", str(trained_run), "--image", str(data / "test" / "images" / "0.png"),
                       "--prompt", QUESTIONS[0], "--max-new-tokens", "4")
    assert code == 0 and json.loads(out) == {"id": "input", "prompt": QUESTIONS[0], "prediction": expected["test-0"]}
    code, out, _ = cli(capsys, "predict", str(trained_run), "--data", f"easyvqa:{data}", "--prompt", "what is it?", "--limit", "2",
                       "--max-new-tokens", "2")
    assert code == 0 and [json.loads(line)["prompt"] for line in out.splitlines()] == ["what is it?"] * 2
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    code, _, err = cli(capsys, "predict", str(trained_run), "--image", str(tmp_path / "bad.png"), "--prompt", "what")
    # Media decode needs the model's processor, so this one fails after the weights load (progress bars above).
    assert code == 2 and err.splitlines()[-1].startswith("cotune: error: unreadable_media: input: ")


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["eval", "{tmp}", "--dataset", "easyvqa:{tmp}", "--out", "{tmp}/o"], "holds neither a saved model"),
        (["eval", "{tmp}/nowhere", "--dataset", "easyvqa:{tmp}", "--out", "{tmp}/o"], "no such directory"),
        (["eval", "{run}", "--dataset", "sciqa:{tmp}", "--out", "{tmp}/o"],
         "--dataset: unknown evaluation dataset 'sciqa' (did you mean 'scienceqa'?); valid: audiocaps, audioqa, easyvqa, jsonl, llava, "
         "mme, scienceqa, textqa"),
        (["eval", "{run}", "--dataset", "scienceqa:{sqa}", "--split", "dev", "--out", "{tmp}/o"],
         "split: 'dev' is not in {sqa}/pid_splits.json; available: test, train"),
        (["eval", "{run}", "--dataset", "easyvqa:{sqa}", "--out", "{tmp}/o"], "not an easy-VQA data directory"),
        (["eval", "{run}", "--dataset", "scienceqa:{sqa}", "--limit", "0", "--out", "{tmp}/o"], "--limit: must be >= 1"),
        (["predict", "{run}"], "needs --data NAME[:PATH], or --prompt TEXT"),
        (["predict", "{run}", "--data", "nope:{tmp}"], "--data: unknown dataset 'nope'; NAME is a task (audiocaps, "),
        (["chat", "{tmp}"], "holds neither a saved model"),
    ],
)
def test_bad_input_is_one_line_exit_2(trained_run, sqa, tmp_path, capsys, args, fragment):
    fill = {"tmp": tmp_path, "run": trained_run, "sqa": sqa}
    code, out, err = cli(capsys, *[a.format(**fill) for a in args])
    assert code == 2 and out == ""
    assert err.startswith("cotune: error: ") and err.count("\n") == 1 and fragment.format(**fill) in err


def test_dataset_without_path_uses_the_zoo_or_says_how(trained_run, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COTUNE_CACHE", str(tmp_path / "cache"))
    code, _, err = cli(capsys, "eval", str(trained_run), "--dataset", "llava", "--out", str(tmp_path / "o"))
    assert code == 2 and "pass --dataset llava:PATH" in err
    code, _, err = cli(capsys, "eval", str(trained_run), "--dataset", "easyvqa", "--out", str(tmp_path / "o"))
    assert code == 2 and "cotune zoo fetch easy-vqa" in err and "pass --dataset easyvqa:PATH" in err
    # predict --data takes NAME[:PATH] by the same rule.
    code, _, err = cli(capsys, "predict", str(trained_run), "--data", "easyvqa")
    assert code == 2 and "cotune zoo fetch easy-vqa" in err and "pass --data easyvqa:PATH" in err
    zoo_copy = tmp_path / "cache" / "zoo" / "easy-vqa"
    easyvqa(zoo_copy, n=3)
    (zoo_copy / "zoo.json").write_text("{}")  # what a fetch leaves: the copy is there
    runs = [cli(capsys, *command, "--max-new-tokens", "2")[:2] for command in (
        ["eval", str(trained_run), "--dataset", "easyvqa", "--out", str(tmp_path / "e")],
        ["predict", str(trained_run), "--data", "easyvqa"], ["predict", str(trained_run), "--data", f"easyvqa:{zoo_copy}"])]
    assert [code for code, _ in runs] == [0, 0, 0] and runs[1][1] == runs[2][1]
    assert [json.loads(line)["prediction"] for line in runs[1][1].splitlines()] == [
        r["prediction"] for r in read_predictions(tmp_path / "e")]


def test_unreadable_image_is_a_counted_skip_mid_batch(loaded, tmp_path):
    model, config = loaded
    data = easyvqa(tmp_path / "d", n=6)
    (data / "test" / "images" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    metrics = evaluate_run(model, config, f"easyvqa:{data}", batch_size=4, max_new_tokens=2, out=tmp_path / "o")
    records = read_predictions(tmp_path / "o")
    assert metrics["evaluated"] == len(records) == 4 and metrics["skipped"] == {"unreadable_media": 2}
    assert [r["id"] for r in records] == ["test-0", "test-2", "test-3", "test-5"]
    assert metrics["skip_examples"]["unreadable_media"][0].startswith("test-1: ")
