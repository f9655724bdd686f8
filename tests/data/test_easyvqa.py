"""The ``easyvqa`` reader: exact samples, both path forms, counted skips, and the real package's counts."""

import zipfile
from collections import Counter
from pathlib import Path

import pytest

from cotune.config.data import DatasetConfig
from cotune.data.readers import READERS
from cotune.data.report import DatasetReport
from cotune.data.schema import Message
from cotune.testing.corpus import write_easyvqa

WHEEL = Path("/tmp/pkgs/easy_vqa-1.0-py3-none-any.whl")


def read(path, **options):
    report = DatasetReport("easyvqa")
    samples = list(READERS.get("easyvqa")(DatasetConfig(kind="easyvqa", path=str(path), **options), report))
    return samples, report


def test_good_records_exactly(tmp_path):
    data = write_easyvqa(tmp_path)
    samples, report = read(data)
    assert (report.total, report.skipped) == (3, Counter())
    assert [s.id for s in samples] == ["train-0", "train-1", "train-2"]
    assert samples[0].messages == [Message("user", "what color is the shape?"), Message("assistant", "red")]
    assert samples[0].media == {"image": [(data / "train" / "images" / "0.png").resolve()]}
    assert samples[2].media == {"image": [(data / "train" / "images" / "1.png").resolve()]}
    assert samples[2].metadata == {"answer": "circle", "answers": ["circle"], "question": "what shape is in the image?", "image_id": 1,
                                  "question_type": "shape"}


def test_package_directory_and_data_directory_read_the_same(tmp_path):
    data = write_easyvqa(tmp_path, split="test")
    by_data, _ = read(data, split="test")
    by_package, _ = read(tmp_path, split="test")
    assert [(s.id, s.messages, s.media) for s in by_data] == [(s.id, s.messages, s.media) for s in by_package]
    assert by_data[0].id == "test-0"


def test_bad_records_are_counted_by_reason(tmp_path):
    data = write_easyvqa(tmp_path, records=[
        ["is it red?", "yes", 0],
        "not a record",
        ["too", "short"],
        ["what shape?", "circle", "0"],
        ["what shape?", "circle", True],
        ["what shape?", "circle", -1],
        ["   ", "circle", 0],
        ["what shape?", " ", 0],
        ["what shape?", "circle", 5],
        ["what color?", "blue", 1],
    ])
    (data / "train" / "images" / "5.png").unlink()
    samples, report = read(data)
    assert [s.id for s in samples] == ["train-0", "train-9"]
    assert report.total == 10
    assert report.skipped == Counter(malformed_record=5, missing_field=1, empty_answer=1, missing_media=1)
    assert any("train-3" in detail for detail in report.examples["malformed_record"])


def test_media_root_and_limit(tmp_path):
    data = write_easyvqa(tmp_path)
    moved = tmp_path / "elsewhere"
    (data / "train" / "images").rename(moved)
    samples, report = read(data, media_root=str(moved), limit=2)
    assert report.total == 2 and not report.skipped
    assert samples[1].media == {"image": [(moved / "0.png").resolve()]}


def test_unknown_split_and_wrong_layout_are_errors(tmp_path):
    data = write_easyvqa(tmp_path)
    with pytest.raises(ValueError, match=r"'val'.*splits here: train"):
        read(data, split="val")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not an easy-VQA data directory"):
        read(tmp_path / "empty")
    with pytest.raises(FileNotFoundError):
        read(tmp_path / "absent")


@pytest.mark.skipif(not WHEEL.is_file(), reason=f"{WHEEL} not present (pip download --no-deps easy-vqa -d /tmp/pkgs)")
def test_real_package_reads_with_published_counts(tmp_path):
    """easy-VQA's README: 4,000/1,000 images, 38,575/9,673 questions, 28,407/7,136 yes/no, 13 answers."""
    with zipfile.ZipFile(WHEEL) as wheel:
        wheel.extractall(tmp_path, [n for n in wheel.namelist() if n.startswith("easy_vqa/data/")])
    answers = set((tmp_path / "easy_vqa" / "data" / "answers.txt").read_text().split())
    for split, images, questions, yes_no in (("train", 4000, 38575, 28407), ("test", 1000, 9673, 7136)):
        samples, report = read(tmp_path, split=split)
        assert (report.total, len(samples), report.skipped) == (questions, questions, Counter())
        assert len({s.metadata["image_id"] for s in samples}) == images
        assert {s.metadata["answer"] for s in samples} == answers and len(answers) == 13
        assert sum(s.metadata["answer"] in ("yes", "no") for s in samples) == yes_no


def test_answers_filter_splits_yes_no_from_open_and_counts_what_it_leaves(tmp_path):
    records = [["what color is the shape?", "red", 0], ["is there a circle?", "No.", 0], ["is it blue?", " YES ", 1],
               ["what shape is in the image?", "circle", 1], ["bad", "", 1]]
    data = write_easyvqa(tmp_path, records=records)
    everything, all_report = read(data)
    open_, open_report = read(data, answers="open")
    yes_no, yes_no_report = read(data, answers="yes_no")
    assert [s.id for s in open_] == ["train-0", "train-3"]
    assert [s.id for s in yes_no] == ["train-1", "train-2"]
    assert sorted(s.id for s in open_ + yes_no) == sorted(s.id for s in everything)
    # a filtered sample is neither in total nor a skip; the unusable record is a skip in every view
    assert (open_report.total, open_report.filtered, open_report.skipped) == (3, 2, Counter(empty_answer=1))
    assert (yes_no_report.total, yes_no_report.filtered) == (3, 2)
    assert (all_report.total, all_report.filtered) == (5, 0)
    assert open_report.as_dict()["filtered"] == 2


def test_answers_filter_rejects_unknown_choice():
    with pytest.raises(Exception, match="answers"):
        DatasetConfig(kind="easyvqa", path="x", answers="yesno")


def test_answer_and_polarity_filters_partition_the_yes_no_questions(tmp_path):
    records = [["is there a red shape?", "yes", 0], ["is there not a red shape?", "no", 0], ["is no circle present?", "yes", 1],
               ["does the image contain a circle?", "no", 1], ["is there a circle?", "yes", 1], ["what color is it?", "red", 0]]
    data = write_easyvqa(tmp_path, records=records)
    cells = {(answer, pol): [s.id for s in read(data, answers=answer, polarity=pol)[0]]
             for answer in ("yes", "no") for pol in ("affirmative", "negated")}
    assert cells == {("yes", "affirmative"): ["train-0", "train-4"], ("yes", "negated"): ["train-2"],
                     ("no", "affirmative"): ["train-3"], ("no", "negated"): ["train-1"]}
    assert [s.id for s in read(data, polarity="negated")[0]] == ["train-1", "train-2"]
    with pytest.raises(Exception, match="polarity"):
        DatasetConfig(kind="easyvqa", path="x", polarity="negative")
