"""Metrics against hand-computed and published values: ScienceQA breakdown, extraction, VQA, captions, audio QA."""

from __future__ import annotations

import logging
import math
from itertools import combinations

import pytest

from cotune.eval import METRICS, RULES, Extraction, ScoreError, extract_answer
from cotune.eval.metrics.audioqa import audioqa
from cotune.eval.metrics.caption import caption, cider_d, corpus_bleu, lcs_length, rouge_l, tokenize
from cotune.eval.metrics.scienceqa import COLUMNS, multiple_choice, problem_columns, scienceqa
from cotune.eval.metrics.textqa import text_match
from cotune.eval.metrics.vqa import normalize_answer, vqa
from cotune.registry import UnknownNameError
from cotune.testing.corpus import SCIENCEQA_PREDICTIONS, SCIENCEQA_PROBLEMS, SCIENCEQA_TEST


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    @property
    def text(self) -> str:
        return "\n".join(self.messages)


@pytest.fixture
def caplog_cotune():
    """Warnings of cotune.eval (the "cotune" logger may not propagate to pytest's caplog once the CLI set it up)."""
    handler, logger = _Records(), logging.getLogger("cotune.eval")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


# ----------------------------------------------------------------------------------- ScienceQA
def test_scienceqa_breakdown_hand_computed():
    result = scienceqa(SCIENCEQA_PROBLEMS, SCIENCEQA_PREDICTIONS, SCIENCEQA_TEST)
    expected = {
        "NAT": 50.0,     # p1 right, p2 wrong
        "SOC": 100.0,    # p3, p6
        "LAN": 0.0,      # p4 unparsed, p5 missing
        "TXT": 100.0,    # p1, p3, p6
        "IMG": 66.67,    # p1, p6 of p1, p2, p6
        "NO": 0.0,       # p4, p5
        "G1-6": 66.67,   # p1, p3 of p1, p3, p5
        "G7-12": 33.33,  # p6 of p2, p4, p6
        "Avg": 50.0,     # 3 of 6: the missing p5 counts as wrong
    }
    assert {c: result[c] for c in COLUMNS} == expected
    assert result["accuracy"] == 50.0
    assert result["counts"] == {"NAT": 2, "SOC": 2, "LAN": 2, "TXT": 3, "IMG": 3, "NO": 2, "G1-6": 3, "G7-12": 3, "Avg": 6}
    assert result["correct"]["IMG"] == 2 and result["correct"]["Avg"] == 3
    assert (result["total"], result["missing"], result["unparsed"], result["out_of_range"]) == (6, 1, 1, 0)
    assert "rules" not in result


def test_scienceqa_overlap_and_partitions():
    counts = scienceqa(SCIENCEQA_PROBLEMS, {}, SCIENCEQA_TEST)["counts"]
    both = sum(1 for pid in SCIENCEQA_TEST if {"TXT", "IMG"} <= set(problem_columns(SCIENCEQA_PROBLEMS[pid])))
    assert both == 2  # TXT and IMG overlap ...
    assert counts["TXT"] + counts["IMG"] - both + counts["NO"] == counts["Avg"]  # ... NO is the rest
    assert counts["NAT"] + counts["SOC"] + counts["LAN"] == counts["G1-6"] + counts["G7-12"] == counts["Avg"]


def test_scienceqa_default_pids_rules_and_empty_subsets():
    only_nat = {"p1": SCIENCEQA_PROBLEMS["p1"]}
    result = scienceqa(only_nat, {"p1": 0}, rules={"p1": "paren-mark"})
    assert result["NAT"] == result["Avg"] == 100.0
    assert result["SOC"] is None and result["counts"]["SOC"] == 0  # empty subset: no percentage
    assert result["rules"] == {"answer-is": 0, "paren-mark": 1, "choice-text": 0, "none": 0}


def test_scienceqa_out_of_range_counts_wrong_with_warning(caplog_cotune):
    result = scienceqa(SCIENCEQA_PROBLEMS, {"p1": 5, "p3": 0}, SCIENCEQA_TEST)
    assert result["out_of_range"] == 1 and result["Avg"] == round(100 / 6, 2)
    assert "outside their problem's choices count as wrong" in caplog_cotune.text and "p1" in caplog_cotune.text


def test_scienceqa_unknown_pid_and_bad_values_are_errors():
    with pytest.raises(ScoreError, match=r"2 of 3 predictions .* not scored.*'p7'.*'zz'"):
        scienceqa(SCIENCEQA_PROBLEMS, {"p1": 0, "p7": 0, "zz": 1}, SCIENCEQA_TEST)
    for bad in ("A", 1.0, True, None):
        with pytest.raises(ValueError, match="must be a choice index"):
            scienceqa(SCIENCEQA_PROBLEMS, {"p1": bad}, SCIENCEQA_TEST)
    with pytest.raises(ScoreError, match="subject 'biology'"):
        scienceqa({"x": {**SCIENCEQA_PROBLEMS["p1"], "subject": "biology"}}, {})
    with pytest.raises(ScoreError, match="grade 'grade13'"):
        scienceqa({"x": {**SCIENCEQA_PROBLEMS["p1"], "grade": "grade13"}}, {})
    with pytest.raises(ScoreError, match="not in the problems"):
        scienceqa(SCIENCEQA_PROBLEMS, {}, ["p1", "nope"])
    with pytest.raises(ScoreError, match="unknown extraction rule"):
        scienceqa(SCIENCEQA_PROBLEMS, {"p1": 0}, SCIENCEQA_TEST, rules={"p1": "guess"})


def test_multiple_choice_and_registry():
    assert multiple_choice({"a": 1, "b": 0}, {"a": 1, "b": 1, "c": 2}) == {"accuracy": 33.33, "correct": 1, "count": 3, "missing": 1}
    assert METRICS.names() == ["audioqa", "caption", "caption-coco", "mme", "multiple-choice", "scienceqa", "text-match", "vqa"]
    assert METRICS.get("scienceqa") is scienceqa
    with pytest.raises(UnknownNameError, match="did you mean 'vqa'"):
        METRICS.get("vqa2")


# ----------------------------------------------------------------------------------- extraction
CHOICES = ["Alaska", "Hawaii", "Texas"]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("The answer is B. BECAUSE: islands.", (1, "answer-is")),
        ("The answer is (C).", (2, "answer-is")),
        ("The answer is E. Maybe The answer is A.", (0, "answer-is")),  # first match *within range*
        ("The answer is E. Or (B), surely.", (1, "paren-mark")),
        ("Not (D) but (C) or (A).", (2, "paren-mark")),  # first mark within range
        ("The answer is Alaska.", (0, "choice-text")),  # 'A' running into a word is not a letter
        ("  hawaii. ", (1, "choice-text")),
        ("the answer is texas", (2, "choice-text")),  # rule 1 is case-sensitive, rule 3 is not
        ("Hawaii is nice", (-1, "none")),
        ("", (-1, "none")),
    ],
)
def test_extraction_rules(text, expected):
    assert extract_answer(text, CHOICES) == Extraction(*expected)


def test_extraction_is_deterministic_and_checked():
    assert {extract_answer("no idea", CHOICES) for _ in range(20)} == {Extraction(-1, "none")}
    assert RULES == ("answer-is", "paren-mark", "choice-text", "none")
    with pytest.raises(ValueError, match="1 to 26 choices"):
        extract_answer("The answer is A.", [])
    with pytest.raises(TypeError):
        extract_answer(None, CHOICES)


# ----------------------------------------------------------------------------------- VQA
@pytest.mark.parametrize(
    "raw, normal",
    [
        ("Two", "2"),
        ("The dog.", "dog"),
        ("3.5", "3.5"),
        ("dont", "don't"),
        ("black/white", "black white"),
        ("hello, world", "hello world"),  # touches a space: deleted
        ("100,978", "100978"),            # comma between digits: deleted
        ("red-and-white bus", "red and white bus"),
        ("10:30", "10:30"),               # colons kept
        ("None", "0"),                    # the official map's 'none'
        ("\tAn apple!\n", "apple"),
        ("Yes.", "yes"),
    ],
)
def test_vqa_normalisation(raw, normal):
    assert normalize_answer(raw) == normal


def official_loo(prediction: str, refs: list[str]) -> float:
    """The official definition written out: mean over the 10 subsets of 9 of min(#matches / 3, 1)."""
    subsets = list(combinations(range(10), 9))
    return sum(min(sum(refs[i] == prediction for i in subset) / 3, 1) for subset in subsets) / len(subsets)


@pytest.mark.parametrize("matches, expected", [(0, 0.0), (1, 30.0), (2, 60.0), (3, 90.0), (4, 100.0), (10, 100.0)])
def test_vqa_soft_accuracy_ten_references(matches, expected):
    refs = ["Cat"] * matches + ["dog"] * (10 - matches)
    result = vqa(["a cat"], [refs])
    assert result["accuracy"] == expected == round(100 * official_loo("cat", [normalize_answer(r) for r in refs]), 2)
    assert result["exact_match"] == (100.0 if matches else 0.0)


def test_vqa_one_and_other_reference_counts():
    result = vqa(["Two", "blue", "red"], [["2"], ["blue", "blue", "green"], ["green"]])
    # item 1: exact match 1; item 2: three references, min(2/3, 1); item 3: 0.
    assert result["accuracy"] == round(100 * (1 + 2 / 3 + 0) / 3, 2) == 55.56
    assert result["exact_match"] == 66.67
    assert result["references_per_item"] == {1: 2, 3: 1}
    with pytest.raises(ScoreError, match="non-empty list"):
        vqa(["x"], [[]])
    with pytest.raises(ScoreError, match="no items"):
        vqa([], [])


# ----------------------------------------------------------------------------------- captions
# The BLEU example of the NLTK documentation (sentence_bleu 0.5045..., corpus_bleu 0.5920...).
H1 = "It is a guide to action which ensures that the military always obeys the commands of the party".split()
R1 = [
    "It is a guide to action that ensures that the military will forever heed Party commands".split(),
    "It is the guiding principle which guarantees the military forces always being under the command of the Party".split(),
    "It is the practical guide for the army always to heed the directions of the party".split(),
]
H2 = "he read the book because he was interested in world history".split()
R2 = ["he was interested in world history because he read the book".split()]


def test_bleu_published_examples():
    # coco-caption's epsilons (1e-15, 1e-9) move the published values by about 1e-10
    assert corpus_bleu([H1], [R1])[3] == pytest.approx(0.5045666840058485, rel=1e-9)
    assert corpus_bleu([H1, H2], [R1, R2])[3] == pytest.approx(0.5920778868801042, rel=1e-9)
    # Papineni et al. 2002: "the" x7 against two references has modified unigram precision 2/7.
    the7 = ["the"] * 7
    refs = [tokenize("The cat is on the mat."), tokenize("There is a cat on the mat.")]
    assert corpus_bleu([the7], [refs])[0] == pytest.approx(2 / 7)
    assert 0 < corpus_bleu([the7], [refs])[1] < 1e-7  # no bigram matches: no smoothing, only coco-caption's epsilon
    # brevity penalty: a 2-word candidate against a 4-word reference keeps precision 1, times exp(1 - 4/2)
    assert corpus_bleu([["a", "b"]], [[["a", "b", "c", "d"]]], n=1)[0] == pytest.approx(math.exp(-1))


def test_rouge_l_hand_computed():
    assert lcs_length("a b c d".split(), "a c d e f".split()) == 3
    p, r = 3 / 4, 3 / 5
    assert rouge_l("a b c d".split(), ["a c d e f".split()]) == pytest.approx((1 + 1.44) * p * r / (r + 1.44 * p))
    # max precision and max recall are taken over references separately (coco-caption)
    assert rouge_l(["a", "b"], [["a"], ["a", "b", "c", "d"]]) == pytest.approx((2.44 * 1 * 1) / (1 + 1.44 * 1))
    assert rouge_l([], [["a"]]) == 0.0


def test_cider_d_hand_computed():
    # Two items, N = 2: every n-gram has idf log 2. Item 1 equals its reference: cosine 1 for orders
    # 1 and 2, no 3- or 4-grams, so 10 * (1 + 1 + 0 + 0) / 4 = 5; item 2 shares nothing.
    assert cider_d([["a", "b"], ["c", "d"]], [[["a", "b"]], [["e", "f"]]]) == pytest.approx([5.0, 0.0])
    # "a b c" vs "a b": unigram cosine 2/sqrt(6), bigram 1/sqrt(2), length penalty exp(-1/72).
    hand = 10 * (2 / math.sqrt(6) + 1 / math.sqrt(2)) / 4 * math.exp(-1 / 72)
    assert cider_d([["a", "b", "c"], ["x"]], [[["a", "b"]], [["y"]]]) == pytest.approx([hand, 0.0])
    assert hand == pytest.approx(3.7564711970301365)  # pycocoevalcap 1.2's Cider on the same input
    # clipping: repeating a matching word does not raise the score above the exact match
    ref = [[["a", "b"]], [["y"]]]
    assert cider_d([["a", "a", "b"], ["x"]], ref)[0] < cider_d([["a", "b"], ["x"]], ref)[0]


# Five items scored by pycocoevalcap 1.2 (Bleu(4), Rouge, Cider) on the same tokens, in a throwaway venv.
COCO_CASES = [
    ("A man riding a horse on a beach.", ["A man rides a horse along the beach.", "A person on a horse at the sea.", "Man riding horse on sandy beach"]),
    ("Two dogs playing in the snow", ["two dogs play in the snow", "A pair of dogs running through snow.", "dogs playing outside in winter", "Two brown dogs in the snow!"]),
    ("a plate of food", ["A plate with rice and vegetables.", "a dinner plate full of food"]),
    ("A cat sitting on a red couch.", ["A cat sits on a red sofa.", "a small cat lying on the couch", "a kitten on a red couch"]),
    ("the the the the", ["The cat is on the mat.", "There is a cat on the mat."]),
]
COCO_VALUES = {
    "BLEU-1": 0.750998939249301, "BLEU-2": 0.6394525548415649, "BLEU-3": 0.38314268652231004,
    "BLEU-4": 0.2432275271048139, "ROUGE-L": 0.7009570818505633, "CIDEr-D": 1.906816586882685,
}


def test_caption_matches_coco_caption():
    result = caption([c for c, _ in COCO_CASES], [r for _, r in COCO_CASES])
    assert result["count"] == 5 and result["tokenizer"] == "ptb-python"
    for name, value in COCO_VALUES.items():
        assert result[name] == pytest.approx(value, rel=1e-9), name  # coco's BLEU epsilons differ at ~1e-11


def test_tokenize_ptb_like():
    # As coco-caption's Java tokenizer gives it: brackets stay as -lrb- / -rrb- (its punctuation list spells them in upper case).
    assert tokenize("A man's dog doesn't eat 3.5 well-known (red) apples... \"Yes\"!") == [
        "a", "man", "'s", "dog", "does", "n't", "eat", "3.5", "well-known", "-lrb-", "red", "-rrb-", "apples", "yes",
    ]
    with pytest.raises(ScoreError, match="empty after tokenisation"):
        caption(["..."], [["!"]])


# ----------------------------------------------------------------------------------- audio QA
def test_audioqa_yes_no_and_single_word():
    predictions = ["Yes", "no", "dog", "three", "car"]
    references = [["yes", "yes", "no"], ["no", "no", "no"], ["Dog", "a dog", "cat"], ["3", "3", "3"], ["bird"] * 3]
    result = audioqa(predictions, references)
    assert result == {
        "accuracy": round(100 * (2 / 3 + 1 + 2 / 3 + 1 + 0) / 5, 2),  # 66.67
        "yes_no_accuracy": round(100 * (2 / 3 + 1) / 2, 2),            # 83.33
        "single_word_accuracy": round(100 * (2 / 3 + 1 + 0) / 3, 2),   # 55.56
        "count": 5, "yes_no_count": 2, "single_word_count": 3,
    }
    assert audioqa(["yes"], [["Yes."]])["single_word_accuracy"] is None


# ----------------------------------------------------------------------------------- text match
@pytest.mark.parametrize("prediction, answers, correct", [
    ("The capital of France is Paris.", ["Paris"], True),
    ("Paris", ["paris"], True),
    ("I think it is PARIS!", ["paris"], True),
    ("It is Lyon.", ["Paris"], False),
    ("2 + 2 equals four.", ["4"], True),           # number words become digits on both sides
    ("The answer is 14.", ["4"], False),           # whole words: 4 is not in 14
    ("Cats are in a category of their own", ["cat"], False),
    ("A cat says meow.", ["meow", "miaow"], True),  # any acceptable answer
    ("It is the Pacific Ocean", ["Pacific Ocean"], True),
    ("The ocean is Pacific", ["Pacific Ocean"], False),  # a run of words, in order
    ("The opposite of hot is cold.", ["the cold"], True),  # articles dropped from the answer too
    ("black/white", ["white"], True),              # '/' between letters becomes a space
])
def test_text_match_single_items(prediction, answers, correct):
    assert text_match([prediction], [answers]) == {"accuracy": 100.0 if correct else 0.0, "count": 1, "correct": int(correct)}


def test_text_match_aggregate_and_errors():
    result = METRICS.get("text-match")(["Paris.", "blue", "no idea"], [["paris"], ["red"], ["Rome"]])
    assert result == {"accuracy": 33.33, "count": 3, "correct": 1}
    with pytest.raises(ScoreError, match="item 0.*empty after normalisation"):
        text_match(["anything"], [["the"]])
    with pytest.raises(ScoreError, match="2 predictions but 1"):
        text_match(["a", "b"], [["a"]])
    with pytest.raises(ScoreError, match="nothing to score"):
        text_match([], [])
