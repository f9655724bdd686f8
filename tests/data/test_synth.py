"""Synthetic demo datasets: deterministic per seed, diverse across seeds, read back by the real
readers with zero skips, balanced, and correct (answers recovered from the signals and numbers)."""

import csv
import hashlib
import json
import re
import wave
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cotune.cli.main import main
from cotune.config.data import DatasetConfig
from cotune.data.media import load_audio, load_image
from cotune.data.readers import READERS
from cotune.data.report import DatasetReport
from cotune.data.synth import SYNTHESIZERS
from cotune.data.synth.audioqa import FIELDS, VALUES
from cotune.data.synth.facts import FACTS
from cotune.data.synth.scenes import COLORS
from cotune.eval.metrics import METRICS
from cotune.eval.metrics.textqa import text_match

COUNTS = {"audioqa": 60, "scienceqa": 70, "textqa": 20}


def make(tmp_path_factory, kind, seed):
    out = tmp_path_factory.mktemp(f"{kind}-{seed}") / "data"
    return out, SYNTHESIZERS.get(kind)(out, seed=seed, count=COUNTS[kind])


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """kind -> {"a": seed 1, "a2": seed 1 again, "b": seed 2}, each (out dir, summary)."""
    return {kind: {name: make(tmp_path_factory, kind, seed) for name, seed in (("a", 1), ("a2", 1), ("b", 2))} for kind in COUNTS}


def file_hashes(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def read(kind, path, split):
    report = DatasetReport(kind)
    samples = list(READERS.get(kind)(DatasetConfig(kind=kind, path=str(path), split=split), report))
    return samples, report


def questions(kind, root: Path) -> list[str]:
    reader, splits = {"audioqa": ("audioqa", ("train", "test")), "scienceqa": ("scienceqa", ("train", "test")),
                      "textqa": ("alpaca", ("train", "test"))}[kind]
    return [s.messages[0].content for split in splits for s in read(reader, root, split)[0]]


def test_registry_names():
    assert SYNTHESIZERS.names() == ["audioqa", "scienceqa", "textqa"]


@pytest.mark.parametrize("kind", sorted(COUNTS))
def test_same_seed_same_bytes_other_seed_other_content(made, kind):
    (a, summary_a), (a2, summary_a2), (b, summary_b) = made[kind]["a"], made[kind]["a2"], made[kind]["b"]
    hashes_a, hashes_b = file_hashes(a), file_hashes(b)
    assert hashes_a == file_hashes(a2)
    assert summary_a["sha256"] == summary_a2["sha256"] != summary_b["sha256"]
    assert summary_a["files"] == len(hashes_a)
    shared = sum(hashes_a.get(name) == digest for name, digest in hashes_b.items())
    assert shared < len(hashes_b) / 2, f"{shared} of {len(hashes_b)} files identical across seeds"
    words_a, words_b = questions(kind, a), questions(kind, b)
    assert words_a != words_b and len(set(words_a)) > 1
    # Wording, not only content: some question type is phrased by templates the other seed used less or more.
    if kind != "textqa":
        skeleton = lambda qs: Counter(re.sub(r"\b(red|blue|green|yellow|purple|orange|\d+)\b", "_", q) for q in qs)
        assert skeleton(words_a) != skeleton(words_b)


# --- audioqa ----------------------------------------------------------------------------------


def rows(root: Path, split: str) -> list[dict]:
    with (root / f"{split}.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def test_audioqa_reads_back_and_decodes(made):
    root, summary = made["audioqa"]["a"]
    assert summary["splits"] == {"train": 48, "test": 12}
    for split, n in summary["splits"].items():
        samples, report = read("audioqa", root, split)
        assert (report.total, len(samples), report.skipped) == (n, n, Counter())
        assert [s.id for s in samples] == [r["id"] for r in rows(root, split)]
        for sample in samples:
            audio = load_audio(sample.media["audio"][0], sample.id, target_rate=16000)
            assert 1.0 <= audio.size / 16000 <= 2.0


def test_audioqa_test_count_sizes_only_its_own_test_split(tmp_path):
    """test_count sets the test split's size; it needs the test split's own stream (test_seed), so
    the training split is the one written without it."""
    from cotune.config import ConfigError

    synth = SYNTHESIZERS.get("audioqa")
    plain = synth(tmp_path / "plain", seed=2, count=60, test_seed=5)
    sized = synth(tmp_path / "sized", seed=2, count=60, test_seed=5, test_count=24)
    assert plain["splits"] == {"train": 48, "test": 12} and sized["splits"] == {"train": 48, "test": 24}
    assert (tmp_path / "plain" / "train.csv").read_bytes() == (tmp_path / "sized" / "train.csv").read_bytes()
    with open(tmp_path / "sized" / "test.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 24
    with pytest.raises(ConfigError, match="test_seed"):
        synth(tmp_path / "x", seed=2, count=60, test_count=24)
    with pytest.raises(ConfigError, match="at least 12"):
        synth(tmp_path / "y", seed=2, count=60, test_seed=5, test_count=3)


def test_audioqa_answers_balanced_per_type(made):
    root, _ = made["audioqa"]["b"]
    for split in ("train", "test"):
        by_type: dict[str, Counter] = {}
        for row in rows(root, split):
            by_type.setdefault(row["question_type"], Counter())[row["answer"]] += 1
        assert len(by_type) == 12
        for qtype, answers in by_type.items():
            prop = qtype.removesuffix("-yes-no")
            vocabulary = ("yes", "no") if qtype.endswith("-yes-no") else VALUES[prop]
            assert set(answers) <= set(vocabulary)
            counts = [answers[v] for v in vocabulary]
            assert max(counts) - min(counts) <= 1, (split, qtype, answers)


def _load(path: Path) -> np.ndarray:
    with wave.open(str(path)) as f:
        assert (f.getnchannels(), f.getsampwidth(), f.getframerate()) == (1, 2, 16000)
        return np.frombuffer(f.readframes(f.getnframes()), "<i2") / 32767.0


def describe(x: np.ndarray, rate: int = 16000) -> dict[str, str]:
    """Each property read off the waveform with plain signal rules (10 ms frames above -54 dBFS are sound)."""
    frame = rate // 100
    n = x.size // frame
    active = np.flatnonzero(np.sqrt((x[: n * frame].reshape(n, frame) ** 2).mean(1)) > 0.002)
    runs = 1 + int(np.sum(np.diff(active) > 3))
    part = x[active[0] * frame : (active[-1] + 1) * frame]
    power = np.abs(np.fft.rfft(part)) ** 2 + 1e-12
    peak = lambda seg: np.fft.rfftfreq(seg.size, 1 / rate)[np.argmax(np.abs(np.fft.rfft(seg)))]
    quarter = part.size // 4
    return {
        "pitch": "high" if peak(part) > 1000 else "low",
        "beeps": ("one", "two", "three", "four")[runs - 1] if runs <= 4 else str(runs),
        "loudness": "loud" if np.sqrt(np.mean(part**2)) > 0.05 else "quiet",
        "duration": "long" if active.size / 100 > 0.8 else "short",
        "sweep": "rising" if peak(part[:quarter]) < peak(part[-quarter:]) else "falling",
        "source": "noise" if np.exp(np.mean(np.log(power))) / np.mean(power) > 0.3 else "tone",
    }


def asked_value(prop: str, question: str) -> str:
    """The value a yes/no question asks about ("Does it beep twice?" -> two)."""
    words = " " + " ".join(re.findall(r"[a-z]+", question.lower())) + " "
    hits = [v for v in VALUES[prop] if f" {v} " in words or any(f" {phrase} " in words for phrase in FIELDS.get(v, {}).values())]
    hits = [v for v in hits if not (prop == "source" and v == "tone" and "noise" in words)]
    assert len(hits) == 1, (question, hits)
    return hits[0]


def test_audioqa_answers_are_in_the_signal(made):
    for name in ("a", "b"):
        root, _ = made["audioqa"][name]
        for split in ("train", "test"):
            for row in rows(root, split):
                prop = row["question_type"].removesuffix("-yes-no")
                heard = describe(_load(root / "audio" / row["file_name"]))[prop]
                if row["question_type"].endswith("-yes-no"):
                    expected = "yes" if heard == asked_value(prop, row["QuestionText"]) else "no"
                else:
                    expected = heard
                assert row["answer"] == expected, (row, heard)


# --- scienceqa --------------------------------------------------------------------------------


def test_scienceqa_reads_back_every_split(made):
    root, summary = made["scienceqa"]["a"]
    splits = json.loads((root / "pid_splits.json").read_text())
    assert set(splits) == {"train", "val", "test", "minitrain", "minival", "minitest"}
    assert summary["splits"] == {name: len(pids) for name, pids in splits.items()}
    assert sorted(splits["train"] + splits["val"] + splits["test"], key=int) == [str(i) for i in range(1, 71)]
    for split, pids in splits.items():
        samples, report = read("scienceqa", root, split)
        assert (report.total, report.skipped, [s.id for s in samples]) == (len(pids), Counter(), pids)
        for sample in samples:
            for path in sample.media.get("image", ()):
                assert load_image(path, sample.id).size == (224, 224)


def test_scienceqa_problems_are_well_formed(made):
    root, _ = made["scienceqa"]["b"]
    problems = json.loads((root / "problems.json").read_text())
    for pid, p in problems.items():
        assert 2 <= len(p["choices"]) <= 5 and len(set(p["choices"])) == len(p["choices"]), pid
        assert 0 <= p["answer"] < len(p["choices"])
        assert p["lecture"] and p["solution"]
        assert (p["image"] is not None) == (root / "images" / p["split"] / pid / "image.png").is_file()


def test_scienceqa_breakdown_columns_all_filled(made):
    for name in ("a", "b"):
        root, _ = made["scienceqa"][name]
        problems = json.loads((root / "problems.json").read_text())
        test_pids = json.loads((root / "pid_splits.json").read_text())["test"]
        truth = {pid: problems[pid]["answer"] for pid in test_pids}
        result = METRICS.get("scienceqa")(problems, truth, test_pids)
        assert all(result["counts"][column] > 0 for column in result["counts"]), result["counts"]
        assert result["accuracy"] == 100.0
        wrong = {pid: (answer + 1) % len(problems[pid]["choices"]) for pid, answer in truth.items()}
        assert METRICS.get("scienceqa")(problems, wrong, test_pids)["accuracy"] == 0.0


def _check_text_problem(p: dict) -> None:
    """The answer of the text templates, recomputed from the words and numbers in the problem."""
    answer, topic = p["choices"][p["answer"]], p["topic"]
    if topic == "alphabetical order":
        assert answer == min(p["choices"])
    elif topic == "reference skills":
        low, high = re.search(r"guide words (\w+) - (\w+)", p["question"]).groups()
        assert [low < c < high for c in p["choices"]] == [c == answer for c in p["choices"]]
    elif topic == "supply and demand":
        supply, demand = map(int, re.search(r"has (\d+) .* (\d+) people", p["hint"]).groups())
        assert answer == ("surplus" if supply > demand else "shortage")
    elif topic == "economics":
        money = float(re.search(r"has \$(\d+\.\d\d)", p["question"]).group(1))
        prices = dict(re.findall(r"(\w[\w ]*?) costs \$(\d+\.\d\d)", p["hint"]))
        bought = re.search(r"buy (.+) and (.+)\?", p["question"]).groups()
        total = sum(float(prices[item]) for item in bought)
        assert answer == ("yes" if money >= total - 1e-9 else "no")
    elif topic == "kinetic energy":
        masses_speeds = [re.search(r"(\d+)-kilogram \w+ moving at (\d+)", c).groups() for c in p["choices"]]
        energies = [0.5 * int(m) * int(v) ** 2 for m, v in masses_speeds]
        best = max(energies) if " more " in p["question"] else min(energies)
        assert energies[p["answer"]] == best and energies.count(best) == 1
    elif topic == "solutions":
        a, b = map(int, re.search(r"A has (\d+) .* B has (\d+)", p["hint"]).groups())
        assert answer == ("Solution A" if a > b else "Solution B" if b > a else p["choices"][2])


def test_scienceqa_answers_follow_from_the_problem(made):
    checked = Counter()
    for name in ("a", "b"):
        root, _ = made["scienceqa"][name]
        for pid, p in json.loads((root / "problems.json").read_text()).items():
            _check_text_problem(p)
            checked[p["topic"]] += 1
            if p["topic"] == "colors":  # the answer's colour is in the picture
                pixels = np.asarray(Image.open(root / "images" / p["split"] / pid / "image.png")).reshape(-1, 3)
                assert (pixels == COLORS[p["choices"][p["answer"]]]).all(1).any(), pid
    assert len(checked) == 13


# --- textqa -----------------------------------------------------------------------------------


def test_textqa_reads_back_with_answers_and_held_out_facts(made):
    root, summary = made["textqa"]["a"]
    train, report_train = read("alpaca", root, "train")
    test, report_test = read("alpaca", root, "test")
    assert report_train.skipped == report_test.skipped == Counter()
    assert summary["splits"] == {"train": len(train), "test": len(test)} and summary["facts"] == {"train": 14, "test": 6}
    statements = lambda samples: {s.messages[1].content for s in samples}
    assert not statements(train) & statements(test)
    verified = {q: f for f in FACTS for q in f.questions()}
    for sample in test:
        fact = verified[sample.messages[0].content]  # a phrasing the base model answered correctly
        assert sample.metadata == {"answers": list(fact.answers)}
    assert text_match([s.messages[1].content for s in train + test], [s.metadata["answers"] for s in train + test])["accuracy"] == 100.0


def test_fact_pool_questions_never_give_their_answer_away():
    """A reply that only echoes the question must not count as correct."""
    assert len({f.key for f in FACTS}) == len(FACTS)
    for fact in FACTS:
        assert fact.questions(), fact.key
        for question in fact.questions():
            assert text_match([question], [list(fact.answers)])["correct"] == 0, question


def test_alpaca_keeps_answers(tmp_path):
    path = tmp_path / "qa.json"
    path.write_text(json.dumps([
        {"instruction": "Capital of France?", "output": "Paris.", "answers": ["Paris"]},
        {"instruction": "Say hi.", "input": "", "output": "Hi."},
        {"instruction": "x?", "output": "y", "answers": "y"},
        {"instruction": "x?", "output": "y", "answers": ["y", ""]},
    ]))
    samples, report = read("alpaca", path, "train")
    assert [(s.id, s.metadata) for s in samples] == [("qa-0", {"answers": ["Paris"]}), ("qa-1", {})]
    assert report.skipped == Counter(malformed_record=2)


# --- CLI ----------------------------------------------------------------------------------------


def test_cli_synth_summary_and_errors(tmp_path, capsys):
    out = tmp_path / "text"
    assert main(["data", "synth", "--kind", "textqa", "--out", str(out), "--seed", "3", "--count", "10"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("textqa: train ") and ", test 3;" in line and "2 files in" in line and "\n" not in line
    assert main(["data", "synth", "--kind", "textqa", "--out", str(out)]) == 2
    assert "is not empty" in capsys.readouterr().err
    assert main(["data", "synth", "--kind", "textqa", "--out", str(tmp_path / "x"), "--count", "2"]) == 2
    assert "--count" in capsys.readouterr().err
    assert main(["data", "synth", "--kind", "audio", "--out", str(tmp_path / "y")]) == 2
    assert "did you mean 'audioqa'" in capsys.readouterr().err
    assert main(["data", "synth", "--kind", "scienceqa", "--out", str(tmp_path / "s"), "--count", "20", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["splits"]["train"] + summary["splits"]["val"] + summary["splits"]["test"] == 20
