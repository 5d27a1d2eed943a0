"""Write a small synthetic caption + RefCOCO data set in OFA's TSV formats, with its own GPT-2 BPE.

Images are coloured shapes on a plain background and every text describes what is
drawn (colours, shapes, sizes, positions), so a small model can learn it on a CPU in
minutes. Everything is a pure function of ``--seed``.

    python -m ofa_el.tools.make_demo_data --out demo/data --seed 0

Files (named like OFA's released ones):
  caption_stage1_train.tsv   one caption per line: uniq-id, image-id, caption, object labels, base64 JPEG
  caption_val.tsv, caption_test.tsv   one line per image, the 5 references joined by ``&&``
  (caption_stage2_train.tsv: the stage-1 train images, one line per image, references joined by ``&&``;
   written by :func:`write_caption_stage2_train`, which the demo's caption_stage2 part calls)
  refcoco{,plus,g}_*.tsv     uniq-id, image-id, expression, "x0,y0,x1,y1", base64 JPEG
  snli_ve_{train,dev,test}.tsv   uniq-id, image-id, base64 JPEG, hypothesis, caption, label (SNLI-VE's layout):
                             statements the image entails, contradicts or leaves open
  image_classify_{train,val,test}.tsv, class2label_new.pkl   base64 JPEG, label index, class name (ImageNet's
                             layout) for 24 colour-shape classes, and OFA's pickled class list
  bpe/encoder.json, bpe/vocab.bpe, bpe/dict.txt   a byte-level BPE readable by fairseq's GPT2BPE

RefCOCO variants, as in the real sets: ``refcoco`` may use absolute location words,
``refcocoplus`` never does (appearance only), ``refcocog`` has longer expressions that
relate the target to another object. ``testA`` targets are always circles, ``testB``
targets never are (the real testA/testB split people from other objects).
"""
from __future__ import annotations

import argparse
import base64
import io
import json
import os
import pickle
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

CAPTION_PROMPTS = (" what does the image describe?", ' which region does the text " " describe?')


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


# -- captions ---------------------------------------------------------------------------------

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


def write_tsv(path: str, rows: Iterable[Sequence[str]]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as handle:
        for row in rows:
            handle.write("\t".join(row) + "\n")


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


# -- referring expressions -------------------------------------------------------------------

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


# -- visual entailment (SNLI-VE) and classification -------------------------------------------

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


def majority_baseline(path: str, column: int) -> Tuple[str, float]:
    """The commonest value of ``column`` in a TSV file and its share of the rows: what always answering it scores."""
    with open(path, encoding="utf-8") as handle:
        counts = Counter(line.rstrip("\n").split("\t")[column] for line in handle)
    value, hits = counts.most_common(1)[0]
    return value, hits / sum(counts.values())


# -- BPE ---------------------------------------------------------------------------------------

def write_bpe(out_dir: str, texts: Sequence[str], vocab_size: int) -> None:
    """Train a byte-level BPE on the corpus and save it as GPT-2's encoder.json / vocab.bpe / dict.txt.

    Texts are trained with the leading space the datasets prepend, so words merge into
    single " word" tokens as in GPT-2. dict.txt lists every BPE id as "<id> <count>",
    most frequent first, as fairseq's GPT-2 dict.txt does.
    """
    from tokenizers import ByteLevelBPETokenizer

    os.makedirs(out_dir, exist_ok=True)
    corpus = [" " + text for text in texts] + list(CAPTION_PROMPTS)
    tokenizer = ByteLevelBPETokenizer(add_prefix_space=False)
    tokenizer.train_from_iterator(corpus, vocab_size=vocab_size, min_frequency=2, show_progress=False)
    vocab_path, merges_path = tokenizer.save_model(out_dir)
    os.replace(vocab_path, os.path.join(out_dir, "encoder.json"))
    os.replace(merges_path, os.path.join(out_dir, "vocab.bpe"))
    counts = Counter(token_id for encoding in tokenizer.encode_batch(corpus) for token_id in encoding.ids)
    with open(os.path.join(out_dir, "encoder.json"), encoding="utf-8") as handle:
        ids = sorted(json.load(handle).values())
    with open(os.path.join(out_dir, "dict.txt"), "w", encoding="utf-8") as handle:
        for token_id in sorted(ids, key=lambda i: (-counts[i], i)):
            handle.write(f"{token_id} {counts[token_id]}\n")


def make_demo_data(out: str, seed: int = 0, image_size: int = 64, train_images: int = 1500, val_images: int = 100,
                   test_images: int = 100, refcoco_train_images: int = 1500, refcoco_eval_images: int = 100,
                   bpe_vocab_size: int = 600, refcoco_object_sides: Tuple[float, float] = REFCOCO_OBJECT_SIDES,
                   vqa_train_images: int = 0, vqa_eval_images: int = 100,
                   snli_ve_rows: Optional[Tuple[int, int, int]] = None,
                   classify_rows: Optional[Tuple[int, int, int]] = None) -> None:
    """The demo files under ``out``; the snli_ve and image_classify sets only when their (train, val, test) row
    counts are given (the command line writes them by default; they draw from their own random streams, so the
    other files are the same with or without them)."""
    os.makedirs(out, exist_ok=True)
    rng = random.Random(seed)
    texts = write_caption_sets(out, rng, {"train": train_images, "val": val_images, "test": test_images}, image_size)
    write_caption_stage2_train(out)
    if refcoco_train_images > 0:
        texts += write_refcoco_sets(out, rng, refcoco_train_images, refcoco_eval_images, refcoco_object_sides)
    write_bpe(os.path.join(out, "bpe"), texts, bpe_vocab_size)
    if vqa_train_images > 0:  # after the BPE: byte-level, it encodes the questions without them in its corpus
        from .make_demo_vqa import write_vqa_sets
        write_vqa_sets(out, seed, vqa_train_images, vqa_eval_images, image_size)
    if snli_ve_rows:  # not in the BPE corpus: a byte-level BPE encodes any text
        write_snli_ve_sets(out, seed, dict(zip(("train", "dev", "test"), snli_ve_rows)))
    if classify_rows:
        write_image_classify_sets(out, seed, dict(zip(("train", "val", "test"), classify_rows)))


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=64, help="side of the square caption images (px)")
    parser.add_argument("--train-images", type=int, default=1500, help="caption train images (5 lines each)")
    parser.add_argument("--val-images", type=int, default=100)
    parser.add_argument("--test-images", type=int, default=100)
    parser.add_argument("--refcoco-train-images", type=int, default=1500,
                        help="rows of each refcoco*_train.tsv; 0 writes no refcoco sets")
    parser.add_argument("--refcoco-eval-images", type=int, default=100, help="rows of each refcoco* val/test file")
    parser.add_argument("--refcoco-object-sides", default=None,
                        help="MIN,MAX side of the refcoco shapes as fractions of the image's shorter side "
                             "(default: 1/4,1/2)")
    parser.add_argument("--bpe-vocab-size", type=int, default=600, help="BPE vocabulary size, >= 256 (the bytes)")
    parser.add_argument("--vqa-train-images", type=int, default=0,
                        help="images of vqa_train.tsv (3 questions each; see make_demo_vqa.py); 0 writes no VQA sets")
    parser.add_argument("--vqa-eval-images", type=int, default=100, help="images of vqa_val.tsv and vqa_test.tsv")
    parser.add_argument("--snli-ve-rows", default="3000,300,300", help="TRAIN,DEV,TEST rows of the snli_ve files")
    parser.add_argument("--classify-rows", default="2400,240,240",
                        help="TRAIN,VAL,TEST rows of the image_classify files")
    args = parser.parse_args(argv)
    row_counts = {}
    for flag in ("snli_ve_rows", "classify_rows"):
        try:
            row_counts[flag] = tuple(int(n) for n in getattr(args, flag).split(","))
        except ValueError:
            row_counts[flag] = ()
        if len(row_counts[flag]) != 3 or min(row_counts[flag]) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be three positive row counts TRAIN,VAL,TEST, got "
                         f"{getattr(args, flag)!r}")
    try:
        sides = REFCOCO_OBJECT_SIDES if args.refcoco_object_sides is None else tuple(
            float(f) for f in args.refcoco_object_sides.split(","))
    except ValueError:
        sides = ()
    if len(sides) != 2 or not 0 < sides[0] <= sides[1] <= 0.5:
        parser.error(f"--refcoco-object-sides must be two fractions 0 < MIN <= MAX <= 0.5, got "
                     f"{args.refcoco_object_sides!r}")
    for name in ("image_size", "train_images", "val_images", "test_images"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    if args.image_size < 24:
        parser.error("--image-size must be at least 24 px for two shapes to fit")
    if args.refcoco_train_images < 0 or args.refcoco_eval_images < 1:
        parser.error("--refcoco-train-images must be >= 0 and --refcoco-eval-images >= 1")
    if args.bpe_vocab_size < 256:
        parser.error("--bpe-vocab-size must be at least 256")
    if args.vqa_train_images < 0 or args.vqa_eval_images < 1:
        parser.error("--vqa-train-images must be >= 0 and --vqa-eval-images >= 1")
    make_demo_data(args.out, args.seed, args.image_size, args.train_images, args.val_images, args.test_images,
                   args.refcoco_train_images, args.refcoco_eval_images, args.bpe_vocab_size, sides,
                   args.vqa_train_images, args.vqa_eval_images, row_counts["snli_ve_rows"],
                   row_counts["classify_rows"])


if __name__ == "__main__":
    main()
