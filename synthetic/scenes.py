"""The synthetic scenes every demo set draws: coloured shapes on a plain background, as a base64 JPEG.

Every text of the demo sets describes what is drawn (colours, shapes, sizes, positions), so a small model learns
it on a CPU in minutes; everything is a pure function of the random stream passed in.
"""
from __future__ import annotations

import base64
import io
import random
from collections import Counter
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from PIL import Image, ImageDraw

COLOURS: Dict[str, Tuple[int, int, int]] = {
    "red": (220, 30, 30), "green": (30, 170, 50), "blue": (40, 60, 220),
    "yellow": (235, 215, 20), "purple": (140, 40, 180), "orange": (245, 140, 20),
}
BACKGROUNDS = [(245, 245, 245), (200, 200, 200), (230, 225, 200), (200, 225, 235)]
SHAPES = ("circle", "square", "triangle", "diamond")
JPEG_QUALITY = 92


@dataclass(frozen=True)
class Shape:
    kind: str
    colour: str
    box: Tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels; the shape touches all four sides

    @property
    def centre(self) -> Tuple[float, float]:
        return (self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2

    @property
    def side(self) -> int:
        return self.box[2] - self.box[0]

    @property
    def name(self) -> str:
        return f"{self.colour} {self.kind}"


def draw_shape(draw: ImageDraw.ImageDraw, shape: Shape) -> None:
    x0, y0, x1, y1 = shape.box
    fill = COLOURS[shape.colour]
    # PIL's outer coordinates are inclusive, hence the -1: the drawn pixels span [x0, x1).
    if shape.kind == "circle":
        draw.ellipse((x0, y0, x1 - 1, y1 - 1), fill=fill)
    elif shape.kind == "square":
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=fill)
    elif shape.kind == "triangle":
        draw.polygon([((x0 + x1 - 1) / 2, y0), (x1 - 1, y1 - 1), (x0, y1 - 1)], fill=fill)
    else:  # diamond
        cx, cy = (x0 + x1 - 1) / 2, (y0 + y1 - 1) / 2
        draw.polygon([(cx, y0), (x1 - 1, cy), (cx, y1 - 1), (x0, cy)], fill=fill)


def place_shapes(rng: random.Random, width: int, height: int, kinds_colours: Sequence[Tuple[str, str]],
                 min_side: int, max_side: int) -> Optional[List[Shape]]:
    """Non-overlapping shapes (with a gap) at random positions; None if they do not fit."""
    shapes: List[Shape] = []
    for kind, colour in kinds_colours:
        for _ in range(100):
            side = rng.randint(min_side, max_side)
            x0, y0 = rng.randint(0, width - side), rng.randint(0, height - side)
            box = (x0, y0, x0 + side, y0 + side)
            if all(_apart(box, other.box, gap=2) for other in shapes):
                shapes.append(Shape(kind, colour, box))
                break
        else:
            return None
    return shapes


def _apart(a, b, gap: int) -> bool:
    return a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1]


def render(rng: random.Random, width: int, height: int, shapes: Sequence[Shape]) -> str:
    """Draw the shapes on a random background; the base64 of the JPEG file."""
    image = Image.new("RGB", (width, height), rng.choice(BACKGROUNDS))
    draw = ImageDraw.Draw(image)
    for shape in shapes:
        draw_shape(draw, shape)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY, subsampling=0)  # 4:4:4 keeps small shapes' colours
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def position_phrase(shape: Shape, width: int, height: int) -> str:
    """Thirds of the image: "top left", "right", "center", ..."""
    cx, cy = shape.centre
    vertical = ("top", "", "bottom")[min(2, int(3 * cy / height))]
    horizontal = ("left", "", "right")[min(2, int(3 * cx / width))]
    return " ".join(word for word in (vertical, horizontal) if word) or "center"


def size_word(shape: Shape, min_side: int, max_side: int) -> str:
    return "small" if shape.side < (min_side + max_side) / 2 else "big"


def write_tsv(path: str, rows: Iterable[Sequence[str]]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as handle:
        for row in rows:
            handle.write("\t".join(row) + "\n")

def majority_baseline(path: str, column: int) -> Tuple[str, float]:
    """The commonest value of ``column`` in a TSV file and its share of the rows: what always answering it scores."""
    with open(path, encoding="utf-8") as handle:
        counts = Counter(line.rstrip("\n").split("\t")[column] for line in handle)
    value, hits = counts.most_common(1)[0]
    return value, hits / sum(counts.values())
