"""Synthetic VQA over the demo's shape images, in OFA's VQA TSV format, with an answer list.

Each image holds one to three shapes of distinct colour-shape pairs; each gets up to three questions of five
kinds (colour of a shape, shape of a colour, position, count, yes/no for a colour-shape pair). Ten simulated
annotators answer each question: most give the right answer, the others a plausible wrong one (a neighbouring
position, another colour, a count off by one, the other of yes/no). An answer given by ``n`` annotators has
confidence ``min(1, n / 3)`` (VQA's soft score), so the data has VQA's ``conf|!+answer&&...`` field with
several answers. Columns, as OFA's ``vqa_*.tsv``: question id, image id, question, answers, object tags
(``&&``-joined shape names), base64 JPEG; read with ``--selected-cols 0,5,2,3,4``.

Files: ``vqa_train.tsv``, ``vqa_val.tsv``, ``vqa_test.tsv`` and ``trainval_ans2label.pkl`` (OFA's
``{answer: label}`` pickle over every answer the generator can produce). :func:`majority_baseline` scores
the answer that is most common in training for each question kind: the baseline a model must beat.
"""
from __future__ import annotations

import os
import pickle
import random
from collections import Counter, defaultdict
from typing import Dict, List, Sequence, Tuple

from .scenes import COLOURS, SHAPES, Shape, place_shapes, position_phrase, render, write_tsv

POSITIONS = ("top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right")
COUNTS = ("one", "two", "three")
ANNOTATORS = 10
#: Share of annotators who give the right answer.
ANNOTATOR_ACCURACY = 0.9
QUESTIONS_PER_IMAGE = 3
QUESTION_KINDS = ("colour", "shape", "position", "count", "yes/no")
#: Every answer the generator can produce, in the answer list's order.
ANSWERS = ("no", "yes", *COUNTS, *COLOURS, *SHAPES, *POSITIONS)


def question_kind(question: str) -> str:
    """The kind of a generated question, from its first words."""
    for prefix, kind in (("what colour", "colour"), ("what shape", "shape"), ("where", "position"),
                         ("how many", "count"), ("is there", "yes/no")):
        if question.startswith(prefix):
            return kind
    raise ValueError(f"not a generated demo question: {question!r}")


def wrong_answers(kind: str, right: str) -> List[str]:
    """Plausible mistakes of an annotator."""
    if kind == "colour":
        return [c for c in COLOURS if c != right]
    if kind == "shape":
        return [s for s in SHAPES if s != right]
    if kind == "position":  # a neighbouring cell of the 3x3 grid
        row, col = divmod(POSITIONS.index(right), 3)
        return [POSITIONS[r * 3 + c] for r in range(3) for c in range(3)
                if abs(r - row) + abs(c - col) == 1]
    if kind == "count":
        index = COUNTS.index(right)
        return [COUNTS[i] for i in (index - 1, index + 1) if 0 <= i < len(COUNTS)]
    return ["no" if right == "yes" else "yes"]


def annotate(rng: random.Random, kind: str, right: str) -> Dict[str, float]:
    """Ten annotators' answers -> ``{answer: min(1, count / 3)}``."""
    mistakes = wrong_answers(kind, right)
    votes = Counter(right if rng.random() < ANNOTATOR_ACCURACY else rng.choice(mistakes) for _ in range(ANNOTATORS))
    return {answer: round(min(1.0, count / 3), 1) for answer, count in votes.most_common()}


def questions_about(rng: random.Random, shapes: Sequence[Shape], size: int) -> List[Tuple[str, str, str]]:
    """Candidate ``(kind, question, right answer)`` for one image; every question has one right answer."""
    kinds = Counter(s.kind for s in shapes)
    colours = Counter(s.colour for s in shapes)
    found = []
    for shape in shapes:
        if kinds[shape.kind] == 1:
            found.append(("colour", f"what colour is the {shape.kind}?", shape.colour))
        if colours[shape.colour] == 1:
            found.append(("shape", f"what shape is the {shape.colour} object?", shape.kind))
        found.append(("position", f"where is the {shape.name}?", position_phrase(shape, size, size)))
    found.append(("count", "how many shapes are there?", COUNTS[len(shapes) - 1]))
    present = {(s.colour, s.kind) for s in shapes}
    if rng.random() < 0.5:
        colour, kind = rng.choice(sorted(present))
        found.append(("yes/no", f"is there a {colour} {kind}?", "yes"))
    else:
        absent = [(c, k) for c in COLOURS for k in SHAPES if (c, k) not in present]
        colour, kind = rng.choice(absent)
        found.append(("yes/no", f"is there a {colour} {kind}?", "no"))
    return found


def make_vqa_rows(rng: random.Random, images: int, size: int, first_question_id: int, first_image_id: int
                  ) -> List[Tuple[str, ...]]:
    min_side, max_side = max(4, size // 6), max(6, size // 3)
    rows: List[Tuple[str, ...]] = []
    image_id = first_image_id
    while image_id < first_image_id + images:
        pairs = rng.sample([(k, c) for k in SHAPES for c in COLOURS], rng.randint(1, 3))
        shapes = place_shapes(rng, size, size, pairs, min_side, max_side)
        if shapes is None:
            continue
        image_b64 = render(rng, size, size, shapes)
        candidates = questions_about(rng, shapes, size)
        for kind, question, right in rng.sample(candidates, min(QUESTIONS_PER_IMAGE, len(candidates))):
            answers = "&&".join(f"{conf}|!+{answer}" for answer, conf in annotate(rng, kind, right).items())
            objects = "&&".join(shape.kind for shape in shapes)
            rows.append((str(first_question_id + len(rows)), str(image_id), question, answers, objects, image_b64))
        image_id += 1
    return rows


def write_vqa_sets(out: str, seed: int, train_images: int, eval_images: int, image_size: int) -> List[str]:
    """The three VQA files and the answer list; returns every question written. The generator has its own
    random stream, so the other demo files do not change with it."""
    rng = random.Random(f"vqa-{seed}")
    texts: List[str] = []
    question_id, image_id = 1, 1
    for split, images in (("train", train_images), ("val", eval_images), ("test", eval_images)):
        rows = make_vqa_rows(rng, images, image_size, question_id, image_id)
        question_id += len(rows)
        image_id += images
        write_tsv(os.path.join(out, f"vqa_{split}.tsv"), rows)
        texts += [row[2] for row in rows]
    with open(os.path.join(out, "trainval_ans2label.pkl"), "wb") as handle:
        pickle.dump({answer: label for label, answer in enumerate(ANSWERS)}, handle, protocol=2)
    return texts


def read_rows(path: str) -> List[Tuple[str, Dict[str, float]]]:
    """``(question, {answer: confidence})`` per row of a generated VQA file."""
    rows = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            fields = line.rstrip("\n").split("\t")
            answers = {item.split("|!+")[1]: float(item.split("|!+")[0]) for item in fields[3].split("&&")}
            rows.append((fields[2], answers))
    return rows


def majority_baseline(train_path: str, eval_path: str) -> float:
    """VQA score of answering each question with the most common training target of its kind."""
    targets: Dict[str, Counter] = defaultdict(Counter)
    for question, answers in read_rows(train_path):
        targets[question_kind(question)][max(answers, key=answers.get)] += 1
    majority = {kind: counter.most_common(1)[0][0] for kind, counter in targets.items()}
    rows = read_rows(eval_path)
    return sum(answers.get(majority.get(question_kind(question), ""), 0.0) for question, answers in rows) / len(rows)
