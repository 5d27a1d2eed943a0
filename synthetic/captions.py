"""Synthetic caption sets in OFA's layouts: stage-1 train (one caption a row), val/test and stage-2 train
(one image a row, its five references joined by ``&&``)."""
from __future__ import annotations

import os
import random
from typing import Dict, List, Sequence, Tuple

from .scenes import COLOURS, SHAPES, Shape, place_shapes, position_phrase, render, size_word, write_tsv

#: The task prompts, added to the BPE corpus so that their words are single tokens.
CAPTION_PROMPTS = (" what does the image describe?", ' which region does the text " " describe?')


def caption_references(shapes: Sequence[Shape], width: int, height: int, min_side: int, max_side: int
                       ) -> List[str]:
    """Five different captions that all state what is drawn and where."""
    if len(shapes) == 1:
        shape = shapes[0]
        name, where, size = shape.name, position_phrase(shape, width, height), size_word(shape, min_side, max_side)
        return [
            f"a {name} at the {where} of the image",
            f"a {size} {name} at the {where}",
            f"there is a {name} at the {where}",
            f"the picture shows a {size} {name}",
            f"a single {name} placed at the {where}",
        ]
    left, right = sorted(shapes, key=lambda s: s.centre[0])
    return [
        f"a {left.name} to the left of a {right.name}",
        f"a {left.name} and a {right.name}",
        f"a {right.name} to the right of a {left.name}",
        f"two shapes a {left.name} and a {right.name}",
        f"there is a {left.name} next to a {right.name}",
    ]


def make_caption_images(rng: random.Random, count: int, size: int) -> List[Tuple[str, List[Shape], List[str]]]:
    min_side, max_side = max(4, size // 6), max(6, size * 2 // 5)
    images = []
    while len(images) < count:
        kinds_colours = [(rng.choice(SHAPES), rng.choice(list(COLOURS))) for _ in range(rng.randint(1, 2))]
        if len(kinds_colours) == 2 and kinds_colours[0] == kinds_colours[1]:
            continue
        shapes = place_shapes(rng, size, size, kinds_colours, min_side, max_side)
        if shapes is None or (len(shapes) == 2 and abs(shapes[0].centre[0] - shapes[1].centre[0]) < 4):
            continue  # "left of" must be unambiguous
        images.append((render(rng, size, size, shapes), shapes,
                       caption_references(shapes, size, size, min_side, max_side)))
    return images


def write_caption_sets(out: str, rng: random.Random, sizes: Dict[str, int], image_size: int) -> List[str]:
    """The three caption files; returns every caption written (the BPE corpus)."""
    texts: List[str] = []
    image_id = 0
    for split, filename in (("train", "caption_stage1_train.tsv"), ("val", "caption_val.tsv"),
                            ("test", "caption_test.tsv")):
        rows = []
        for image_b64, shapes, references in make_caption_images(rng, sizes[split], image_size):
            image_id += 1
            labels = "&&".join(shape.kind for shape in shapes)
            if split == "train":
                rows += [(f"{image_id}_{k}", str(image_id), ref, labels, image_b64) for k, ref in enumerate(references)]
            else:
                rows.append((str(image_id), str(image_id), "&&".join(references), labels, image_b64))
            texts += references
        write_tsv(os.path.join(out, filename), rows)
    return texts


def write_caption_stage2_train(out: str) -> str:
    """``caption_stage2_train.tsv`` from ``caption_stage1_train.tsv``: the same images, one row per image with
    its references joined by ``&&`` (OFA's stage-2 layout, what self-critical training scores against).

    Read back from the stage-1 file rather than drawn anew, so it holds exactly the stage-1 images and captions
    (and the seed's other files do not change). Returns the path written.
    """
    rows: Dict[str, List[str]] = {}
    with open(os.path.join(out, "caption_stage1_train.tsv"), encoding="utf-8") as handle:
        for line in handle:
            _, image_id, caption, labels, image_b64 = line.rstrip("\n").split("\t")
            if image_id in rows:
                rows[image_id][2] += "&&" + caption
            else:
                rows[image_id] = [image_id, image_id, caption, labels, image_b64]
    path = os.path.join(out, "caption_stage2_train.tsv")
    write_tsv(path, rows.values())
    return path
