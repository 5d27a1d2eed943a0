"""RefCOCO / RefCOCO+ / RefCOCOg: ``refs(unc|umd|google).p`` + COCO ``instances.json`` + ``train2014/``.

One row per referring expression: uniq-id ``<ref_id>_<sent_id>``, image-id, expression (the refs'
``sent``: lowercased, tokenised), the box as ``x0,y0,x1,y1`` (COCO's ``[x, y, w, h]`` of the referred
annotation, converted to corners, clipped where at most 1 pixel outside the image, scaled with the
image under ``--max-image-size``) and the image. The refs pickle is read with an unpickler that admits
plain data only (:mod:`ofa_el.data.safe_pickle`).
"""
from __future__ import annotations

import argparse
import os
from typing import Dict, Iterator, List, Sequence

from ..data.safe_pickle import load_restricted_pickle
from ..errors import InvalidDataError, OptionError
from .entries import (IMAGE, Box, Entry, InvalidEntry, Item, Row, group_by_first_appearance, linked_annotation,
                      load_json, one_line, require)
from .writer import Conversion, OutputFile

#: OFA's file prefix for each of refer's folder names.
SET_NAMES = {"refcoco": "refcoco", "refcoco+": "refcocoplus", "refcocog": "refcocog"}
#: Splits in the order their files are written (any other split name follows, sorted).
SPLIT_ORDER = ("train", "val", "testA", "testB", "test")


def load_refs(path: str) -> List[dict]:
    """The refs pickle: a list of dicts of plain data; anything that would import a global is refused."""
    refs = load_restricted_pickle(path, "--refs", "RefCOCO refs file", holds="lists, dicts, strings and numbers")
    if not isinstance(refs, list) or not all(isinstance(ref, dict) for ref in refs):
        raise OptionError(f"--refs {path}: expected a list of refs (dicts), got {type(refs).__name__}")
    return refs


def refcoco_row(key: str, uniq_id: str, image_id: str, text: str, box: Box) -> Row:
    """A refcoco TSV row (uniq-id, image-id, expression, region, image); ``InvalidDataError`` for no expression."""
    text = one_line(text)
    if not text:
        raise InvalidDataError("the expression is empty")
    return Row(key, (uniq_id, image_id, text, box, IMAGE))


def default_set_name(refs_path: str) -> str:
    folder = os.path.basename(os.path.dirname(os.path.abspath(refs_path)))
    if folder not in SET_NAMES:
        raise OptionError(f"--refs {refs_path}: cannot tell the set from its folder {folder!r} (refer's folders are "
                          f"{', '.join(SET_NAMES)}): give --set-name")
    return SET_NAMES[folder]


def split_items(refs_path: str, images_dir: str, refs: List[dict], images: Dict, annotations: Dict) -> Iterator[Item]:
    """One entry per image (in the order the refs first name it), one row per expression of its refs."""
    for image_id, image_refs in group_by_first_appearance(refs, lambda ref: ref.get("image_id")).items():
        image = images.get(image_id)
        if image is None:
            for ref in image_refs:
                yield InvalidEntry(refs_path, f"ref {ref.get('ref_id')}", f"image {image_id} is not in --instances")
            continue
        entry = Entry(refs_path, f"image {image_id}", os.path.join(images_dir, image["file_name"]))
        for ref in image_refs:
            ref_key = f"ref {ref.get('ref_id')}"
            try:
                annotation = linked_annotation(ref, ("ref_id", "ann_id", "sentences"), "ann_id", annotations,
                                               "annotation {} is not in --instances")
                box = Box.from_xywh(annotation.get("bbox"))
                if not ref["sentences"]:
                    raise InvalidDataError("no expressions")
            except (ValueError, TypeError) as err:
                yield InvalidEntry(refs_path, ref_key, str(err))
                continue
            for sentence in ref["sentences"]:
                sent_id = sentence.get("sent_id", len(entry.rows)) if isinstance(sentence, dict) else "?"
                key = f"{ref_key} sentence {sent_id}"
                try:
                    text = sentence.get("sent", sentence.get("raw", "")) if isinstance(sentence, dict) else ""
                    entry.rows.append(refcoco_row(key, f"{ref['ref_id']}_{sent_id}", str(image_id), text, box))
                except ValueError as err:
                    yield InvalidEntry(refs_path, key, str(err))
        if entry.rows:
            yield entry


def ordered_splits(names: Sequence[str]) -> List[str]:
    known = [split for split in SPLIT_ORDER if split in names]
    return known + sorted(set(names) - set(known))


def convert(args: argparse.Namespace) -> Conversion:
    set_name = args.set_name or default_set_name(args.refs)
    refs = load_refs(args.refs)
    instances = load_json(args.instances, "--instances")
    require(instances, ("images", "annotations"), args.instances)
    images = {image["id"]: image for image in instances["images"] if isinstance(image, dict) and "id" in image
              and "file_name" in image}
    annotations = {ann["id"]: ann for ann in instances["annotations"] if isinstance(ann, dict) and "id" in ann}
    by_split: Dict[str, List[dict]] = {}
    for ref in refs:
        by_split.setdefault(str(ref.get("split")), []).append(ref)
    outputs = []
    for split in ordered_splits(list(by_split)):
        split_refs = by_split[split]
        rows = sum(len(ref.get("sentences") or ()) for ref in split_refs)
        outputs.append(OutputFile(f"{set_name}_{split}.tsv",
                                  split_items(args.refs, args.images, split_refs, images, annotations), rows))
    return Conversion(outputs)
