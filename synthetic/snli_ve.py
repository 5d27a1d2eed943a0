"""A synthetic SNLI-VE set: statements about the drawn shapes that the image entails, contradicts or leaves open."""
from __future__ import annotations

import os
import random
from typing import Dict, List, Sequence, Tuple

from .scenes import COLOURS, SHAPES, Shape, place_shapes, position_phrase, render, write_tsv

#: Statements about a shape that the image can neither confirm nor refute (SNLI-VE's "neutral").
UNDECIDABLE = ("is made of wood", "is made of glass", "was drawn by a child", "was drawn by a machine", "is heavy",
               "is very old", "is warm", "belongs to a teacher")
NUMBER_WORDS = ("zero", "one", "two", "three", "four")


def entailment_row(rng: random.Random, shapes: Sequence[Shape], label: str, width: int, height: int) -> str:
    """A hypothesis about the drawn ``shapes`` that the image entails, contradicts or leaves open (``label``)."""
    present = {(s.kind, s.colour) for s in shapes}
    shape = rng.choice(shapes)
    if label == "neutral":
        return f"the {shape.name} {rng.choice(UNDECIDABLE)}"
    form = rng.choice(("exists", "count", "where"))
    if form == "count":
        count = len(shapes) if label == "entailment" else rng.choice([n for n in (1, 2, 3) if n != len(shapes)])
        return f"there {'is' if count == 1 else 'are'} {NUMBER_WORDS[count]} shape{'' if count == 1 else 's'}"
    if form == "where":
        where = position_phrase(shape, width, height)
        if label == "contradiction":
            where = rng.choice([w for w in ("top left", "top right", "bottom left", "bottom right", "center")
                                if w != where and not set(w.split()) & set(where.split())])
        return f"the {shape.name} is at the {where}"
    if label == "contradiction":
        absent = [(kind, colour) for kind in SHAPES for colour in COLOURS if (kind, colour) not in present]
        kind, colour = rng.choice(absent)
        return rng.choice([f"there is a {colour} {kind}", f"the image shows a {colour} {kind}"])
    return rng.choice([f"there is a {shape.name}", f"the image shows a {shape.name}"])


def make_snli_ve_rows(rng: random.Random, count: int, first_image_id: int, size: int = 64
                      ) -> List[Tuple[str, str, str, str, str, str]]:
    """Rows ``(uniq-id, image-id, image, hypothesis, caption, label)``, three hypotheses per image with labels
    drawn uniformly; the caption (the text premise) names one of the 1-3 shapes, as a caption need not name
    everything, so most hypotheses need the image."""
    rows = []
    image_id = first_image_id
    min_side, max_side = size // 5, size * 2 // 5
    while len(rows) < count:
        kinds_colours = list({(rng.choice(SHAPES), rng.choice(list(COLOURS))) for _ in range(rng.randint(1, 3))})
        shapes = place_shapes(rng, size, size, sorted(kinds_colours), min_side, max_side)
        if shapes is None:
            continue
        image_id += 1
        image = render(rng, size, size, shapes)
        caption = f"a picture with a {rng.choice(shapes).name}"
        written = set()
        for k in range(min(3, count - len(rows))):
            label = rng.choice(("entailment", "contradiction", "neutral"))
            hypothesis = entailment_row(rng, shapes, label, size, size)
            for _ in range(20):  # three different statements per image where the templates allow
                if hypothesis not in written:
                    break
                hypothesis = entailment_row(rng, shapes, label, size, size)
            written.add(hypothesis)
            rows.append((f"{image_id}.jpg#{k}", str(image_id), image, hypothesis, caption, label))
    return rows


def write_snli_ve_sets(out: str, seed: int, sizes: Dict[str, int]) -> None:
    """snli_ve_{train,dev,test}.tsv, from their own random stream (the other files do not depend on them)."""
    rng = random.Random(f"{seed}:snli_ve")
    image_id = 200_000
    for split in ("train", "dev", "test"):
        rows = make_snli_ve_rows(rng, sizes[split], image_id)
        image_id += len(rows)
        write_tsv(os.path.join(out, f"snli_ve_{split}.tsv"), rows)
