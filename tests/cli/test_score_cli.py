"""``cotune score``, run in-process through a parser built by its own ``add_arguments``."""

from __future__ import annotations

import argparse
import json

import pytest

from cotune.cli import score
from cotune.eval import ScoreError
from cotune.testing.corpus import SCIENCEQA_PREDICTIONS, SCIENCEQA_PROBLEMS, SCIENCEQA_TEST

COLUMNS = ["NAT", "SOC", "LAN", "TXT", "IMG", "NO", "G1-6", "G7-12", "Avg"]


def cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="cotune score")
    score.add_arguments(parser)
    return score.run(parser.parse_args(list(argv)))


@pytest.fixture
def sqa(tmp_path):
    """A ScienceQA folder (problems.json, pid_splits.json) and a predictions file."""
    (tmp_path / "problems.json").write_text(json.dumps(SCIENCEQA_PROBLEMS))
    (tmp_path / "pid_splits.json").write_text(json.dumps({"train": ["p7"], "test": SCIENCEQA_TEST}))
    (tmp_path / "preds.json").write_text(json.dumps(SCIENCEQA_PREDICTIONS))
    return tmp_path


def sqa_args(root, *extra: str, predictions: str = "preds.json") -> list[str]:
    return ["scienceqa", "--problems", str(root / "problems.json"), "--predictions", str(root / predictions), *extra]


def write(path, data) -> str:
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(path)


def test_scienceqa_table(sqa, capsys):
    assert cli(*sqa_args(sqa)) == 0
    out = capsys.readouterr().out
    header, accuracy, counts, summary = out.splitlines()
    assert header.split() == COLUMNS
    assert accuracy.split() == ["accuracy", "50.00", "100.00", "0.00", "100.00", "66.67", "0.00", "66.67", "33.33", "50.00"]
    assert counts.split() == ["count", "2", "2", "2", "3", "3", "2", "3", "3", "6"]
    assert summary == "6 problems; wrong without a prediction: 1, unparsed (-1): 1, out of range: 0"


def test_scienceqa_json_has_exactly_the_columns(sqa, capsys):
    assert cli(*sqa_args(sqa, "--split", "test", "--pid-splits", str(sqa / "pid_splits.json"), "--json")) == 0
    result = json.loads(capsys.readouterr().out)
    assert list(result) == COLUMNS
    assert result == {"NAT": 50.0, "SOC": 100.0, "LAN": 0.0, "TXT": 100.0, "IMG": 66.67, "NO": 0.0, "G1-6": 66.67, "G7-12": 33.33, "Avg": 50.0}


def test_scienceqa_split_all_and_rule_objects(sqa, capsys):
    preds = {"p1": {"answer": 0, "rule": "answer-is"}, "p7": {"answer": 0, "rule": "choice-text"}, "p2": {"answer": -1, "rule": "none"}}
    write(sqa / "rules.json", preds)
    assert cli(*sqa_args(sqa, "--split", "all", predictions="rules.json")) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-2] == "7 problems; wrong without a prediction: 4, unparsed (-1): 1, out of range: 0"
    assert lines[-1] == "extraction rules: answer-is 1, paren-mark 0, choice-text 1, none 1"
    assert lines[1].split()[-1] == "28.57"  # 2 of 7


def test_scienceqa_out_of_range_is_counted_not_dropped(sqa, capsys):
    write(sqa / "oor.json", {"p1": 7, "p3": 0})
    assert cli(*sqa_args(sqa, predictions="oor.json")) == 0
    out = capsys.readouterr().out
    assert "out of range: 1" in out and "wrong without a prediction: 4" in out


def test_scienceqa_bad_input_messages(sqa):
    write(sqa / "unknown.json", {"p1": 0, "p7": 1, "zz": 0})
    with pytest.raises(ScoreError, match=r"unknown\.json \(split 'test' of .*problems\.json\): 2 of 3 predictions .*'p7', 'zz'"):
        cli(*sqa_args(sqa, predictions="unknown.json"))
    write(sqa / "letters.json", {"p1": "A"})
    with pytest.raises(ValueError, match=r"letters\.json.*prediction for 'p1' must be a choice index.*'A'"):
        cli(*sqa_args(sqa, predictions="letters.json"))
    write(sqa / "broken.json", "{not json")
    with pytest.raises(ValueError, match=r"broken\.json: not valid JSON"):
        cli(*sqa_args(sqa, predictions="broken.json"))
    write(sqa / "list.json", [0, 1])
    with pytest.raises(ValueError, match=r"list\.json: expected a JSON object, got a list"):
        cli(*sqa_args(sqa, predictions="list.json"))
    write(sqa / "noanswer.json", {"p1": {"rule": "none"}})
    with pytest.raises(ValueError, match=r"noanswer\.json: prediction for 'p1' is an object without 'answer'"):
        cli(*sqa_args(sqa, predictions="noanswer.json"))
    with pytest.raises(FileNotFoundError, match=r"missing\.json does not exist"):
        cli(*sqa_args(sqa, predictions="missing.json"))
    with pytest.raises(ValueError, match=r"pid_splits\.json: no split 'dev'; available: test, train \(or 'all'\)"):
        cli(*sqa_args(sqa, "--split", "dev"))
    (sqa / "pid_splits.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"pid_splits\.json does not exist \(pass --pid-splits FILE, or --split all"):
        cli(*sqa_args(sqa))


def test_scienceqa_arguments_are_required(sqa, capsys):
    with pytest.raises(SystemExit):
        cli("scienceqa", "--problems", str(sqa / "problems.json"))
    assert "--predictions" in capsys.readouterr().err


def jsonl(path, records) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def test_vqa_audioqa_caption_jsonl(tmp_path, capsys):
    vqa_file = jsonl(tmp_path / "vqa.jsonl", [
        {"id": 1, "prediction": "Two", "references": ["2"] * 3 + ["3"] * 7},  # 3 matches of 10: 0.9
        {"id": 2, "prediction": "a dog", "references": ["dog"]},
    ])
    assert cli("vqa", "--predictions", vqa_file, "--json") == 0
    assert json.loads(capsys.readouterr().out) == {"accuracy": 95.0, "exact_match": 100.0, "count": 2, "references_per_item": {"1": 1, "10": 1}}
    assert cli("vqa", "--predictions", vqa_file) == 0
    assert capsys.readouterr().out.splitlines()[0].split() == ["accuracy", "95.0"]

    aqa_file = jsonl(tmp_path / "aqa.jsonl", [
        {"id": "a", "prediction": "yes", "references": ["yes", "no"]},
        {"id": "b", "prediction": "bird", "references": ["bird"]},
    ])
    assert cli("audioqa", "--predictions", aqa_file, "--json") == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["accuracy"], result["yes_no_accuracy"], result["single_word_accuracy"]) == (75.0, 50.0, 100.0)

    cap_file = jsonl(tmp_path / "cap.jsonl", [{"id": 0, "prediction": "a b c d", "references": ["a b c d", "a b"]}])
    assert cli("caption", "--predictions", cap_file, "--json") == 0
    result = json.loads(capsys.readouterr().out)
    assert list(result) == ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L", "CIDEr-D", "count", "tokenizer"]
    assert result["tokenizer"] == "ptb-python"
    assert result["BLEU-4"] == pytest.approx(1.0) and result["ROUGE-L"] == pytest.approx(1.0)


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"id": 1, "prediction": "x", "references": ["x"]}\nnot json\n', r"bad\.jsonl:2: not valid JSON"),
        ('{"id": 1, "prediction": "x"}\n', r'bad\.jsonl:1: expected an object with "id", "prediction" and "references"'),
        ('{"id": 1, "prediction": 3, "references": ["x"]}\n', r"bad\.jsonl:1: prediction must be a string"),
        ('{"id": 1, "prediction": "x", "references": []}\n', r"bad\.jsonl:1: references must be a non-empty list"),
        ('{"id": 1, "prediction": "x", "references": ["x"]}\n{"id": 1, "prediction": "y", "references": ["y"]}\n', r"bad\.jsonl:2: id 1 is repeated"),
        ("\n\n", r"bad\.jsonl: no records"),
    ],
)
def test_jsonl_bad_input_messages(tmp_path, content, message):
    (tmp_path / "bad.jsonl").write_text(content)
    with pytest.raises(ValueError, match=message):
        cli("vqa", "--predictions", str(tmp_path / "bad.jsonl"))


def test_jsonl_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.jsonl does not exist"):
        cli("caption", "--predictions", str(tmp_path / "nope.jsonl"))
