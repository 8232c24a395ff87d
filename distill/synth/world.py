"""The synthetic "shapes" world: 1-4 copies of one coloured shape on a 2x2 grid, some with a word.

A scene is pure data (`Scene`); `render` draws it. Everything is deterministic given a
`random.Random`, so `python -m distill synth --seed 0` writes byte-identical files on every machine
with the pinned Pillow.

All shapes of one scene share their colour and kind (sizes and placement inside a cell vary), and
a free cell may hold a sign with a word. So every question has one answer that needs no telling
apart of two different objects: a LLaVA trained from scratch on 2 CPU cores learns to read colour,
shape, count, position and words in minutes, while learning to pick one object among several
different ones takes it far longer than the tiny default's budget (see docs/tiny-world.md).
What a question is about still decides where to look: the sign for reading questions, the
shapes for the rest, which is what instruction-aware distillation (IVA) exploits.

Colours and shapes are drawn from skewed priors so that POPE-style "popular" negatives (frequent
objects absent from the image) differ from "random" ones, as in COCO.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import cache

from PIL import Image, ImageDraw, ImageFont

CANVAS = 64  # rendered resolution; the model's image processor resizes to its own
CELL = CANVAS // 2

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "blue": (40, 80, 220),
    "green": (40, 160, 60),
    "yellow": (235, 200, 30),
    "purple": (140, 60, 190),
    "orange": (245, 130, 20),
}
COLOUR_PRIOR = (0.26, 0.21, 0.17, 0.14, 0.12, 0.10)
SHAPES = ("circle", "square", "triangle", "diamond")
SHAPE_PRIOR = (0.34, 0.28, 0.22, 0.16)
POSITIONS = ("top left", "top right", "bottom left", "bottom right")  # cell index -> name
WORDS = ("cat", "dog", "sun", "car", "box", "hat", "cup", "pen", "key", "map", "bus", "egg")
NUMBER_WORDS = ("zero", "one", "two", "three", "four")


@dataclass(frozen=True)
class Shape:
    colour: str
    kind: str
    cell: int  # 0..3, see POSITIONS
    size: int  # pixels across
    dx: int  # jitter inside the cell
    dy: int

    @property
    def name(self) -> str:  # "red circle"
        return f"{self.colour} {self.kind}"

    @property
    def position(self) -> str:
        return POSITIONS[self.cell]


@dataclass(frozen=True)
class Scene:
    shapes: tuple[Shape, ...]
    word: str | None
    word_cell: int | None
    background: tuple[int, int, int]

    @property
    def colour(self) -> str:
        return self.shapes[0].colour

    @property
    def kind(self) -> str:
        return self.shapes[0].kind

    @property
    def object(self) -> str:  # "red circle"
        return self.shapes[0].name

    @property
    def count(self) -> int:
        return len(self.shapes)

    def at(self, cell: int) -> Shape | None:
        return next((s for s in self.shapes if s.cell == cell), None)


def sample_object(rng: random.Random) -> tuple[str, str]:
    colour = rng.choices(list(COLOURS), weights=COLOUR_PRIOR)[0]
    kind = rng.choices(SHAPES, weights=SHAPE_PRIOR)[0]
    return colour, kind


def sample_scene(rng: random.Random, word_probability: float = 0.35) -> Scene:
    # one copy often: position questions need a single shape
    count = rng.choices([1, 2, 3, 4], weights=[0.4, 0.2, 0.2, 0.2])[0]
    cells = rng.sample(range(4), count)
    colour, kind = sample_object(rng)
    shapes = []
    for cell in sorted(cells):
        size = rng.randint(18, 26)
        slack = (CELL - size) // 2 - 1
        shapes.append(Shape(colour, kind, cell, size, rng.randint(-slack, slack), rng.randint(-slack, slack)))
    free = [c for c in range(4) if c not in cells]
    word, word_cell = None, None
    if free and rng.random() < word_probability:
        word, word_cell = rng.choice(WORDS), rng.choice(free)
    tint = rng.randint(235, 255)
    return Scene(tuple(shapes), word, word_cell, (tint, tint, rng.randint(235, 255)))


def _cell_origin(cell: int) -> tuple[int, int]:
    return (cell % 2) * CELL, (cell // 2) * CELL


def _draw_shape(draw: ImageDraw.ImageDraw, shape: Shape) -> None:
    x0, y0 = _cell_origin(shape.cell)
    cx, cy = x0 + CELL // 2 + shape.dx, y0 + CELL // 2 + shape.dy
    r = shape.size // 2
    fill = COLOURS[shape.colour]
    if shape.kind == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape.kind == "square":
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape.kind == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    elif shape.kind == "diamond":
        draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill)
    else:
        raise ValueError(f"unknown shape kind {shape.kind!r}")


@cache
def _font() -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=13)


def _draw_word(draw: ImageDraw.ImageDraw, word: str, cell: int) -> None:
    x0, y0 = _cell_origin(cell)
    draw.rectangle([x0 + 2, y0 + 6, x0 + CELL - 3, y0 + CELL - 7], fill=(205, 205, 205))
    left, top, right, bottom = draw.textbbox((0, 0), word, font=_font())
    tx = x0 + (CELL - (right - left)) // 2 - left
    ty = y0 + (CELL - (bottom - top)) // 2 - top
    draw.text((tx, ty), word, fill=(0, 0, 0), font=_font())


def render(scene: Scene) -> Image.Image:
    image = Image.new("RGB", (CANVAS, CANVAS), scene.background)
    draw = ImageDraw.Draw(image)
    for shape in scene.shapes:
        _draw_shape(draw, shape)
    if scene.word is not None and scene.word_cell is not None:
        _draw_word(draw, scene.word, scene.word_cell)
    return image
