"""`shapes`: a procedural text-to-image set with exact labels for prompt-adherence checks.

Each image holds one or two coloured shapes placed on a 3x3 grid of cells over a plain background.
Two-shape captions name both shapes and their relation ("a red circle to the left of a small blue
square"), so that prompt following does not saturate for blurry few-step samples. Item `i` of a set
with seed `s` is the same on every machine: its RNG is seeded with `(s, i)`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "cross")
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (50, 80, 230),
    "yellow": (240, 210, 40),
    "purple": (150, 60, 200),
    "cyan": (40, 200, 210),
}
COLOUR_NAMES = tuple(COLOURS)
BACKGROUNDS = {"black": (20, 20, 20), "white": (235, 235, 235), "gray": (120, 120, 120)}
BACKGROUND_NAMES = tuple(BACKGROUNDS)
SIZES = ("small", "large")
GRID = 3  # cells per side
CELL_PHRASES = (
    "in the top left corner",
    "at the top",
    "in the top right corner",
    "on the left",
    "in the center",
    "on the right",
    "in the bottom left corner",
    "at the bottom",
    "in the bottom right corner",
)
RELATIONS = ("left of", "right of", "above", "below")
RELATION_PHRASES = {"left of": "to the left of", "right of": "to the right of", "above": "above", "below": "below"}
SUPERSAMPLE = 4  # draw at 4x and downsample: anti-aliased edges


@dataclass(frozen=True)
class ShapeObject:
    shape: str
    colour: str
    size: str
    cell: int  # 0..8, row-major on the 3x3 grid

    @property
    def row(self) -> int:
        return self.cell // GRID

    @property
    def col(self) -> int:
        return self.cell % GRID


@dataclass(frozen=True)
class ShapesLabel:
    """Everything the caption claims, and what the image holds, for exact adherence checks."""

    background: str
    objects: tuple[ShapeObject, ...]
    relation: str | None = None  # relation of objects[0] to objects[1]
    named: frozenset[str] = field(default_factory=frozenset)  # optional attributes the caption names

    def to_dict(self) -> dict:
        return {
            "background": self.background,
            "objects": [o.__dict__ for o in self.objects],
            "relation": self.relation,
            "named": sorted(self.named),
        }

    @staticmethod
    def from_dict(d: dict) -> ShapesLabel:
        return ShapesLabel(
            background=d["background"],
            objects=tuple(ShapeObject(**o) for o in d["objects"]),
            relation=d["relation"],
            named=frozenset(d["named"]),
        )


def _object_phrase(obj: ShapeObject, with_size: bool) -> str:
    words = ([obj.size] if with_size else []) + [obj.colour, obj.shape]
    return " ".join(words)


def _caption(label: ShapesLabel, rng: np.random.Generator) -> str:
    with_size = "size" in label.named
    with_bg = "background" in label.named
    objs = label.objects
    bg = f" on a {label.background} background" if with_bg else ""
    if len(objs) == 1:
        o = objs[0]
        templates = (
            "a {obj} {pos}{bg}",
            "a picture of a {obj} {pos}{bg}",
            "{pos}, a {obj}{bg}",
            "one {obj} {pos}{bg}",
        )
        t = templates[rng.integers(len(templates))]
        return t.format(obj=_object_phrase(o, with_size), pos=CELL_PHRASES[o.cell], bg=bg)
    a, b = objs
    rel = RELATION_PHRASES[label.relation]
    templates = (
        "a {a} {rel} a {b}{bg}",
        "a picture of a {a} {rel} a {b}{bg}",
        "two shapes: a {a} {rel} a {b}{bg}",
    )
    t = templates[rng.integers(len(templates))]
    return t.format(a=_object_phrase(a, with_size), b=_object_phrase(b, with_size), rel=rel, bg=bg)


def _draw(label: ShapesLabel, size: int, rng: np.random.Generator) -> np.ndarray:
    big = size * SUPERSAMPLE
    jitter = lambda c: tuple(int(np.clip(v + rng.integers(-12, 13), 0, 255)) for v in c)  # noqa: E731
    img = Image.new("RGB", (big, big), jitter(BACKGROUNDS[label.background]))
    draw = ImageDraw.Draw(img)
    cell = big / GRID
    for o in label.objects:
        cx = (o.col + 0.5) * cell + rng.uniform(-0.08, 0.08) * cell
        cy = (o.row + 0.5) * cell + rng.uniform(-0.08, 0.08) * cell
        r = (0.30 if o.size == "small" else 0.46) * cell * rng.uniform(0.92, 1.08)
        fill = jitter(COLOURS[o.colour])
        if o.shape == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        elif o.shape == "square":
            s = r * 0.88
            draw.rectangle([cx - s, cy - s, cx + s, cy + s], fill=fill)
        elif o.shape == "triangle":
            draw.polygon([(cx, cy - r), (cx + r, cy + r * 0.8), (cx - r, cy + r * 0.8)], fill=fill)
        elif o.shape == "cross":
            w = r * 0.38
            draw.rectangle([cx - r, cy - w, cx + r, cy + w], fill=fill)
            draw.rectangle([cx - w, cy - r, cx + w, cy + r], fill=fill)
        else:  # pragma: no cover - SHAPES is closed
            raise ValueError(f"unknown shape {o.shape!r}")
    img = img.resize((size, size), Image.Resampling.BOX)
    return np.asarray(img, dtype=np.uint8)


def _sample_label(rng: np.random.Generator, two_shape_fraction: float) -> ShapesLabel:
    bg = BACKGROUND_NAMES[rng.integers(len(BACKGROUND_NAMES))]
    named = {n for n, p in (("size", 0.5), ("background", 0.5)) if rng.random() < p}

    def obj(cell: int, exclude: tuple[str, str] | None = None) -> ShapeObject:
        while True:
            o = ShapeObject(
                shape=SHAPES[rng.integers(len(SHAPES))],
                colour=COLOUR_NAMES[rng.integers(len(COLOUR_NAMES))],
                size=SIZES[rng.integers(len(SIZES))],
                cell=cell,
            )
            if exclude is None or (o.shape, o.colour) != exclude:  # keep the two objects distinguishable
                return o

    if rng.random() >= two_shape_fraction:
        return ShapesLabel(bg, (obj(int(rng.integers(GRID * GRID))),), None, frozenset(named))
    relation = RELATIONS[rng.integers(len(RELATIONS))]
    line = int(rng.integers(GRID))  # shared row (left/right) or column (above/below)
    i, j = sorted(rng.choice(GRID, size=2, replace=False).tolist())  # i < j along the other axis
    if relation in ("left of", "right of"):
        first, second = (line * GRID + i, line * GRID + j)
    else:
        first, second = (i * GRID + line, j * GRID + line)
    if relation in ("right of", "below"):
        first, second = second, first
    a = obj(first)
    b = obj(second, exclude=(a.shape, a.colour))
    return ShapesLabel(bg, (a, b), relation, frozenset(named))


class ShapesDataset:
    """`n` deterministic items; `item(i)` -> (uint8 image HxWx3, caption, label)."""

    name = "shapes"
    channels = 3

    def __init__(self, n: int = 50_000, seed: int = 0, image_size: int = 32, two_shape_fraction: float = 0.6):
        if n <= 0:
            raise ValueError(f"shapes: n must be positive, got {n}")
        if image_size < 16:
            raise ValueError(f"shapes: image_size must be >= 16 for shapes to be recognisable, got {image_size}")
        if not 0.0 <= two_shape_fraction <= 1.0:
            raise ValueError(f"shapes: two_shape_fraction must be in [0, 1], got {two_shape_fraction}")
        self.n, self.seed, self.image_size, self.two_shape_fraction = n, seed, image_size, two_shape_fraction

    def __len__(self) -> int:
        return self.n

    def fingerprint(self) -> str:
        return f"shapes/1 two_shape_fraction={self.two_shape_fraction}"  # bump when drawing or captions change

    def label(self, i: int) -> ShapesLabel:
        return _sample_label(np.random.default_rng([self.seed, i]), self.two_shape_fraction)

    def caption(self, i: int) -> str:
        rng = np.random.default_rng([self.seed, i])
        label = _sample_label(rng, self.two_shape_fraction)
        return _caption(label, rng)

    def item(self, i: int) -> tuple[np.ndarray, str, ShapesLabel]:
        if not 0 <= i < self.n:
            raise IndexError(f"shapes: index {i} out of range [0, {self.n})")
        rng = np.random.default_rng([self.seed, i])
        label = _sample_label(rng, self.two_shape_fraction)
        caption = _caption(label, rng)
        return _draw(label, self.image_size, rng), caption, label
