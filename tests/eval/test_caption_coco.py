"""Caption scores comparable with papers: cotune's Python PTB tokenization equals the COCO caption
toolkit's Java tokenizer (golden tokens always; live against pycocoevalcap where it and Java are
installed), and cotune's BLEU / ROUGE-L / CIDEr-D equal pycocoevalcap's end to end on fixed captions."""

from __future__ import annotations

import json
import shutil

import pytest

from cotune.cli.main import main
from cotune.eval.metrics.caption import caption
from cotune.eval.metrics.coco import coco_caption, coco_tokenize, toolkit_problem
from cotune.eval.metrics.ptb import tokenize

# Captions and the tokens coco-caption's Java tokenizer (Stanford PTBTokenizer 3.4.1, -lowerCase,
# then its punctuation removal) gave them, recorded with pycocoevalcap 1.2 and OpenJDK 17.
PTB_CASES = [
    ("A man's dog doesn't like the cat.",
     "a man 's dog does n't like the cat"),
    ('Two people (a man and a woman) are "walking" on the beach...',
     'two people -lrb- a man and a woman -rrb- are walking on the beach'),
    ("The dog-sized cat sat on a 3.5 meter wall; it's 10:30 now!",
     "the dog-sized cat sat on a 3.5 meter wall it 's 10:30 now"),
    ('A t-shirt, e.g. a red one, costs $5.00 - cheap?',
     'a t-shirt e.g. a red one costs $ 5.00 cheap'),
    ("Mr. Smith and Dr. Jones can't won't shouldn't cannot gonna",
     "mr. smith and dr. jones ca n't wo n't should n't can not gon na"),
    ("She said 'hello' to the kids' toys [in the box] {maybe}.",
     'she said hello to the kids toys -lsb- in the box -rsb- -lcb- maybe -rcb-'),
    ('An apple & oranges @ home #1 50% off -- really',
     'an apple & oranges @ home # 1 50 % off really'),
    ('A black and white photo of a cat in a U.S. city at 5 p.m.',
     'a black and white photo of a cat in a u.s. city at 5 p.m.'),
    ("they 're it's I'm you've we'll he'd o'clock rock'n'roll",
     "they 're it 's i 'm you 've we 'll he 'd o'clock rock 'n' roll"),
    ('A sign reads "STOP" near the road/path, 1,000 cars/day.',
     'a sign reads stop near the road/path 1,000 cars/day'),
    ("I wanna go, gotta run, lemme see, gimme that, 'tis fine",
     "i wan na go got ta run lem me see gim me that 't is fine"),
    ("A 3.5-meter pole, 5pm, 2x4 boards, AT&T store, at&t, the 1990s, 90's music",
     "a 3.5-meter pole 5pm 2x4 boards at&t store at & t the 1990s 90 's music"),
    ('Etc. the end etc. Mr. and Mrs. Brown, St. Louis, Jr. sr. vs. Inc. Co. Corp. Ltd. No. 5 Mt. Fuji',
     'etc. the end etc. mr. and mrs. brown st. louis jr. sr. vs. inc. co. corp. ltd. no. 5 mt. fuji'),
    ('A café in São Paulo – naïve résumé — done',
     'a café in são paulo naïve résumé done'),
    ('a man is riding a horse.a cat sits',
     'a man is riding a horse.a cat sits'),
    ('x-ray 24/7 cats:dogs 1:2 a+b a=b ~tilde *star ^caret <lt> |pipe \\back',
     'x-ray 24/7 cats dogs 1:2 a + b a = b ~ tilde * star ^ caret <lt> | pipe \\ back'),
    ('"It\'s OK," he said; the man\'s hat.',
     "it 's ok he said the man 's hat"),
    ("A man's, The Men's, It's its. Its'",
     "a man 's the men 's it 's its its"),
    ('I said no. The dog is no. 1 in the show, no. 5 too. Say no.',
     'i said no the dog is no. 1 in the show no. 5 too say no'),
    ("a man who can't, doesn't it? y'all ain't didn't",
     "a man who ca n't does n't it y' all ai n't did n't"),
    ('a dog,a cat;a bird!a fish?ok',
     'a dog a cat a bird!a fish?ok'),
    ('a dog .a cat',
     'a dog a cat'),
    ("A 'cool' dog's toy and dogs' toys 'n stuff",
     "a cool dog 's toy and dogs toys 'n stuff"),
    ('A man, woman, and child; plus "quoted \'nested\' text".',
     'a man woman and child plus quoted nested text'),
    ('There are 3 people at the 2nd floor of a building, 1st place.',
     'there are 3 people at the 2nd floor of a building 1st place'),
    ('a man in a blue shirt is holding a surfboard near the ocean .',
     'a man in a blue shirt is holding a surfboard near the ocean'),
    ('A group of people standing around a kitchen counter.',
     'a group of people standing around a kitchen counter'),
    ("A cat laying on top of a laptop computer's keyboard",
     "a cat laying on top of a laptop computer 's keyboard"),
    ('A stop sign that says "STOP" with graffiti on it',
     'a stop sign that says stop with graffiti on it'),
    ('The baseball player is swinging his bat at the ball...',
     'the baseball player is swinging his bat at the ball'),
    ('A bowl of fruit: apples, bananas and oranges.',
     'a bowl of fruit apples bananas and oranges'),
    ('Two men playing Wii in a living room',
     'two men playing wii in a living room'),
    ('A close up of a cake with "Happy Birthday" written on it.',
     'a close up of a cake with happy birthday written on it'),
    ('An airplane flying over the city at 10,000 ft.',
     'an airplane flying over the city at 10,000 ft.'),
    ("A vintage car from the '60s parked on the street.",
     "a vintage car from the '60s parked on the street"),
    ('Four people posing for a photo @ the beach, smiling :)',
     'four people posing for a photo @ the beach smiling :-rrb-'),
    ("I can't believe it's not butter!",
     "i ca n't believe it 's not butter"),
    ("He's gotta be kidding, y'know?",
     "he 's got ta be kidding y' know"),
    ('A 3D printer printing a small toy; it costs $199.99.',
     'a 3d printer printing a small toy it costs $ 199.99'),
]

needs_toolkit = pytest.mark.skipif(toolkit_problem() is not None, reason=f"COCO caption toolkit unavailable: {toolkit_problem()}")


@pytest.mark.parametrize("text, tokens", PTB_CASES)
def test_python_tokens_equal_the_recorded_java_tokens(text, tokens):
    assert tokenize(text) == tokens.split()


@needs_toolkit
def test_python_tokens_equal_the_java_tokenizer_live():
    java = coco_tokenize({i: [text] for i, (text, _) in enumerate(PTB_CASES)})
    assert [tokenize(text) for text, _ in PTB_CASES] == [java[i][0].split() for i in range(len(PTB_CASES))]


CAPTIONS = [
    ("A man riding a horse on a beach.", ["A man rides a horse along the beach.", "A person on a horse at the sea.", "Man riding horse on sandy beach"]),
    ("Two dogs playing in the snow", ["two dogs play in the snow", "A pair of dogs running through snow.", "dogs playing outside in winter"]),
    ("a plate of food (rice) with a fork", ["A plate with rice and vegetables.", "a dinner plate full of food (and a fork)"]),
    ("A cat's sitting on a red couch; it doesn't move.", ["A cat sits on a red sofa.", "a small cat lying on the couch", "the cat isn't moving"]),
    ("A t-shirt costs $5.00 at the U.S. store", ["a shirt on sale for $5 in a U.S. shop", "a t-shirt with a price tag"]),
    ("the the the the", ["The cat is on the mat.", "There is a cat on the mat."]),
]


@needs_toolkit
def test_scores_equal_pycocoevalcap_end_to_end(tmp_path, capsys):
    predictions, references = [c for c, _ in CAPTIONS], [r for _, r in CAPTIONS]
    ours, coco = caption(predictions, references), coco_caption(predictions, references)
    assert ours["tokenizer"] == "ptb-python" and coco["tokenizer"] == "ptb-java" and coco["count"] == ours["count"] == 6
    for name in ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L", "CIDEr-D"):
        assert ours[name] == pytest.approx(coco[name], rel=1e-9, abs=1e-12), name
    assert 0 < coco["METEOR"] < 1
    assert coco["SPICE"] is None or 0 <= coco["SPICE"] <= 1
    # cotune score caption --toolkit coco prints the toolkit's result.
    path = tmp_path / "preds.jsonl"
    path.write_text("".join(json.dumps({"id": i, "prediction": p, "references": r}) + "\n" for i, (p, r) in enumerate(CAPTIONS)))
    assert main(["score", "caption", "--predictions", str(path), "--toolkit", "coco", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["METEOR"] == pytest.approx(coco["METEOR"]) and printed["tokenizer"] == "ptb-java"
    assert main(["score", "caption", "--predictions", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["CIDEr-D"] == pytest.approx(ours["CIDEr-D"])


@pytest.mark.skipif(toolkit_problem() is None, reason="the toolkit is installed; this checks the message without it")
def test_without_the_toolkit_the_coco_option_is_one_line_naming_the_fix(tmp_path, capsys):
    path = tmp_path / "preds.jsonl"
    path.write_text(json.dumps({"id": 1, "prediction": "a dog", "references": ["a dog"]}) + "\n")
    assert main(["score", "caption", "--predictions", str(path), "--toolkit", "coco"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cotune: error: ") and err.count("\n") == 1 and ("cotune[coco]" in err or "java" in err)
    assert shutil.which("java") is None or "cotune[coco]" in err
