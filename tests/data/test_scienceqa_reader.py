"""ScienceQA prompts (golden strings from LaVIN's rules, written out by hand) and the native-layout reader."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from cotune.config.data import DatasetConfig
from cotune.data.readers import READERS
from cotune.data.report import DatasetReport
from cotune.data.scienceqa_prompt import PROMPT_FORMATS, answer_letter, build_prompt, choice_letters

STATES = {
    "question": "Which of these states is farthest north?",
    "choices": ["West Virginia", "Louisiana", "Arizona", "Oklahoma"],
    "answer": 0,
    "hint": "",
    "image": "image.png",
    "lecture": "Maps show directions.",
    "solution": "West Virginia is farthest north.",
    "subject": "social science",
    "grade": "grade4",
    "split": "train",
}
MAMMAL = {
    "question": "Which animal is a mammal?",
    "choices": ["trout", "cat"],
    "answer": 1,
    "hint": "Both animals live on farms.",
    "image": None,
    "lecture": "Mammals have fur.\nFish have scales.",
    "solution": "A cat has fur.",
    "subject": "natural science",
    "grade": "grade2",
    "split": "train",
}
PENCIL = {
    "question": "Is a pencil a solid or a liquid?",
    "choices": ["a solid", "a liquid"],
    "answer": 0,
    "hint": "",
    "image": None,
    "lecture": "",
    "solution": "",
    "subject": "natural science",
    "grade": "grade1",
    "split": "train",
}
SPACES = {
    "question": "What  is   this?",
    "choices": ["x  y", "z"],
    "answer": 0,
    "hint": "A    hint",
    "image": None,
    "lecture": "Line one.\nLine  two.",
    "solution": "Sol   three.\n\nEnd.",
    "subject": "language science",
    "grade": "grade8",
    "split": "train",
}
FIVE = {
    "question": "Which number is largest?",
    "choices": ["1", "2", "3", "4", "5"],
    "answer": 4,
    "hint": "",
    "image": None,
    "lecture": "",
    "solution": "Five is largest.",
    "subject": "natural science",
    "grade": "grade12",
    "split": "val",
}
MAP = dict(STATES, question="Which state is highlighted?", choices=["Ohio", "Iowa"], answer=1, split="val", grade="grade5")

# MAMMAL in every format: q = "Which animal is a mammal?", c = the hint, m = "(A) trout (B) cat",
# a = "B", l = "Mammals have fur.\\nFish have scales." (literal backslash-n), e = "A cat has fur.".
MAMMAL_GOLDEN = {
    "CQM-A": ("Context: Both animals live on farms.\nQuestion: Which animal is a mammal?\nOptions: (A) trout (B) cat\nResponse:",
              "The answer is B."),
    "CQM-LA": ("Context: Both animals live on farms.\nQuestion: Which animal is a mammal?\nOptions: (A) trout (B) cat\nResponse:",
               "Mammals have fur.\\nFish have scales. The answer is B."),
    "CQM-EA": ("Context: Both animals live on farms.\nQuestion: Which animal is a mammal?\nOptions: (A) trout (B) cat\nResponse:",
               "A cat has fur. The answer is B."),
    "CQM-LEA": ("Context: Both animals live on farms.\nQuestion: Which animal is a mammal?\nOptions: (A) trout (B) cat\nResponse:",
                "Mammals have fur.\\nFish have scales. A cat has fur. The answer is B."),
    "CQM-ELA": ("Context: Both animals live on farms.\nQuestion: Which animal is a mammal?\nOptions: (A) trout (B) cat\nResponse:",
                "A cat has fur. Mammals have fur.\\nFish have scales. The answer is B."),
    "CQM-AL": ("Context: Both animals live on farms.\nQuestion: Which animal is a mammal?\nOptions: (A) trout (B) cat\nResponse:",
               "The answer is B. BECAUSE: A cat has fur."),
    "CQM-AE": ("Context: Both animals live on farms.\nQuestion: Which animal is a mammal?\nOptions: (A) trout (B) cat\nResponse:",
               "The answer is B. BECAUSE: Mammals have fur.\\nFish have scales."),
    "CQM-ALE": ("Context: Both animals live on farms.\nQuestion: Which animal is a mammal?\nOptions: (A) trout (B) cat\nResponse:",
                "The answer is B. BECAUSE: Mammals have fur.\\nFish have scales. A cat has fur."),
    "QCM-A": ("Question: Which animal is a mammal?\nContext: Both animals live on farms.\nOptions: (A) trout (B) cat\nResponse:",
              "The answer is B."),
    "QCM-LA": ("Question: Which animal is a mammal?\nContext: Both animals live on farms.\nOptions: (A) trout (B) cat\nResponse:",
               "Mammals have fur.\\nFish have scales. The answer is B."),
    "QCM-EA": ("Question: Which animal is a mammal?\nContext: Both animals live on farms.\nOptions: (A) trout (B) cat\nResponse:",
               "A cat has fur. The answer is B."),
    "QCM-LEA": ("Question: Which animal is a mammal?\nContext: Both animals live on farms.\nOptions: (A) trout (B) cat\nResponse:",
                "Mammals have fur.\\nFish have scales. A cat has fur. The answer is B."),
    "QCM-ELA": ("Question: Which animal is a mammal?\nContext: Both animals live on farms.\nOptions: (A) trout (B) cat\nResponse:",
                "A cat has fur. Mammals have fur.\\nFish have scales. The answer is B."),
    "QCM-AL": ("Question: Which animal is a mammal?\nContext: Both animals live on farms.\nOptions: (A) trout (B) cat\nResponse:",
               "The answer is B. BECAUSE: A cat has fur."),
    "QCM-AE": ("Question: Which animal is a mammal?\nContext: Both animals live on farms.\nOptions: (A) trout (B) cat\nResponse:",
               "The answer is B. BECAUSE: Mammals have fur.\\nFish have scales."),
    "QCM-ALE": ("Question: Which animal is a mammal?\nContext: Both animals live on farms.\nOptions: (A) trout (B) cat\nResponse:",
                "The answer is B. BECAUSE: Mammals have fur.\\nFish have scales. A cat has fur."),
    "QCML-A": ("Question: Which animal is a mammal?\nContext: Both animals live on farms.\nOptions: (A) trout (B) cat\n"
               "BECAUSE: Mammals have fur.\\nFish have scales.\nResponse:",
               "The answer is B."),
    "QCME-A": ("Question: Which animal is a mammal?\nContext: Both animals live on farms.\nOptions: (A) trout (B) cat\n"
               "BECAUSE: A cat has fur.\nResponse:",
               "The answer is B."),
    "QCMLE-A": ("Question: Which animal is a mammal?\nContext: Both animals live on farms.\nOptions: (A) trout (B) cat\n"
                "BECAUSE: Mammals have fur.\\nFish have scales. A cat has fur.\nResponse:",
                "The answer is B."),
    "QCLM-A": ("Question: Which animal is a mammal?\nContext: Both animals live on farms.\n"
               "BECAUSE: Mammals have fur.\\nFish have scales.\nOptions: (A) trout (B) cat\nResponse:",
               "The answer is B."),
    "QCEM-A": ("Question: Which animal is a mammal?\nContext: Both animals live on farms.\n"
               "BECAUSE: A cat has fur.\nOptions: (A) trout (B) cat\nResponse:",
               "The answer is B."),
    "QCLEM-A": ("Question: Which animal is a mammal?\nContext: Both animals live on farms.\n"
                "BECAUSE: Mammals have fur.\\nFish have scales. A cat has fur.\nOptions: (A) trout (B) cat\nResponse:",
                "The answer is B."),
    "QCML-AE": ("Question: Which animal is a mammal?\nContext: Both animals live on farms.\nOptions: (A) trout (B) cat\n"
                "BECAUSE: Mammals have fur.\\nFish have scales.\nResponse:",
                "The answer is B. BECAUSE: Mammals have fur.\\nFish have scales."),
    "QCM-AEL": ("Question: Which animal is a mammal?\nContext: Both animals live on farms.\nOptions: (A) trout (B) cat\nResponse:",
                "The answer is B. BECAUSE: A cat has fur. Mammals have fur.\\nFish have scales."),
}


# ---------------------------------------------------------------- prompts


def test_golden_covers_every_format():
    assert set(MAMMAL_GOLDEN) == set(PROMPT_FORMATS)
    assert len(PROMPT_FORMATS) == 24 and PROMPT_FORMATS[-1] == "QCM-AEL"


@pytest.mark.parametrize("prompt_format", PROMPT_FORMATS)
def test_every_format_golden(prompt_format):
    assert build_prompt(MAMMAL, prompt_format) == MAMMAL_GOLDEN[prompt_format]


def test_lavin_recipe_example():
    prompt, target = build_prompt(STATES, "QCM-ALE")
    assert prompt == (
        "Question: Which of these states is farthest north?\nContext: N/A\n"
        "Options: (A) West Virginia (B) Louisiana (C) Arizona (D) Oklahoma\nResponse:"
    )
    assert target == "The answer is A. BECAUSE: Maps show directions. West Virginia is farthest north."


def test_empty_lecture_and_solution_keep_trailing_because():
    assert build_prompt(PENCIL, "QCM-ALE") == (
        "Question: Is a pencil a solid or a liquid?\nContext: N/A\nOptions: (A) a solid (B) a liquid\nResponse:",
        "The answer is A. BECAUSE:",
    )
    assert build_prompt(PENCIL, "QCM-AL")[1] == "The answer is A. BECAUSE:"
    assert build_prompt(PENCIL, "QCM-LEA")[1] == "The answer is A."


def test_single_left_to_right_space_pass_and_literal_newlines():
    # question "What  is   this?" (2, 3 spaces), hint 4 spaces, choice "x  y", lecture/solution with
    # real newlines (-> backslash-n) and 2 / 3 spaces: 2 -> 1, 3 -> 2, 4 -> 2.
    assert build_prompt(SPACES, "QCM-LEA") == (
        "Question: What is  this?\nContext: A  hint\nOptions: (A) x y (B) z\nResponse:",
        "Line one.\\nLine two. Sol  three.\\n\\nEnd. The answer is A.",
    )
    assert build_prompt(SPACES, "QCLEM-A")[0] == (
        "Question: What is  this?\nContext: A  hint\nBECAUSE: Line one.\\nLine two. Sol  three.\\n\\nEnd.\n"
        "Options: (A) x y (B) z\nResponse:"
    )


def test_real_newlines_in_question_hint_and_choices_are_kept():
    problem = dict(MAMMAL, question="Look.\nWhich?", hint="Line\nbreak", choices=["a\nb", "c"], answer=0)
    assert build_prompt(problem, "QCM-A") == (
        "Question: Look.\nWhich?\nContext: Line\nbreak\nOptions: (A) a\nb (B) c\nResponse:",
        "The answer is A.",
    )


def test_five_choices():
    assert build_prompt(FIVE, "CQM-EA") == (
        "Context: N/A\nQuestion: Which number is largest?\nOptions: (A) 1 (B) 2 (C) 3 (D) 4 (E) 5\nResponse:",
        "Five is largest. The answer is E.",
    )


def test_caption_joins_hint_only_when_used():
    assert build_prompt(STATES, "CQM-A", use_caption=True, caption="A  map.")[0].startswith("Context: A map.\n")
    assert build_prompt(STATES, "CQM-A", use_caption=False, caption="A map.")[0].startswith("Context: N/A\n")
    assert build_prompt(MAMMAL, "CQM-A", use_caption=True, caption="")[0].startswith("Context: Both animals live on farms.\n")
    both = build_prompt(MAMMAL, "CQM-A", use_caption=True, caption="Two animals.")[0]
    assert both.startswith("Context: Both animals live on farms. Two animals.\nQuestion:")


def test_unknown_format_lists_valid_ones():
    with pytest.raises(ValueError, match="QCM-ALE") as err:
        build_prompt(MAMMAL, "QCM-XYZ")
    assert "CQM-A" in str(err.value) and "QCM-AEL" in str(err.value)
    with pytest.raises(ValueError):
        build_prompt(MAMMAL, "CQM-AEL")  # built by the reference but not offered


def test_letters():
    assert answer_letter(0) == "A" and answer_letter(4) == "E"
    assert choice_letters(3) == ["A", "B", "C"]
    for bad in (-1, 26, True, "0"):
        with pytest.raises(ValueError):
            answer_letter(bad)


# ---------------------------------------------------------------- reader


def _write_png(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), (200, 30, 30)).save(path)


def _write_corpus(root: Path, problems: dict, splits: dict, captions: dict | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "problems.json").write_text(json.dumps(problems))
    (root / "pid_splits.json").write_text(json.dumps(splits))
    if captions is not None:
        (root / "captions.json").write_text(json.dumps({"captions": captions}))
    return root


@pytest.fixture
def sqa(tmp_path):
    """The native layout: train 1-4, val 5-6, minival 6, with images for 1 (train) and 6 (val)."""
    root = _write_corpus(
        tmp_path / "scienceqa",
        {"1": STATES, "2": MAMMAL, "3": PENCIL, "4": SPACES, "5": FIVE, "6": MAP},
        {"train": ["1", "2", "3", "4"], "val": ["5", "6"], "test": [], "minival": ["6"]},
        captions={"1": "A map of the United States."},
    )
    _write_png(root / "images" / "train" / "1" / "image.png")
    _write_png(root / "images" / "val" / "6" / "image.png")
    return root


def _read(root: Path, **kw) -> tuple[list, DatasetReport]:
    report = DatasetReport("sqa")
    samples = list(READERS.get("scienceqa")(DatasetConfig(kind="scienceqa", path=str(root), **kw), report))
    return samples, report


def test_reads_train_split(sqa):
    samples, report = _read(sqa)
    assert [s.id for s in samples] == ["1", "2", "3", "4"]
    assert report.total == 4 and not report.skipped
    first = samples[0]
    assert [(m.role, m.content) for m in first.messages] == [
        ("user", "Question: Which of these states is farthest north?\nContext: N/A\n"
                 "Options: (A) West Virginia (B) Louisiana (C) Arizona (D) Oklahoma\nResponse:"),
        ("assistant", "The answer is A. BECAUSE: Maps show directions. West Virginia is farthest north."),
    ]
    assert "<image>" not in first.messages[0].content
    assert first.media == {"image": [(sqa / "images" / "train" / "1" / "image.png").resolve()]}
    assert first.kinds == ["image"]
    assert all(s.media == {} and s.kinds == [] for s in samples[1:])


def test_metadata(sqa):
    samples, _ = _read(sqa, prompt_format="CQM-A")
    meta = {s.id: s.metadata for s in samples}
    assert meta["1"] == {
        "subject": "social science", "grade": "grade4", "has_context": False, "has_image": True, "answer": 0,
        "choices": ["West Virginia", "Louisiana", "Arizona", "Oklahoma"], "split": "train", "prompt_format": "CQM-A",
    }
    assert meta["2"] == {
        "subject": "natural science", "grade": "grade2", "has_context": True, "has_image": False, "answer": 1,
        "choices": ["trout", "cat"], "split": "train", "prompt_format": "CQM-A",
    }
    assert (meta["3"]["has_context"], meta["3"]["has_image"]) == (False, False)
    assert samples[1].messages[0].content.startswith("Context: Both animals live on farms.\n")


def test_other_splits_and_images_of_mini_splits(sqa):
    samples, _ = _read(sqa, split="val", prompt_format="QCM-A")
    assert [s.id for s in samples] == ["5", "6"]
    assert samples[0].messages[1].content == "The answer is E." and samples[0].metadata["answer"] == 4
    # minival lists val problems; their images live under images/val (the problem's own split)
    samples, report = _read(sqa, split="minival")
    assert [s.id for s in samples] == ["6"] and report.total == 1
    assert samples[0].media["image"] == [(sqa / "images" / "val" / "6" / "image.png").resolve()]
    assert samples[0].metadata["split"] == "minival"
    assert _read(sqa, split="test") == ([], DatasetReport("sqa"))


def test_media_root_and_split_fallback(sqa, tmp_path):
    elsewhere = tmp_path / "imgs"
    _write_png(elsewhere / "train" / "1" / "image.png")
    samples, _ = _read(sqa, media_root=str(elsewhere), limit=1)
    assert samples[0].media["image"] == [(elsewhere / "train" / "1" / "image.png").resolve()]
    # a problem without its own split field uses config.split for the image directory
    root = _write_corpus(tmp_path / "nosplit", {"1": {k: v for k, v in STATES.items() if k != "split"}}, {"train": ["1"]})
    _write_png(root / "images" / "train" / "1" / "image.png")
    assert _read(root)[0][0].media["image"] == [(root / "images" / "train" / "1" / "image.png").resolve()]


def test_limit(sqa):
    samples, report = _read(sqa, limit=2)
    assert [s.id for s in samples] == ["1", "2"] and report.total == 2


def test_captions_only_with_use_caption(sqa):
    samples, _ = _read(sqa, prompt_format="CQM-A", use_caption=True, limit=2)
    assert samples[0].messages[0].content.startswith("Context: A map of the United States.\nQuestion:")
    assert samples[1].messages[0].content.startswith("Context: Both animals live on farms.\nQuestion:")
    assert samples[0].metadata["has_context"] is False  # captions never count as context
    (sqa / "captions.json").unlink()
    assert _read(sqa, limit=1)[0][0].messages[0].content.startswith("Question:")  # not opened without use_caption
    with pytest.raises(FileNotFoundError, match="captions.json"):
        _read(sqa, use_caption=True)


def test_dataset_level_errors(sqa, tmp_path):
    with pytest.raises(ValueError, match=r"'dev'.*available: minival, test, train, val"):
        _read(sqa, split="dev")
    with pytest.raises(ValueError, match="QCM-ALE"):
        _read(sqa, prompt_format="QCM-X")
    with pytest.raises(FileNotFoundError, match="media_root"):
        _read(sqa, media_root=str(tmp_path / "no_images"))
    missing = tmp_path / "empty"
    missing.mkdir()
    with pytest.raises(FileNotFoundError, match=r"problems\.json"):
        _read(missing)
    (missing / "problems.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"pid_splits\.json"):
        _read(missing)
    (missing / "pid_splits.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"pid_splits\.json"):
        _read(missing)


def test_errors_come_before_the_first_sample(tmp_path):
    config = DatasetConfig(kind="scienceqa", path=str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError):
        READERS.get("scienceqa")(config, DatasetReport("sqa"))


BAD = {
    "no_question": ({k: v for k, v in MAMMAL.items() if k != "question"}, "missing_field"),
    "empty_question": (dict(MAMMAL, question=""), "missing_field"),
    "int_question": (dict(MAMMAL, question=7), "malformed_record"),
    "no_choices": ({k: v for k, v in MAMMAL.items() if k != "choices"}, "missing_field"),
    "str_choices": (dict(MAMMAL, choices="trout cat"), "malformed_record"),
    "int_choice": (dict(MAMMAL, choices=["trout", 3]), "malformed_record"),
    "one_choice": (dict(MAMMAL, choices=["trout"], answer=0), "malformed_record"),
    "no_answer": ({k: v for k, v in MAMMAL.items() if k != "answer"}, "missing_field"),
    "str_answer": (dict(MAMMAL, answer="1"), "malformed_record"),
    "bool_answer": (dict(MAMMAL, answer=True), "malformed_record"),
    "answer_too_big": (dict(MAMMAL, answer=2), "malformed_record"),
    "answer_negative": (dict(MAMMAL, answer=-1), "malformed_record"),
    "bad_lecture": (dict(MAMMAL, lecture=["x"]), "malformed_record"),
    "bad_image_field": (dict(MAMMAL, image=5), "malformed_record"),
    "not_an_object": (["a", "list"], "malformed_record"),
    "image_missing": (dict(STATES), "missing_media"),
    "image_escapes": (dict(STATES, image="../../../outside.png"), "path_escapes_root"),
}


def test_bad_records_are_skipped_with_reasons(tmp_path):
    problems = {pid: problem for pid, (problem, _) in BAD.items()}
    problems.update({"good_text": MAMMAL, "good_image": STATES})
    split = ["good_text", *BAD, "not_in_problems", "good_image", "good_text"]  # last: a repeated pid
    root = _write_corpus(tmp_path / "bad", problems, {"train": split})
    _write_png(root / "images" / "train" / "good_image" / "image.png")
    _write_png(root / "outside.png")  # exists, but outside the image root <root>/images
    samples, report = _read(root)
    assert [s.id for s in samples] == ["good_text", "good_image"]
    assert report.total == len(split) == 21
    expected = {"missing_field": 4, "malformed_record": 13, "missing_media": 1, "path_escapes_root": 1}
    assert dict(report.skipped) == expected
    assert sum(expected.values()) + len(samples) == report.total
    assert all("problems.json" in d for d in report.examples["missing_field"] + report.examples["malformed_record"])


def test_skip_details_name_the_record(tmp_path):
    root = _write_corpus(tmp_path / "bad", {"2": MAMMAL}, {"train": ["2", "ghost", "2"]})
    samples, report = _read(root)
    assert [s.id for s in samples] == ["2"] and report.skipped == {"malformed_record": 2}
    ghost, repeated = report.examples["malformed_record"]
    assert "problems.json" in ghost and "ghost" in ghost and "not in problems.json" in ghost
    assert "pid_splits.json['train']" in repeated and "'2'" in repeated
