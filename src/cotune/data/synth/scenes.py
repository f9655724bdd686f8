"""Rendered scenes for the synthetic ScienceQA problems: coloured shapes on a 4x4 grid.

Shapes sit one per grid cell (with a little jitter), so they never overlap and counting, colour,
size and position are unambiguous in a 224x224 image (the size image encoders take).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SIZE = 224
GRID = 4
CELL = SIZE // GRID
COLORS = {
    "red": (220, 40, 40), "blue": (40, 80, 220), "green": (40, 170, 60),
    "yellow": (235, 200, 20), "purple": (140, 60, 190), "orange": (245, 140, 30),
}
SHAPES = ("circle", "square", "triangle", "star")
#: Radii in pixels: small and big differ by ~2x so "bigger" is never a close call.
RADIUS = {"small": (9, 12), "medium": (15, 18), "big": (22, 25)}
BACKGROUND = {"plain": (255, 255, 255), "map": (232, 240, 215)}


@dataclass(frozen=True)
class Shape:
    kind: str
    color: str
    cell: tuple[int, int]  # (row, column), row 0 at the top
    size: str = "medium"

    @property
    def name(self) -> str:
        return f"{self.color} {self.kind}"


def free_cells(rng: np.random.Generator, n: int, exclude: tuple[tuple[int, int], ...] = ()) -> list[tuple[int, int]]:
    """``n`` distinct grid cells in random order, none in ``exclude``."""
    cells = [(r, c) for r in range(GRID) for c in range(GRID) if (r, c) not in exclude]
    if n > len(cells):
        raise ValueError(f"{n} shapes do not fit the {GRID}x{GRID} grid ({len(cells)} free cells)")
    return [cells[i] for i in rng.permutation(len(cells))[:n]]


def render(shapes: list[Shape], rng: np.random.Generator, background: str = "plain", compass: bool = False) -> Image.Image:
    """The scene as an RGB image [224, 224]; ``compass`` draws an N arrow in the top-right cell."""
    image = Image.new("RGB", (SIZE, SIZE), BACKGROUND[background])
    draw = ImageDraw.Draw(image)
    if background == "map":
        for k in range(1, GRID):
            draw.line([(k * CELL, 0), (k * CELL, SIZE)], fill=(205, 215, 190))
            draw.line([(0, k * CELL), (SIZE, k * CELL)], fill=(205, 215, 190))
    if compass:
        x = SIZE - CELL // 2
        draw.line([(x, 40), (x, 14)], fill=(0, 0, 0), width=2)
        draw.polygon([(x, 8), (x - 5, 16), (x + 5, 16)], fill=(0, 0, 0))
        draw.text((x - 3, 42), "N", fill=(0, 0, 0))
    for shape in shapes:
        low, high = RADIUS[shape.size]
        radius = int(rng.integers(low, high + 1))
        slack = CELL // 2 - radius - 2
        jitter = rng.integers(-slack, slack + 1, size=2) if slack > 0 else (0, 0)
        x = shape.cell[1] * CELL + CELL // 2 + int(jitter[0])
        y = shape.cell[0] * CELL + CELL // 2 + int(jitter[1])
        _draw(draw, shape.kind, x, y, radius, COLORS[shape.color])
    return image


def _draw(draw: ImageDraw.ImageDraw, kind: str, x: int, y: int, r: int, fill: tuple[int, int, int]) -> None:
    if kind == "circle":
        draw.ellipse([x - r, y - r, x + r, y + r], fill=fill)
    elif kind == "square":
        h = round(r * 0.85)
        draw.rectangle([x - h, y - h, x + h, y + h], fill=fill)
    elif kind == "triangle":
        draw.polygon([(x, y - r), (x - r, y + round(r * 0.8)), (x + r, y + round(r * 0.8))], fill=fill)
    elif kind == "star":
        angles = np.pi / 2 + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, r, r * 0.45)
        draw.polygon([(x + float(a) * np.cos(t), y - float(a) * np.sin(t)) for a, t in zip(radii, angles)], fill=fill)
    else:
        raise ValueError(f"unknown shape {kind!r}; valid: {', '.join(SHAPES)}")
