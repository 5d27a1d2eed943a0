"""A synthetic image classification set in OFA's ImageNet layout: 4 shape classes, one shape an image."""
from __future__ import annotations

import os
import pickle
import random
from typing import Dict, List, Tuple

from .scenes import COLOURS, SHAPES, place_shapes, render, write_tsv

#: The demo's classes: the shapes. Each image draws its shape in a random colour, so a class is the shape whatever
#: its colour (the demo model, finetuned from the caption model, learns shape in a few hundred updates; telling
#: the colours apart from the first decoded token it does not learn in the demo's budget).
DEMO_CLASSES = SHAPES


def make_classify_rows(rng: random.Random, count: int, size: int = 64) -> List[Tuple[str, str, str]]:
    """Rows ``(image, 1-based label index, class name)`` as in OFA's ImageNet files: one shape per image in a
    random colour, a third to two thirds of the side, so that most random crops still show it."""
    rows = []
    while len(rows) < count:
        label = rng.randrange(len(DEMO_CLASSES))
        colour = rng.choice(list(COLOURS))
        shapes = place_shapes(rng, size, size, [(DEMO_CLASSES[label], colour)], size // 3, size * 2 // 3)
        if shapes is not None:
            rows.append((render(rng, size, size, shapes), str(label + 1), DEMO_CLASSES[label]))
    return rows


def write_image_classify_sets(out: str, seed: int, sizes: Dict[str, int]) -> None:
    """image_classify_{train,val,test}.tsv and the class list as OFA's ``class2label_new.pkl`` ({name: index})."""
    rng = random.Random(f"{seed}:image_classify")
    for split in ("train", "val", "test"):
        write_tsv(os.path.join(out, f"image_classify_{split}.tsv"), make_classify_rows(rng, sizes[split]))
    with open(os.path.join(out, "class2label_new.pkl"), "wb") as handle:
        pickle.dump({name: index for index, name in enumerate(DEMO_CLASSES)}, handle, protocol=4)
