"""Media reliance: the shuffle and blank ablations, the breakdown by answer type and wording prior,
and ``cotune eval --ablate / --ablations`` on a tiny trained run, checked against an evaluation of
a dataset whose files were permuted by hand."""

from __future__ import annotations

import json
import random
import shutil
import numpy as np
import pytest
from PIL import Image

from cotune.config import ConfigError
from cotune.data.media import load_audio, load_image
from cotune.data.schema import Message, Sample
from cotune.eval import evaluate_run
from cotune.eval.ablation import ablate, derangement
from cotune.eval.breakdown import breakdown, polarity, reliance
from cotune.eval.runner import counter_prior_set, load_eval_set
from cotune.rundir import RunDir
from cotune.testing import corpus
from cotune.testing.commands import cli, read_predictions


def _sample(i: int, image: str | None = None, audio: str | None = None, question: str = "q?") -> Sample:
    media = {}
    if image:
        media["image"] = [image]
    if audio:
        media["audio"] = [audio]
    return Sample(f"s{i}", [Message("user", question), Message("assistant", "a")], media)


@pytest.mark.parametrize("seed", range(5))
def test_derangement_moves_every_key_when_it_can(seed):
    keys = [k for k in "aabbbcccdddde"]  # no key holds more than half of the items
    order = derangement(keys, random.Random(seed))
    assert sorted(order) == list(range(len(keys)))
    assert all(keys[source] != keys[i] for i, source in enumerate(order))
    assert order == derangement(keys, random.Random(seed))


def test_derangement_with_a_dominant_key_keeps_only_what_it_must():
    keys = ["a"] * 6 + ["b", "c"]
    order = derangement(keys, random.Random(0))
    assert sorted(order) == list(range(8))
    # Only two sources differ from "a", so at most four positions can change; all of them do.
    assert sum(keys[s] != keys[i] for i, s in enumerate(order)) == 4


def test_shuffle_gives_every_sample_other_media_of_its_kind_and_keeps_the_text():
    samples = [_sample(i, image=f"img{i % 4}.png", audio=f"a{i}.wav" if i % 2 else None, question=f"q{i}?") for i in range(12)]
    samples.append(_sample(99, question="text only"))
    result = ablate(samples, "shuffle", seed=3)
    assert result.changed == 12 and result.unchanged == 0
    for before, after in zip(samples, result.samples):
        assert after.id == before.id and after.messages == before.messages
        assert set(after.media) == set(before.media)
        for kind in before.media:
            assert after.media[kind] != before.media[kind]
    for kind in ("image", "audio"):  # the same files, only moved
        assert sorted(p for s in samples for p in s.media.get(kind, [])) == sorted(p for s in result.samples for p in s.media.get(kind, []))
    assert [s.media for s in ablate(samples, "shuffle", seed=3).samples] == [s.media for s in result.samples]
    assert [s.media for s in ablate(samples, "shuffle", seed=4).samples] != [s.media for s in result.samples]


def test_shuffle_counts_samples_it_cannot_change_and_refuses_text_only_sets():
    result = ablate([_sample(i, image="same.png") for i in range(3)], "shuffle")
    assert (result.changed, result.unchanged) == (0, 3)
    with pytest.raises(ConfigError, match="no media"):
        ablate([_sample(0)], "shuffle")
    with pytest.raises(ConfigError, match="unknown ablation 'rotate'"):
        ablate([_sample(0, image="x.png")], "rotate")


def test_blank_media_are_a_uniform_image_and_silence(tmp_path):
    samples = [_sample(0, image="a.png", audio="a.wav"), _sample(1, image="b.png")]
    result = ablate(samples, "blank", workdir=tmp_path)
    assert result.changed == 2
    image = np.asarray(load_image(result.samples[0].media["image"][0], "s0"))
    assert image.min() == image.max() == 128
    audio = load_audio(result.samples[0].media["audio"][0], "s0", target_rate=16000)
    assert audio.shape == (16000,) and not audio.any()
    assert result.samples[1].media["image"] == result.samples[0].media["image"] and "audio" not in result.samples[1].media


def _record(i, question, answer, prediction):
    return {"id": f"r{i}", "question": question, "references": [answer], "answer": prediction, "correct": prediction == answer}


def test_breakdown_counts_answer_types_balance_and_the_wording_prior():
    rows = [
        # negated questions: 3 of 4 are "yes" (prior yes); affirmative: 2 of 3 are "no" (prior no)
        ("is there not a red shape?", "yes", "yes"), ("is there not a circle?", "yes", "yes"),
        ("is there no blue shape?", "yes", "no"), ("isn't it a square?", "no", "yes"),
        ("is there a red shape?", "no", "no"), ("is there a circle?", "no", "no"), ("is it green?", "yes", "no"),
        ("what color is the shape?", "red", "red"), ("what shape is it?", "circle", "square"),
    ]
    records = [_record(i, *row) for i, row in enumerate(rows)]
    metadata = {f"r{i}": {"question_type": "yes_no" if i < 7 else ("color" if i == 7 else "shape")} for i in range(9)}
    part = breakdown(records, metadata)
    assert part["by_answer_type"] == {"yes_no": {"accuracy": 57.14, "count": 7}, "open": {"accuracy": 50.0, "count": 2}}
    assert part["by_question_type"]["color"] == {"accuracy": 100.0, "count": 1}
    # yes: 2 of 4 right, no: 2 of 3 right
    assert part["yes_no_balanced_accuracy"] == round((50.0 + 200 / 3) / 2, 2)
    prior = part["wording_prior"]
    assert prior["majority"] == {"affirmative": "no", "negated": "yes"}
    assert prior["accuracy"] == round(500 / 7, 2)  # 5 of the 7 follow their polarity's majority
    assert prior["follows_prior"] == {"accuracy": 80.0, "count": 5}
    assert prior["counter_prior"] == {"accuracy": 0.0, "count": 2}
    assert [polarity(q) for q in ("Is there not a dog?", "isn't it?", "is there no cat?", "is it noisy?")] == [
        "negated", "negated", "negated", "affirmative"]


def test_reliance_is_own_minus_ablated_per_group():
    own_rows = [("is there a cat?", "no", "no"), ("is there a dog?", "yes", "yes"), ("what is it?", "cat", "cat")]
    ablated_rows = [("is there a cat?", "no", "no"), ("is there a dog?", "yes", "no"), ("what is it?", "cat", "dog")]
    own = {"accuracy": 100.0, "evaluated": 3, "breakdown": breakdown([_record(i, *r) for i, r in enumerate(own_rows)])}
    other = {"accuracy": 33.33, "evaluated": 3, "breakdown": breakdown([_record(i, *r) for i, r in enumerate(ablated_rows)])}
    gaps = reliance(own, other)
    assert gaps["all"] == {"own": 100.0, "ablated": 33.33, "gap": 66.67, "count": 3}
    assert gaps["open"]["gap"] == 100.0 and gaps["yes_no"]["gap"] == 50.0 and gaps["yes_no_balanced"]["ablated"] == 50.0


QUESTIONS = ["what color is the shape?", "is there not a circle?", "what shape is in the image?", "is there a red shape?"]
ANSWERS = ["red", "yes", "circle", "no", "blue", "yes", "square", "no", "red", "no", "circle", "no"]  # one counters the prior


def _easyvqa(root, n=12, images=4):
    records = [[QUESTIONS[i % 4], ANSWERS[i], i % images] for i in range(n)]
    data = corpus.write_easyvqa(root, "test", records)
    for image_id in range(images):  # distinct images, so a shuffle changes what the model sees
        Image.new("RGB", (64, 64), tuple(int(v) for v in np.random.default_rng(image_id).integers(0, 255, 3))).save(
            data / "test" / "images" / f"{image_id}.png")
    return data, records


def test_counter_prior_set_is_the_breakdowns_counter_prior_group_of_the_whole_set(trained_run, tmp_path):
    rng = random.Random(3)
    # Negated questions mostly "yes", affirmative ones mostly "no" (easy-VQA's prior), open ones mixed in.
    rows = []
    for i in range(60):
        kind = rng.choice(("negated", "affirmative", "open"))
        if kind == "open":
            rows.append(["what color is the shape?", rng.choice(("red", "blue")), i % 5])
        else:
            likely = "yes" if kind == "negated" else "no"
            answer = likely if rng.random() < 0.75 else ("no" if likely == "yes" else "yes")
            rows.append(["is there not a red shape?" if kind == "negated" else "is there a red shape?", answer, i % 5])
    data = corpus.write_easyvqa(tmp_path, "test", rows)
    config = RunDir(trained_run).config()
    full = load_eval_set(config, f"easyvqa:{data}", "test")
    counters = counter_prior_set(full)
    by_hand = {f"test-{i}" for i, (q, a, _) in enumerate(rows)
               if (polarity(q) == "negated" and a == "no") or (q == "is there a red shape?" and a == "yes")}
    assert 5 < len(by_hand) < 30 and {s.id for s in counters.samples} == by_hand
    # The breakdown of any answers to the whole set puts exactly these questions in counter_prior.
    records = [_record(i, s.metadata["question"], s.metadata["answer"], "yes")
               for i, s in enumerate(full.samples)]
    prior = breakdown(records)["wording_prior"]
    assert prior["counter_prior"]["count"] == len(by_hand)
    # ``limit`` of them, chosen as evaluation subsets are (seeded, in dataset order); the majority is
    # the whole set's, not the subset's.
    chosen = counter_prior_set(full, limit=4, sample_seed=11)
    again = counter_prior_set(full, limit=4, sample_seed=11)
    ids = [s.id for s in chosen.samples]
    assert len(ids) == 4 and set(ids) <= by_hand and ids == [s.id for s in again.samples]
    assert ids == sorted(ids, key=lambda i: int(i.split("-")[1])) and (chosen.limit, chosen.sample_seed) == (4, 11)
    assert [s.id for s in counter_prior_set(full, limit=4, sample_seed=12).samples] != ids or len(by_hand) == 4


def test_ablations_equal_an_evaluation_of_the_files_permuted_by_hand(trained_run, tmp_path, capsys):
    model, config = RunDir(trained_run).load()
    data, records = _easyvqa(tmp_path / "own")
    metrics = evaluate_run(model, config, f"easyvqa:{data}", max_new_tokens=4, batch_size=5, out=tmp_path / "eval",
                           ablations=("shuffle", "blank"), ablation_seed=7)
    plain = evaluate_run(model, config, f"easyvqa:{data}", max_new_tokens=4, batch_size=5, out=tmp_path / "plain")
    # Own-media answers are those of a plain evaluation; the ablated runs are written beside them.
    assert read_predictions(tmp_path / "eval") == read_predictions(tmp_path / "plain")
    assert metrics["accuracy"] == plain["accuracy"] and metrics["breakdown"] == plain["breakdown"]
    shuffled = json.loads((tmp_path / "eval" / "ablate-shuffle" / "metrics.json").read_text())
    assert shuffled["ablation"] == {"kind": "shuffle", "seed": 7, "changed": 12, "unchanged": 0}
    # The same shuffle done by hand: a copy of the dataset whose question i names the image that
    # the ablation gave sample i.
    samples = load_eval_set(config, f"easyvqa:{data}").samples
    moved = ablate(samples, "shuffle", seed=7).samples
    by_hand = [[q, a, int(s.media["image"][0].stem)] for (q, a, _), s in zip(records, moved)]
    assert any(r[2] != o[2] for r, o in zip(by_hand, records))
    copy = corpus.write_easyvqa(tmp_path / "by-hand", "test", by_hand)
    shutil.copytree(data / "test" / "images", copy / "test" / "images", dirs_exist_ok=True)
    evaluate_run(model, config, f"easyvqa:{copy}", max_new_tokens=4, batch_size=5, out=tmp_path / "hand")
    assert [r["prediction"] for r in read_predictions(tmp_path / "eval" / "ablate-shuffle")] == [
        r["prediction"] for r in read_predictions(tmp_path / "hand")]
    gaps = metrics["ablations"]["shuffle"]["reliance"]
    assert gaps["all"]["gap"] == round(metrics["accuracy"] - shuffled["accuracy"], 2)
    assert metrics["ablations"]["blank"]["ablation"]["kind"] == "blank"
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["ablations"]["shuffle"]["reliance"] == gaps

    code, out, _ = cli(capsys, "eval", str(trained_run), "--dataset", f"easyvqa:{data}", "--max-new-tokens", "4",
                       "--batch-size", "5", "--ablate", "shuffle", "--ablation-seed", "7", "--out", str(tmp_path / "cli"))
    assert code == 0 and "media ablated: shuffle" in out and "counter_prior" in out
    assert read_predictions(tmp_path / "cli") == read_predictions(tmp_path / "eval" / "ablate-shuffle")
    code, out, _ = cli(capsys, "eval", str(trained_run), "--dataset", f"easyvqa:{data}", "--max-new-tokens", "4",
                       "--ablations", "shuffle", "--out", str(tmp_path / "cli2"))
    header = next(line for line in out.splitlines() if line.startswith("group"))
    assert code == 0 and header.split() == ["group", "count", "own", "shuffle", "gap"]
    assert json.loads((tmp_path / "cli2" / "metrics.json").read_text())["ablations"]["shuffle"]["reliance"] == gaps


def test_ablation_flags_are_checked_before_loading(trained_run, tmp_path, capsys):
    data, _ = _easyvqa(tmp_path / "d")
    code, _, err = cli(capsys, "eval", str(trained_run), "--dataset", f"easyvqa:{data}", "--ablate", "shuffle",
                       "--ablations", "blank", "--out", str(tmp_path / "x"))
    assert code == 2 and err.startswith("cotune: error:") and "pass one" in err
    code, _, err = cli(capsys, "eval", str(trained_run), "--dataset", f"easyvqa:{data}", "--ablations", "rotate", "--out", str(tmp_path / "y"))
    assert code == 2 and "unknown ablation 'rotate'" in err


def test_sound_qa_and_easy_vqa_samples_carry_their_question_type(tmp_path):
    from cotune.config import DatasetConfig
    from cotune.data.readers import READERS
    from cotune.data.report import DatasetReport

    corpus.write_audioqa(tmp_path, n=2)
    rows = (tmp_path / "train.csv").read_text().splitlines()
    typed = [rows[0] + ",question_type", rows[1] + ",loudness-yes-no", rows[2] + ","]
    (tmp_path / "typed.csv").write_text("\n".join(typed) + "\n")
    samples = list(READERS.get("audioqa")(DatasetConfig(kind="audioqa", path=str(tmp_path / "typed.csv")), DatasetReport("a")))
    assert samples[0].metadata["question_type"] == "loudness-yes-no" and "question_type" not in samples[1].metadata
    data, records = _easyvqa(tmp_path / "e")
    samples = list(READERS.get("easyvqa")(DatasetConfig(kind="easyvqa", path=str(data), split="test"), DatasetReport("e")))
    assert [s.metadata["question_type"] for s in samples[:4]] == ["color", "yes_no", "shape", "yes_no"]


def test_ablating_a_text_only_dataset_is_a_user_error_before_loading(trained_run, tmp_path, capsys):
    (tmp_path / "qa.json").write_text(json.dumps([{"instruction": "what colour is the sky", "output": "blue", "answers": ["blue"]}]))
    code, _, err = cli(capsys, "eval", str(trained_run), "--dataset", f"textqa:{tmp_path / 'qa.json'}", "--ablations", "shuffle",
                       "--out", str(tmp_path / "x"))
    assert code == 2 and err.startswith("cotune: error: --ablate/--ablations") and not (tmp_path / "x").exists()
