"""``targets: describe``: yes/no answers trained as "<what the media show>: <answer>", the readers'
descriptions, and evaluation reading the answer after the description."""

import csv
import re
from collections import Counter

import pytest

from cotune.config import ConfigError
from cotune.config.data import DatasetConfig
from cotune.data.readers import READERS
from cotune.data.report import DatasetReport
from cotune.data.schema import Message, Sample
from cotune.data.synth import SYNTHESIZERS
from cotune.eval.tasks import TASKS, item_record, score
from cotune.testing.corpus import write_easyvqa

RECORDS = [
    ["what color is the shape?", "red", 0], ["what shape is in the image?", "circle", 0],
    ["is there a circle?", "yes", 0], ["is there not a red shape?", "no", 0],
    ["what color is the shape?", "blue", 1], ["is there a blue shape?", "yes", 1],  # image 1: shape never asked
]


def read(kind, path, **options):
    report = DatasetReport(kind)
    samples = list(READERS.get(kind)(DatasetConfig(kind=kind, path=str(path), **options), report))
    return samples, report


def test_easyvqa_yes_no_targets_describe_the_image_first(tmp_path):
    data = write_easyvqa(tmp_path, records=RECORDS)
    plain, _ = read("easyvqa", data)
    described, report = read("easyvqa", data, targets="describe")
    assert [s.messages[-1].content for s in plain] == ["red", "circle", "yes", "no", "blue", "yes"]
    # Image 0's colour and shape are named by its open questions; image 1's shape is not, so its
    # yes/no question cannot be described and is left out (filtered: the data is not at fault).
    assert [s.messages[-1].content for s in described] == ["red", "circle", "red circle: yes", "red circle: no", "blue"]
    assert (report.total, report.filtered, report.skipped) == (5, 1, Counter())
    assert described[2].messages[0] == Message("user", "is there a circle?")
    # The reference answers stay the data's own: evaluation scores the part after the description.
    assert described[2].metadata["answers"] == ["yes"] and described[2].metadata["description"] == "red circle"
    assert "description" not in plain[2].metadata  # only computed when asked for


def test_describe_combines_with_the_answer_filters(tmp_path):
    data = write_easyvqa(tmp_path, records=RECORDS)
    negated, report = read("easyvqa", data, targets="describe", answers="yes_no", polarity="negated")
    assert [s.messages[-1].content for s in negated] == ["red circle: no"]
    assert report.filtered == 5


def test_targets_is_checked():
    with pytest.raises(ConfigError, match="targets"):
        DatasetConfig(kind="easyvqa", path="x", targets="explain")


def test_sound_qa_descriptions_are_the_clip_value_of_the_property_asked(tmp_path):
    SYNTHESIZERS.get("audioqa")(tmp_path / "aqa", seed=3, count=120)
    rows = list(csv.DictReader((tmp_path / "aqa" / "train.csv").open()))
    assert rows and all(r["description"] for r in rows)
    for row in rows:
        prop = row["question_type"].removesuffix("-yes-no")
        if not row["question_type"].endswith("-yes-no"):
            assert row["description"] == row["answer"]  # the open question's answer is the clip's value
        elif prop in ("pitch", "loudness", "duration", "source"):
            # A yes/no question names a value; the clip has it exactly when the answer is yes.
            assert (row["description"] in re.findall(r"[a-z]+", row["QuestionText"])) == (row["answer"] == "yes"), row
    samples, report = read("audioqa", tmp_path / "aqa", targets="describe", answers="yes_no")
    assert samples and report.filtered == sum(r["question_type"].count("-yes-no") == 0 for r in rows)
    by_id = {r["id"]: r for r in rows}
    for sample in samples:
        row = by_id[sample.id]
        assert sample.messages[-1].content == f"{row['description']}: {row['answer']}"


def _sample(answer: str) -> Sample:
    return Sample("s", [Message("user", "is there a circle?"), Message("assistant", answer)], {}, {"answer": answer, "answers": [answer]})


@pytest.mark.parametrize("task", ["easyvqa", "audioqa"])
def test_evaluation_scores_the_answer_after_the_description(task):
    predictions = ["red circle: yes", "yes", "red circle: no", "circle: yes: no", "Yes."]
    records = [item_record(TASKS.get(task), _sample("yes"), p) for p in predictions]
    assert [r["answer"] for r in records] == ["yes", "yes", "no", "no", "Yes."]
    assert [r["prediction"] for r in records] == predictions  # the whole continuation is kept
    result = score(TASKS.get(task), records, {"s": {}})
    assert [r["correct"] for r in records] == [True, True, False, False, True]
    assert result["accuracy"] == 60.0


def test_other_tasks_score_the_whole_continuation():
    record = item_record(TASKS.get("jsonl"), _sample("10:30"), "10:30")
    assert record["answer"] == "10:30"
