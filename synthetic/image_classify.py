"""A synthetic image classification set in OFA's ImageNet layout: 24 colour-shape classes, one shape an image."""
from __future__ import annotations

import os
import pickle
import random
from typing import Dict, List, Tuple

from .scenes import COLOURS, SHAPES, place_shapes, render, write_tsv

#: The demo's classes: every colour x shape, named like ImageNet's synset words ("red circle").
DEMO_CLASSES = tuple(f"{colour} {kind}" for kind in SHAPES for colour in COLOURS)


def make_classify_rows(rng: random.Random, count: int, size: int = 64) -> List[Tuple[str, str, str]]:
    """Rows ``(image, 1-based label index, class name)`` as in OFA's ImageNet files: one shape per image,
    a third to two thirds of the side, so that most random crops still show it."""
    rows = []
    while len(rows) < count:
        label = rng.randrange(len(DEMO_CLASSES))
        colour, kind = DEMO_CLASSES[label].split(" ")
        shapes = place_shapes(rng, size, size, [(kind, colour)], size // 3, size * 2 // 3)
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
