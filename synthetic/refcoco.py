"""Synthetic RefCOCO, RefCOCO+ and RefCOCOg sets: a target shape among distractors, an expression and its box.

As in the real sets, ``refcoco`` may use absolute location words, ``refcocoplus`` never does (appearance only),
``refcocog`` has longer expressions that relate the target to another object. ``testA`` targets are always
circles, ``testB`` targets never are (the real testA/testB split people from other objects).
"""
from __future__ import annotations

import os
import random
from typing import List, Sequence, Tuple

from .scenes import COLOURS, SHAPES, Shape, place_shapes, position_phrase, render, write_tsv

#: Shape sides as fractions (min, max) of the image's shorter side. Large, like most RefCOCO
#: referents: at the demo's 64 px (a 4 x 4 patch grid) a box of a few pixels cannot be located to
#: IoU 0.5. Measured with the demo model (batch 32): after 4 epochs Acc@0.5 0.05 with sides 1/7..1/3,
#: 0.51 with these.
REFCOCO_OBJECT_SIDES = (1 / 4, 1 / 2)


def expression(variant: str, target: Shape, others: Sequence[Shape], width: int, height: int,
               rng: random.Random) -> str:
    """An expression that singles out ``target`` among ``others`` in the style of ``variant``."""
    if variant == "refcocog":
        anchor = min(others, key=lambda s: (s.centre[0] - target.centre[0]) ** 2 + (s.centre[1] - target.centre[1]) ** 2)
        dx, dy = target.centre[0] - anchor.centre[0], target.centre[1] - anchor.centre[1]
        if abs(dx) >= abs(dy):
            relation = "to the left of" if dx < 0 else "to the right of"
        else:
            relation = "above" if dy < 0 else "below"
        return rng.choice([
            f"the {target.name} that is {relation} the {anchor.name}",
            f"a {target.kind} coloured {target.colour} which is close to the {anchor.name}",
        ])
    if variant == "refcocoplus":
        return rng.choice([f"{target.name}", f"the {target.name}", f"the {target.kind} that is {target.colour}"])
    where = position_phrase(target, width, height)
    return rng.choice([f"{target.name} {where}", f"the {target.name} at the {where}", f"{where} {target.name}"])


def make_refcoco_rows(rng: random.Random, variant: str, split: str, count: int, first_image_id: int,
                      object_sides: Tuple[float, float] = REFCOCO_OBJECT_SIDES) -> List[Tuple[str, str, str, str, str]]:
    """One row per image: a target among 1-3 distractors that differ from it in colour or shape,
    each shape's side a fraction ``object_sides`` (min, max) of the image's shorter side."""
    rows = []
    image_id = first_image_id
    while len(rows) < count:
        width, height = rng.randint(56, 96), rng.randint(56, 96)
        side = min(width, height)
        target_kind = "circle" if split == "testA" else rng.choice(SHAPES[1:] if split == "testB" else SHAPES)
        target = (target_kind, rng.choice(list(COLOURS)))
        num_distractors = rng.randint(1, 3)
        distractors = set()
        while len(distractors) < num_distractors:
            candidate = (rng.choice(SHAPES), rng.choice(list(COLOURS)))
            if candidate != target:
                distractors.add(candidate)
        min_side = max(4, int(side * object_sides[0] + 1e-9))  # + 1e-9: side/7 * 7 == side exactly
        max_side = max(6, int(side * object_sides[1] + 1e-9))
        shapes = place_shapes(rng, width, height, [target] + sorted(distractors), min_side, max_side)
        if shapes is None:
            continue
        image_id += 1
        text = expression(variant, shapes[0], shapes[1:], width, height, rng)
        region = ",".join(f"{c:.2f}" for c in shapes[0].box)
        rows.append((f"{image_id}_{len(rows)}", str(image_id), text, region, render(rng, width, height, shapes)))
    return rows


REFCOCO_SPLITS = {
    "refcoco": ("train", "val", "testA", "testB"),
    "refcocoplus": ("train", "val", "testA", "testB"),
    "refcocog": ("train", "val", "test"),
}


def write_refcoco_sets(out: str, rng: random.Random, train_images: int, eval_images: int,
                       object_sides: Tuple[float, float] = REFCOCO_OBJECT_SIDES) -> List[str]:
    texts: List[str] = []
    image_id = 100_000
    for variant, splits in REFCOCO_SPLITS.items():
        for split in splits:
            rows = make_refcoco_rows(rng, variant, split, train_images if split == "train" else eval_images, image_id,
                                     object_sides)
            image_id += len(rows)
            write_tsv(os.path.join(out, f"{variant}_{split}.tsv"), rows)
            texts += [row[2] for row in rows]
    return texts
