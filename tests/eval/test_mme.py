"""MME: answers read as MME's eval tool reads them, acc / acc+ / totals against hand-computed fixtures,
``cotune score mme`` on the tool's results layout, the reader of the released layout, and
``cotune eval --dataset mme:PATH`` writing results that ``score mme`` scores the same."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from cotune.cli.main import main
from cotune.config.data import DatasetConfig
from cotune.data.readers import READERS
from cotune.data.report import DatasetReport
from cotune.eval import evaluate_run
from cotune.eval.metrics.mme import SUBTASKS, MMEItem, mme, parse_answer
from cotune.eval.mme_results import read_results
from cotune.rundir import RunDir
from cotune.testing import tiny


@pytest.mark.parametrize("prediction, label", [
    ("yes", "yes"), ("No", "no"), ("YES", "yes"), ("Yes, there is.", "yes"), ("No, there is not", "no"),
    ("Not at all", "no"),  # "no" is in the first four characters
    ("nope", "no"), (" yes", "yes"), ("  yes", "other"),  # the fourth character ends the look
    ("nyes", "yes"),  # yes is looked for before no
    ("There is a dog", "other"), ("", "other"), ("y", "other"), ("I think yes", "other"),
])
def test_answers_are_read_as_the_mme_tool_reads_them(prediction, label):
    assert parse_answer(prediction) == label


# Hand-computed: existence acc 3/4, acc+ 1/2 (image b's first answer is "other"); count 0/2, 0/1
# ("Not sure" reads as no); code_reasoning 3/4, 1/2 (" yes" to a no-question).
FIXTURE = {
    "existence": [("a.jpg", "Is there a dog?", "Yes", "Yes"), ("a.jpg", "Is there a cat?", "No", "No, there is not"),
                  ("b.jpg", "Is there a car?", "Yes", "There is a car"), ("b.jpg", "Is there a bus?", "No", "no")],
    "count": [("c.jpg", "Are there two dogs?", "Yes", "Not sure"), ("c.jpg", "Are there three dogs?", "No", "yes")],
    "code_reasoning": [("d.png", "Does it print 3?", "Yes", "YES"), ("d.png", "Does it print 4?", "No", "nope"),
                       ("e.png", "Does it print 5?", "Yes", "yes it does"), ("e.png", "Does it print 6?", "No", " yes")],
}


def write_results(directory, fixture=FIXTURE):
    directory.mkdir(parents=True, exist_ok=True)
    for subtask, lines in fixture.items():
        (directory / f"{subtask}.txt").write_text("".join("\t".join(line) + "\n" for line in lines))
    return directory


def test_scores_equal_the_hand_computed_fixture(tmp_path):
    result = mme(read_results(write_results(tmp_path / "results")))
    assert result["subtasks"] == {
        "existence": {"acc": 75.0, "acc_plus": 50.0, "score": 125.0, "questions": 4, "images": 2, "other": 1},
        "count": {"acc": 0.0, "acc_plus": 0.0, "score": 0.0, "questions": 2, "images": 1, "other": 0},
        "code_reasoning": {"acc": 75.0, "acc_plus": 50.0, "score": 125.0, "questions": 4, "images": 2, "other": 0},
    }
    assert (result["perception"], result["cognition"], result["total"]) == (125.0, 125.0, 250.0)
    assert result["accuracy"] == 60.0 and result["count"] == 10 and result["incomplete_images"] == 0
    assert result["missing"] == [s for s in SUBTASKS if s not in FIXTURE] and list(result["subtasks"]) == ["existence", "count", "code_reasoning"]


def test_acc_plus_needs_both_questions_of_an_image_and_a_missing_one_counts_against_it():
    both_yes = [MMEItem("color", "x.jpg", "Yes", "yes"), MMEItem("color", "x.jpg", "No", "yes")]
    assert mme(both_yes)["subtasks"]["color"] == {"acc": 50.0, "acc_plus": 0.0, "score": 50.0, "questions": 2, "images": 1, "other": 0}
    alone = mme([MMEItem("color", "x.jpg", "Yes", "yes"), MMEItem("color", "y.jpg", "Yes", "yes"), MMEItem("color", "y.jpg", "No", "no")])
    assert alone["subtasks"]["color"]["acc_plus"] == 50.0 and alone["incomplete_images"] == 1
    assert alone["perception"] == 150.0 and alone["cognition"] is None and alone["total"] == 150.0


def test_score_mme_cli_prints_the_table_and_one_json_object(tmp_path, capsys):
    results = write_results(tmp_path / "results")
    assert main(["score", "mme", "--results", str(results), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert (printed["perception"], printed["cognition"], printed["total"]) == (125.0, 125.0, 250.0)
    assert printed["subtasks"]["existence"]["acc"] == 75.0 and printed["subtasks"]["existence"]["acc_plus"] == 50.0
    assert main(["score", "mme", "--results", str(results)]) == 0
    table = capsys.readouterr().out
    assert "MME perception 125.00, cognition 125.00, total 250.00" in table and "missing subtasks" in table


@pytest.mark.parametrize("lines, fragment", [
    (["a.jpg\tq\tYes\tyes\n"], "1 lines; MME pairs two questions per image"),
    (["a.jpg\tq\tYes\tyes\n", "a.jpg\tq\tNo\n"], "existence.txt:2: expected image<TAB>question<TAB>answer<TAB>prediction"),
    (["a.jpg\tq\tYes\tyes\n", "b.jpg\tq\tNo\tno\n"], "existence.txt:1: lines 1 and the next are a pair but name images"),
    (["a.jpg\tq\tMaybe\tyes\n", "a.jpg\tq\tNo\tno\n"], "existence.txt:1: the answer must be yes or no"),
])
def test_bad_results_are_one_line_errors_naming_file_and_line(tmp_path, capsys, lines, fragment):
    (tmp_path / "existence.txt").write_text("".join(lines))
    assert main(["score", "mme", "--results", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cotune: error: ") and err.count("\n") == 1 and fragment in err
    assert main(["score", "mme", "--results", str(tmp_path / "none")]) == 2 and "no such directory" in capsys.readouterr().err


def write_mme(root, corrupt=False):
    """An MME release directory with both layouts: existence (flat, two images) and artwork
    (images/ + questions_answers_YN/, one image); with ``corrupt``, a malformed line and a
    question file without its image."""
    release = root / "MME_Benchmark_release_version"
    flat, nested = release / "existence", release / "artwork"
    (nested / "images").mkdir(parents=True)
    (nested / "questions_answers_YN").mkdir()
    flat.mkdir()
    (release / "eval_tool").mkdir()  # not a subtask: ignored
    for n, directory in enumerate((flat, flat, nested / "images")):
        Image.new("RGB", (48, 40), (60 * n, 100, 200)).save(directory / f"{n:04d}.{'png' if n else 'jpg'}")
    for n, directory in enumerate((flat, flat, nested / "questions_answers_YN")):
        (directory / f"{n:04d}.txt").write_text(
            f"Is there a shape {n}? Please answer yes or no.\tYes\nIs there no shape {n}? Please answer yes or no.\tNo\n")
    if corrupt:
        (flat / "0007.txt").write_text("Is there a shape?\tYes\nIs there no shape?\tNo\n")  # no 0007 image
        (flat / "0001.txt").write_text((flat / "0001.txt").read_text() + "a line without an answer\n")
    return root


def test_reader_reads_both_layouts_in_order_and_counts_skips(tmp_path):
    report = DatasetReport("mme")
    config = DatasetConfig(kind="mme", path=str(write_mme(tmp_path, corrupt=True)), split="test", name="mme")
    samples = list(READERS.get("mme")(config, report))
    # Subtasks in MME's order (existence before artwork), then file and line order.
    assert [s.id for s in samples] == ["existence/0000/0", "existence/0000/1", "existence/0001/0", "existence/0001/1",
                                       "artwork/0002/0", "artwork/0002/1"]
    first = samples[0]
    assert first.media["image"][0].name == "0000.jpg" and first.messages[0].content.endswith("Please answer yes or no.")
    assert first.metadata == {"subtask": "existence", "image": "0000.jpg", "answer": "Yes", "answers": ["Yes"],
                              "question": first.messages[0].content, "question_type": "existence"}
    assert samples[4].media["image"][0].parent.name == "images"
    assert report.skipped == {"malformed_record": 1, "missing_media": 2} and report.total == 9


@pytest.fixture(scope="module")
def image_run(tiny_root, tmp_path_factory):
    return tiny.save_image_run(tiny_root, tmp_path_factory.mktemp("mme-run") / "model", seed=5)


def test_eval_mme_writes_the_tools_layout_and_score_mme_agrees(image_run, tmp_path, capsys):
    data = write_mme(tmp_path / "data")
    out = tmp_path / "out"
    assert main(["--log-level", "warning", "eval", str(image_run), "--dataset", f"mme:{data}", "--out", str(out),
                 "--max-new-tokens", "3", "--batch-size", "4"]) == 0
    printed = capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert metrics["evaluated"] == len(records) == 6 and metrics["dataset"] == "mme"
    for record in records:
        assert record["answer"] == parse_answer(record["prediction"])
        assert record["correct"] == (record["answer"] == record["references"][0].lower())
    expected = mme([MMEItem(r["subtask"], r["image"], r["references"][0], r["prediction"]) for r in records])
    assert {k: metrics[k] for k in expected} == expected and set(metrics["subtasks"]) == {"existence", "artwork"}
    # The files MME's tool reads, one per subtask, two lines per image; score mme reads them back to the same scores.
    lines = (out / "mme_results" / "existence.txt").read_text().splitlines()
    assert len(lines) == 4 and [line.split("\t")[:3] for line in lines[:2]] == [
        ["0000.jpg", "Is there a shape 0? Please answer yes or no.", "Yes"], ["0000.jpg", "Is there no shape 0? Please answer yes or no.", "No"]]
    assert main(["score", "mme", "--results", str(out / "mme_results"), "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert {k: again[k] for k in ("perception", "cognition", "total", "subtasks")} == {k: metrics[k] for k in ("perception", "cognition", "total", "subtasks")}
    assert "MME perception" in printed and "subtask" in printed.splitlines()[0]


def test_limit_takes_the_first_questions_in_pair_order(image_run, tmp_path):
    model, config = RunDir(image_run).load()
    metrics = evaluate_run(model, config, f"mme:{write_mme(tmp_path)}", limit=2, max_new_tokens=2)
    assert metrics["evaluated"] == 2 and metrics["subtasks"]["existence"]["images"] == 1
