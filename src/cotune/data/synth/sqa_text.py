"""Synthetic ScienceQA problems without an image: physics and chemistry comparisons, money and
markets, and word skills, some with a text context (``hint``, the TXT column) and some with none
(the NO column). Each builder is ``build(rng) -> Problem`` and computes its answer from the numbers
or words it drew.
"""

from __future__ import annotations

import numpy as np

from cotune.data.synth.common import pick
from cotune.data.synth.problem import LAN, NAT, SOC, Problem, fixed, grade, shuffled
from cotune.data.synth.scenes import COLORS

WORDS = (
    "apple", "badge", "bread", "cabin", "camel", "candle", "daisy", "dance", "eagle", "engine", "fable", "feather",
    "garden", "giant", "habit", "honey", "igloo", "island", "jacket", "jelly", "kettle", "kite", "ladder", "lemon",
    "magnet", "meadow", "napkin", "nest", "ocean", "orbit", "paddle", "pencil", "quilt", "rabbit", "river", "saddle",
    "silver", "table", "tiger", "umbrella", "valley", "violin", "wagon", "window", "yellow", "zebra",
)
NAMES = (("Ava", "she"), ("Ben", "he"), ("Maya", "she"), ("Leo", "he"), ("Zoe", "she"), ("Omar", "he"), ("Lily", "she"), ("Sam", "he"))
THINGS = ("kite", "hat", "bike", "ball", "cup", "scarf", "boat", "backpack")
SELLERS = (("loaves of bread", "A bakery"), ("tickets", "A theater"), ("bikes", "A bike shop"), ("melons", "A farm stand"))
ITEMS = (("a pencil", 0.75), ("a notebook", 2.50), ("an apple", 0.60), ("a sandwich", 4.25), ("a toy car", 3.10),
         ("a ruler", 1.20), ("a box of crayons", 2.95), ("a water bottle", 1.80))


def motion_speed(rng: np.random.Generator) -> Problem:
    vehicle, unit = pick(rng, ("car", "bus", "boat", "train", "motorcycle")), pick(rng, ("kilometers", "miles"))
    hours, heading = int(pick(rng, (2, 5, 10))), pick(rng, ("north", "south", "east", "west"))
    d1, d2 = (int(d) * 10 for d in rng.choice(np.arange(5, 80), size=2, replace=False))
    faster = bool(rng.random() < 0.5)
    describe = "a {v} that moved {d} {u} {h} in {t} hours"
    options = [describe.format(v=vehicle, d=d, u=unit, h=heading, t=hours) for d in (d1, d2)]
    target = options[0] if (d1 > d2) == faster else options[1]
    choices, answer = shuffled(rng, target, [o for o in options if o != target])
    word = "higher" if faster else "lower"
    return Problem(
        f"Compare the motion of two {vehicle}s. Which {vehicle} was moving at a {word} speed?", choices, answer, NAT,
        grade(rng, 5, 8), "velocity",
        lecture="An object's speed tells you how fast the object is moving. When two objects move for the same amount of time, "
                "the one that moved farther was moving at a higher speed.",
        solution=f"Both {vehicle}s moved for {hours} hours. The {vehicle} that moved {max(d1, d2) if faster else min(d1, d2)} {unit} "
                 f"moved {'farther' if faster else 'less far'}, so it was moving at a {word} speed.",
    )


def concentration(rng: np.random.Generator) -> Problem:
    color, volume = pick(rng, list(COLORS)), int(pick(rng, (25, 30, 35, 40, 45, 50)))
    case = pick(rng, ("A", "B", "same"))
    low = int(rng.integers(3, 12))
    high = low if case == "same" else low + int(rng.integers(1, 6))
    a, b = (high, low) if case == "A" else (low, high)
    neither = "neither; their concentrations are the same"
    correct = {"A": "Solution A", "B": "Solution B", "same": neither}[case]
    choices, answer = fixed(("Solution A", "Solution B", neither), correct)
    hint = (f"Two solutions each hold {volume} mL of solvent. Solution A has {a} {color} solute particles "
            f"and Solution B has {b} {color} solute particles.")
    return Problem(
        f"Which solution has a higher concentration of {color} particles?", choices, answer, NAT, grade(rng, 7, 9),
        "solutions", hint=hint,
        lecture="A solution is made up of a solute dissolved in a solvent. The concentration of a solute is the number of "
                "solute particles per volume of solvent: concentration = particles / volume.",
        solution=f"Solution A has {a} particles in {volume} mL and Solution B has {b} particles in {volume} mL. "
                 + ("The concentrations are the same." if case == "same"
                    else f"{correct} has more particles in the same volume, so it has the higher concentration."),
    )


def kinetic_energy(rng: np.random.Generator) -> Problem:
    obj = pick(rng, ("ball", "cart", "box", "sled"))
    while True:
        (m1, m2), (v1, v2) = rng.integers(1, 11, size=2), rng.integers(1, 11, size=2)
        e1, e2 = 0.5 * m1 * v1**2, 0.5 * m2 * v2**2
        if e1 != e2:
            break
    more = bool(rng.random() < 0.5)
    options = [f"a {m}-kilogram {obj} moving at {v} meters per second" for m, v in ((m1, v1), (m2, v2))]
    target = options[0] if (e1 > e2) == more else options[1]
    choices, answer = shuffled(rng, target, [options[1] if target == options[0] else options[0]])
    word = "more" if more else "less"
    return Problem(
        f"Which object has {word} kinetic energy?", choices, answer, NAT, grade(rng, 8, 11), "kinetic energy",
        lecture="Kinetic energy is the energy of motion: KE = 1/2 x mass x speed^2, in joules when mass is in kilograms "
                "and speed in meters per second.",
        solution=f"The first has 1/2 x {m1} x {v1}^2 = {e1:g} J and the second 1/2 x {m2} x {v2}^2 = {e2:g} J, "
                 f"so {target} has {word} kinetic energy.",
    )


def enough_money(rng: np.random.Generator) -> Problem:
    listed = [ITEMS[i] for i in rng.permutation(len(ITEMS))[:3]]
    (first, p1), (second, p2) = listed[0], listed[1]
    total = round(p1 + p2, 2)
    enough = bool(rng.random() < 0.5)
    # Short by 5 cents up to almost the whole total, never a negative amount.
    cents = int(rng.integers(0, 300)) if enough else -int(rng.integers(5, min(200, round(total * 100))))
    money = round(total + cents / 100, 2)
    name, pronoun = pick(rng, NAMES)
    hint = "Price list: " + ", ".join(f"{item} costs ${price:.2f}" for item, price in listed) + "."
    choices, answer = fixed(("yes", "no"), "yes" if enough else "no")
    return Problem(
        f"{name} has ${money:.2f}. Does {pronoun} have enough money to buy {first} and {second}?", choices, answer, SOC,
        grade(rng, 3, 5), "economics", hint=hint,
        lecture="To find out whether you have enough money, add up the prices of what you want to buy "
                "and compare the total with the money you have.",
        solution=f"{first.capitalize()} and {second} cost ${p1:.2f} + ${p2:.2f} = ${total:.2f}. ${money:.2f} is "
                 f"{'at least' if enough else 'less than'} ${total:.2f}, so {pronoun} {'has' if enough else 'does not have'} enough money.",
    )


def surplus_shortage(rng: np.random.Generator) -> Problem:
    goods, seller = pick(rng, SELLERS)
    supply = int(rng.integers(10, 60))
    surplus = bool(rng.random() < 0.5)
    demand = supply - int(rng.integers(3, 9)) if surplus else supply + int(rng.integers(3, 12))
    hint = f"{seller} has {supply} {goods} for sale at the current price. At that price, {demand} people each want to buy one."
    choices, answer = fixed(("shortage", "surplus"), "surplus" if surplus else "shortage")
    return Problem(
        pick(rng, ("Is there a surplus or a shortage of {g}?", "At the current price, is there a surplus or a shortage of {g}?"))
        .format(g=goods),
        choices, answer, SOC, grade(rng, 7, 9), "supply and demand", hint=hint,
        lecture="There is a surplus if there is too much of something for sale at a given price. "
                "There is a shortage if there is not enough of something for sale at a given price.",
        solution=f"{supply} {goods} are for sale and {demand} people want one. There are "
                 f"{'more' if surplus else 'fewer'} for sale than people want, so there is a {'surplus' if surplus else 'shortage'}.",
    )


def alphabetical(rng: np.random.Generator) -> Problem:
    words = sorted(str(w) for w in rng.choice(WORDS, size=int(rng.integers(2, 4)), replace=False))
    choices, answer = shuffled(rng, words[0], words[1:])
    return Problem(
        pick(rng, ("Which word would come first in alphabetical order?", "Which word comes first in ABC order?")),
        choices, answer, LAN, grade(rng, 2, 4), "alphabetical order",
        lecture="Words in alphabetical order are sorted by their first letter, then by the next letter when the first letters match.",
        solution=f"In alphabetical order the words go {', '.join(words)}. {words[0].capitalize()} comes first.",
    )


def guide_words(rng: np.random.Generator) -> Problem:
    words = sorted(str(w) for w in rng.choice(WORDS, size=4, replace=False))
    # The word off the page comes after the guide words or before them.
    low, inside, high, outside = words if rng.random() < 0.5 else (*words[1:], words[0])
    choices, answer = shuffled(rng, inside, [outside])
    return Problem(
        f"Which word would you find on a dictionary page with the guide words {low} - {high}?", choices, answer, LAN,
        grade(rng, 7, 8), "reference skills",
        lecture="Guide words at the top of a dictionary page are the first and last words on that page. "
                "A word is on the page if it comes between them in alphabetical order.",
        solution=f"{inside.capitalize()} comes between {low} and {high} in alphabetical order; {outside} does not.",
    )


def reading(rng: np.random.Generator) -> Problem:
    (name, pronoun), thing = pick(rng, NAMES), pick(rng, THINGS)
    color = pick(rng, list(COLORS))
    place = pick(rng, ("in the garage", "by the door", "under the bed", "in a big box"))
    hint = f"{name} has a {color} {thing}. {pronoun.capitalize()} keeps it {place}."
    wrong = [str(c) for c in rng.permutation(list(COLORS)) if c != color][:2]
    choices, answer = shuffled(rng, color, wrong)
    return Problem(
        pick(rng, ("What color is {n}'s {t}?", "According to the text, what color is {n}'s {t}?")).format(n=name, t=thing),
        choices, answer, LAN, grade(rng, 1, 3), "reading comprehension", hint=hint,
        lecture="Read the text closely. The answer to a question about a text is often stated in it.",
        solution=f"The text says that {name} has a {color} {thing}.",
    )
