"""Synthetic ScienceQA problems about a rendered scene (the IMG column): counting, colour, size,
map directions and shape names. Each builder is ``build(rng) -> Problem``; the answer is read off
the scene it renders, so the image alone decides it.
"""

from __future__ import annotations

import numpy as np

from cotune.data.synth.common import pick
from cotune.data.synth.problem import LAN, NAT, SOC, Problem, fixed, grade, shuffled
from cotune.data.synth.scenes import COLORS, GRID, SHAPES, Shape, free_cells, render

DIRECTIONS = ("north", "south", "east", "west")
WHERE = {"north": "above", "south": "below", "east": "to the right of", "west": "to the left of"}


def _others(rng: np.random.Generator, n: int, avoid: set[tuple[str, str]], kinds=SHAPES) -> list[tuple[str, str]]:
    """``n`` random (kind, color) pairs not in ``avoid`` (repeats allowed)."""
    pairs = [(k, c) for k in kinds for c in COLORS if (k, c) not in avoid]
    return [pairs[i] for i in rng.integers(len(pairs), size=n)]


def count_shapes(rng: np.random.Generator) -> Problem:
    kind, color = pick(rng, SHAPES), pick(rng, list(COLORS))
    n, extra = int(rng.integers(1, 7)), int(rng.integers(0, 5))
    pairs = [(kind, color)] * n + _others(rng, extra, {(kind, color)})
    shapes = [Shape(k, c, cell) for (k, c), cell in zip(pairs, free_cells(rng, len(pairs)))]
    wrong = [str(v) for v in rng.permutation([v for v in range(max(1, n - 3), n + 4) if v != n])[:3]]
    choices, answer = shuffled(rng, str(n), wrong)
    question = pick(rng, (
        "How many {c} {k}s are in the picture?", "How many {c} {k}s are there?", "Count the {c} {k}s. How many are there?",
    )).format(c=color, k=kind)
    return Problem(
        question, choices, answer, NAT, grade(rng, 1, 2), "counting",
        lecture="To count objects, point to each one once and say the next number. Count only the objects the question asks about.",
        solution=f"There {'is' if n == 1 else 'are'} {n} {color} {kind}{'' if n == 1 else 's'} in the picture. "
                 "Shapes of other kinds or colors do not count.",
        image=render(shapes, rng),
    )


def shape_color(rng: np.random.Generator) -> Problem:
    kind, color = pick(rng, SHAPES), pick(rng, list(COLORS))
    others = _others(rng, int(rng.integers(0, 4)), set(), kinds=[k for k in SHAPES if k != kind])
    pairs = [(kind, color), *others]
    shapes = [Shape(k, c, cell) for (k, c), cell in zip(pairs, free_cells(rng, len(pairs)))]
    wrong = [str(c) for c in rng.permutation(list(COLORS)) if c != color][: int(rng.integers(2, 5))]
    choices, answer = shuffled(rng, color, wrong)
    question = pick(rng, ("What color is the {k}?", "Which color is the {k} in the picture?", "What is the color of the {k}?"))
    question = question.format(k=kind)
    return Problem(
        question, choices, answer, NAT, grade(rng, 1, 2), "colors",
        lecture="Color is a property of an object. You can use colors to describe and sort objects.",
        solution=f"Look at the {kind}. It is {color}.", image=render(shapes, rng),
    )


def compare_size(rng: np.random.Generator) -> Problem:
    kind = pick(rng, SHAPES)
    big, small = [str(c) for c in rng.permutation(list(COLORS))[:2]]
    cells = free_cells(rng, 2)
    shapes = [Shape(kind, big, cells[0], "big"), Shape(kind, small, cells[1], "small")]
    asks_bigger = bool(rng.random() < 0.5)
    word = pick(rng, ("bigger", "larger")) if asks_bigger else "smaller"
    target, other = (big, small) if asks_bigger else (small, big)
    choices, answer = shuffled(rng, f"the {target} {kind}", [f"the {other} {kind}"])
    hint = pick(rng, ("The picture shows two {k}s.", "Look at the two {k}s in the picture.", "There are two {k}s of different sizes."))
    hint = hint.format(k=kind)
    question = pick(rng, ("Which {k} is {w}?", "Look at the picture. Which {k} is {w}?")).format(k=kind, w=word)
    return Problem(
        question, choices, answer, NAT, grade(rng, 3, 6), "size", hint=hint,
        lecture="Size tells you how much space an object takes up. A bigger object takes up more space than a smaller one.",
        solution=f"The {big} {kind} takes up more space than the {small} {kind}, so the {target} {kind} is {word}.",
        image=render(shapes, rng),
    )


def map_direction(rng: np.random.Generator) -> Problem:
    compass = (0, GRID - 1)
    while True:
        a, b = free_cells(rng, 2, exclude=(compass,))
        if a[0] == b[0] or a[1] == b[1]:
            break
    direction = ("north" if a[0] < b[0] else "south") if a[1] == b[1] else ("west" if a[1] < b[1] else "east")
    (ka, ca), (kb, cb) = [(str(k), str(c)) for k, c in zip(rng.permutation(SHAPES)[:2], rng.permutation(list(COLORS))[:2])]
    extra = _others(rng, int(rng.integers(0, 3)), {(ka, ca), (kb, cb)})
    cells = free_cells(rng, len(extra), exclude=(compass, a, b))
    shapes = [Shape(ka, ca, a), Shape(kb, cb, b), *(Shape(k, c, cell) for (k, c), cell in zip(extra, cells))]
    choices, answer = fixed(DIRECTIONS, direction)
    question = pick(rng, (
        "Which direction is the {a} from the {b}?", "The {a} is in which direction from the {b}?",
        "Look at the map. Which direction is the {a} from the {b}?",
    )).format(a=f"{ca} {ka}", b=f"{cb} {kb}")
    return Problem(
        question, choices, answer, SOC, grade(rng, 3, 8), "geography",
        lecture="Maps have four cardinal directions: north, south, east and west. The compass rose shows north; "
                "on this map north is up, south is down, east is right and west is left.",
        solution=f"The {ca} {ka} is {WHERE[direction]} the {cb} {kb} on the map, so it is {direction} of it.",
        image=render(shapes, rng, background="map", compass=True),
    )


def name_shape(rng: np.random.Generator) -> Problem:
    kind, color = pick(rng, SHAPES), pick(rng, list(COLORS))
    shapes = [Shape(kind, color, free_cells(rng, 1)[0], "big")]
    wrong = [str(k) for k in rng.permutation([k for k in SHAPES if k != kind])[: int(rng.integers(2, 4))]]
    choices, answer = shuffled(rng, kind, wrong)
    question = pick(rng, (
        "Which word names the shape in the picture?", "Which word describes the shape you see?", "What is the name of this shape?",
    ))
    return Problem(
        question, choices, answer, LAN, grade(rng, 1, 3), "vocabulary",
        lecture="Words name things. A circle is round, a square has four equal sides, a triangle has three sides and a star has points.",
        solution=f"The shape in the picture is a {kind}.", image=render(shapes, rng),
    )
