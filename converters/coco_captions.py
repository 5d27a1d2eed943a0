"""COCO captions: Karpathy's ``dataset_coco.json`` (``coco-karpathy``) or a ``captions_*.json`` (``coco-captions``).

OFA's caption TSV has five columns: uniq-id, image-id, caption, object tags (VinVL's, which these
annotations do not have: left empty, no task reads it) and the image. A stage-1 training file holds one
caption per row; every other file one row per image with all its references joined by ``&&``.
Karpathy's ``tokens`` (lowercased, punctuation removed: what OFA's released captions look like) are
the caption text; a COCO caption file's ``caption`` is lowercased and its whitespace collapsed.
"""
from __future__ import annotations

import argparse
import os
import re
from collections import OrderedDict
from typing import Dict, Iterator, List, Sequence, Tuple

from ..data.text import clean_train_caption
from .entries import IMAGE, Entry, InvalidEntry, Item, Row, join_fields, load_json, one_line, require
from .writer import Conversion, OutputFile

#: Karpathy's splits, and the files OFA's caption recipes read (restval is training data, as in OFA).
KARPATHY_FILES: Sequence[Tuple[str, Tuple[str, ...], bool]] = (
    ("caption_stage1_train.tsv", ("train", "restval"), False),
    ("caption_stage2_train.tsv", ("train", "restval"), True),
    ("caption_val.tsv", ("val",), True),
    ("caption_test.tsv", ("test",), True),
)


def checked_caption(text: str, what: str) -> str:
    """``text`` on one line; ``ValueError`` if training would find it empty or it holds ``&&``."""
    text = one_line(text)
    if not clean_train_caption(text, max(1, len(text))):
        raise ValueError(f"{what} is empty after cleaning: {text!r}")
    return join_fields([text], what)


def caption_row(key: str, uniq_id: str, image_id: str, captions: List[str]) -> Row:
    """A caption TSV row: one caption, or several joined by ``&&``."""
    return Row(key, (uniq_id, image_id, join_fields(captions, "caption"), "", IMAGE))


def karpathy_caption(sentence: dict) -> str:
    tokens = sentence.get("tokens")
    return " ".join(tokens) if isinstance(tokens, list) and tokens else str(sentence.get("raw", ""))


def karpathy_items(path: str, images_dir: str, records: List[dict], per_caption: bool) -> Iterator[Item]:
    """Entries of one output file: the image, and one row per caption or one row of all its captions."""
    for number, record in enumerate(records):
        key = f"image {record.get('cocoid', number) if isinstance(record, dict) else number}"
        try:
            require(record, ("filepath", "filename", "cocoid", "sentences"))
            captions = [checked_caption(karpathy_caption(s), f"caption {k + 1}")
                        for k, s in enumerate(record["sentences"])]
            if not captions:
                raise ValueError("no captions")
        except (ValueError, TypeError, AttributeError) as err:
            yield InvalidEntry(path, key, str(err))
            continue
        image_id = str(record["cocoid"])
        entry = Entry(path, key, os.path.join(images_dir, record["filepath"], record["filename"]))
        if per_caption:
            for sentence, caption in zip(record["sentences"], captions):
                sentid = str(sentence.get("sentid", f"{image_id}_{len(entry.rows)}"))
                entry.rows.append(caption_row(f"{key} sentence {sentid}", sentid, image_id, [caption]))
        else:
            entry.rows.append(caption_row(key, image_id, image_id, captions))
        yield entry


def karpathy(args: argparse.Namespace) -> Conversion:
    data = load_json(args.annotations, "--annotations")
    require(data, ("images",), args.annotations)
    by_split: Dict[str, List[dict]] = {}
    for record in data["images"]:
        by_split.setdefault(record.get("split") if isinstance(record, dict) else None, []).append(record)
    unknown = sorted(str(s) for s in by_split if s not in {"train", "restval", "val", "test"})
    if unknown:
        raise ValueError(f"{args.annotations}: images with split(s) {unknown}; Karpathy's splits are "
                         "train, restval, val, test")
    outputs = []
    for name, splits, joined in KARPATHY_FILES:
        records = [r for split in splits for r in by_split.get(split, [])]
        if not records:
            continue
        rows = len(records) if joined else sum(len(r.get("sentences") or ()) for r in records)
        outputs.append(OutputFile(name, karpathy_items(args.annotations, args.images, records, not joined), rows))
    return Conversion(outputs)


def coco_caption_items(path: str, images_dir: str, images: List[dict], captions: Dict[int, List[str]],
                       per_caption: bool) -> Iterator[Item]:
    for number, image in enumerate(images):
        key = f"image {image.get('id', number) if isinstance(image, dict) else number}"
        try:
            require(image, ("id", "file_name"))
            texts = [checked_caption(text.lower(), f"caption {k + 1}") for k, text in
                     enumerate(captions.get(image["id"], []))]
            if not texts:
                raise ValueError("no captions for this image")
        except (ValueError, TypeError, AttributeError) as err:
            yield InvalidEntry(path, key, str(err))
            continue
        image_id = str(image["id"])
        entry = Entry(path, key, os.path.join(images_dir, image["file_name"]))
        if per_caption:
            entry.rows = [caption_row(f"{key} caption {k + 1}", f"{image_id}_{k + 1}", image_id, [text])
                          for k, text in enumerate(texts)]
        else:
            entry.rows = [caption_row(key, image_id, image_id, texts)]
        yield entry


def coco_output_name(annotations: str, per_caption: bool) -> str:
    """``captions_val2014.json`` -> ``caption_val2014.tsv``; per-caption files say so (``..._per_caption.tsv``)."""
    stem = re.sub(r"^captions_", "", os.path.splitext(os.path.basename(annotations))[0])
    return f"caption_{stem}{'_per_caption' if per_caption else ''}.tsv"


def coco(args: argparse.Namespace) -> Conversion:
    data = load_json(args.annotations, "--annotations")
    require(data, ("images", "annotations"), args.annotations)
    captions: Dict[int, List[str]] = OrderedDict()
    for number, annotation in enumerate(data["annotations"]):
        if not (isinstance(annotation, dict) and "image_id" in annotation
                and isinstance(annotation.get("caption"), str)):
            raise ValueError(f"{args.annotations}: annotation {number}: expected an object with image_id and caption")
        captions.setdefault(annotation["image_id"], []).append(annotation["caption"])
    images = data["images"]
    rows = (sum(len(captions.get(i.get("id"), ())) for i in images if isinstance(i, dict)) if args.per_caption
            else len(images))
    name = coco_output_name(args.annotations, args.per_caption)
    return Conversion([OutputFile(name, coco_caption_items(args.annotations, args.images, images, captions,
                                                             args.per_caption), rows)])
