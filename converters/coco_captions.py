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
from functools import partial
from typing import Any, Callable, Dict, Iterator, List, Sequence, Tuple

from ..data.text import clean_train_caption
from ..errors import InvalidDataError
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
    """``text`` on one line; ``InvalidDataError`` if training would find it empty or it holds ``&&``."""
    text = one_line(text)
    if not clean_train_caption(text, max(1, len(text))):
        raise InvalidDataError(f"{what} is empty after cleaning: {text!r}")
    return join_fields([text], what)


def caption_row(key: str, uniq_id: str, image_id: str, captions: List[str]) -> Row:
    """A caption TSV row: one caption, or several joined by ``&&``."""
    return Row(key, (uniq_id, image_id, join_fields(captions, "caption"), "", IMAGE))


#: What a format reads from one image record: ``(image file, image id, [(caption id, checked caption), ...])``.
ImageCaptions = Tuple[str, str, List[Tuple[str, str]]]


def caption_items(path: str, records: Sequence[Any], id_key: str, read: Callable[[Any], ImageCaptions],
                  per_caption: bool) -> Iterator[Item]:
    """One entry per image record, with one row per caption (``per_caption``) or one row of all its captions;
    a record ``read`` cannot use (``ValueError``, or malformed) is an invalid entry."""
    for number, record in enumerate(records):
        key = f"image {record.get(id_key, number) if isinstance(record, dict) else number}"
        try:
            image_path, image_id, captions = read(record)
            if not captions:
                raise InvalidDataError("no captions for this image")
        except (ValueError, TypeError, AttributeError) as err:
            yield InvalidEntry(path, key, str(err))
            continue
        if per_caption:
            rows = [caption_row(f"{key} caption {caption_id}", caption_id, image_id, [text])
                    for caption_id, text in captions]
        else:
            rows = [caption_row(key, image_id, image_id, [text for _, text in captions])]
        yield Entry(path, key, image_path, rows)


def karpathy_caption(sentence: dict) -> str:
    tokens = sentence.get("tokens")
    return " ".join(tokens) if isinstance(tokens, list) and tokens else str(sentence.get("raw", ""))


def read_karpathy(images_dir: str, record: dict) -> ImageCaptions:
    """An image of Karpathy's JSON; caption ids are its ``sentid``s."""
    require(record, ("filepath", "filename", "cocoid", "sentences"))
    image_id = str(record["cocoid"])
    captions = [(str(s.get("sentid", f"{image_id}_{k + 1}")), checked_caption(karpathy_caption(s), f"caption {k + 1}"))
                for k, s in enumerate(record["sentences"])]
    return os.path.join(images_dir, record["filepath"], record["filename"]), image_id, captions


def karpathy(args: argparse.Namespace) -> Conversion:
    data = load_json(args.annotations, "--annotations")
    require(data, ("images",), args.annotations)
    by_split: Dict[str, List[dict]] = {}
    for record in data["images"]:
        by_split.setdefault(record.get("split") if isinstance(record, dict) else None, []).append(record)
    unknown = sorted(str(s) for s in by_split if s not in {"train", "restval", "val", "test"})
    if unknown:
        raise InvalidDataError(f"{args.annotations}: images with split(s) {unknown}; Karpathy's splits are "
                               "train, restval, val, test")
    outputs = []
    for name, splits, joined in KARPATHY_FILES:
        records = [r for split in splits for r in by_split.get(split, [])]
        if not records:
            continue
        rows = len(records) if joined else sum(len(r.get("sentences") or ()) for r in records)
        items = caption_items(args.annotations, records, "cocoid", partial(read_karpathy, args.images), not joined)
        outputs.append(OutputFile(name, items, rows))
    return Conversion(outputs)


def read_coco(images_dir: str, captions: Dict[Any, List[str]], image: dict) -> ImageCaptions:
    """An image of a COCO caption file with its captions; caption ids are ``<image id>_<k>``."""
    require(image, ("id", "file_name"))
    image_id = str(image["id"])
    texts = [(f"{image_id}_{k + 1}", checked_caption(text.lower(), f"caption {k + 1}"))
             for k, text in enumerate(captions.get(image["id"], []))]
    return os.path.join(images_dir, image["file_name"]), image_id, texts


def coco_output_name(annotations: str, per_caption: bool) -> str:
    """``captions_val2014.json`` -> ``caption_val2014.tsv``; per-caption files say so (``..._per_caption.tsv``)."""
    stem = re.sub(r"^captions_", "", os.path.splitext(os.path.basename(annotations))[0])
    return f"caption_{stem}{'_per_caption' if per_caption else ''}.tsv"


def coco(args: argparse.Namespace) -> Conversion:
    data = load_json(args.annotations, "--annotations")
    require(data, ("images", "annotations"), args.annotations)
    captions: Dict[int, List[str]] = {}
    for number, annotation in enumerate(data["annotations"]):
        if not (isinstance(annotation, dict) and "image_id" in annotation
                and isinstance(annotation.get("caption"), str)):
            raise InvalidDataError(f"{args.annotations}: annotation {number}: expected an object with image_id and "
                                   "caption")
        captions.setdefault(annotation["image_id"], []).append(annotation["caption"])
    images = data["images"]
    rows = (sum(len(captions.get(i.get("id"), ())) for i in images if isinstance(i, dict)) if args.per_caption
            else len(images))
    name = coco_output_name(args.annotations, args.per_caption)
    items = caption_items(args.annotations, images, "id", partial(read_coco, args.images, captions), args.per_caption)
    return Conversion([OutputFile(name, items, rows)])
