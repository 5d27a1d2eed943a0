"""SNLI-VE: ``snli_ve_<split>.jsonl`` + Flickr30k images -> ``snli_ve_<split>.tsv``.

Columns (OFA's snli_ve layout): uniq-id (``pairID``), image-id (``Flickr30K_ID``), image, hypothesis
(``sentence2``), caption (the premise, ``sentence1``), label (``gold_label``: entailment, neutral or
contradiction, which the task maps to yes, maybe, no).
"""
from __future__ import annotations

import argparse
import os
import re
from typing import Iterator, List, Tuple

from ..errors import InvalidDataError, OptionError
from .entries import IMAGE, Entry, InvalidEntry, Item, Row, group_by_first_appearance, one_line, read_jsonl, require
from .writer import Conversion, OutputFile

LABELS = ("entailment", "neutral", "contradiction")


def snli_ve_row(key: str, uniq_id: str, image_id: str, hypothesis: str, caption: str, label: str) -> Row:
    """An snli_ve TSV row; ``InvalidDataError`` for an empty text or a label outside :data:`LABELS`."""
    hypothesis, caption, label = one_line(hypothesis), one_line(caption), one_line(label)
    if not hypothesis:
        raise InvalidDataError("the hypothesis is empty")
    if not caption:
        raise InvalidDataError("the premise caption is empty")
    if label not in LABELS:
        raise InvalidDataError(f"label {label!r} is not one of {', '.join(LABELS)}")
    return Row(key, (uniq_id, image_id, IMAGE, hypothesis, caption, label))


def output_name(path: str) -> str:
    """``snli_ve_dev.jsonl`` -> ``snli_ve_dev.tsv``; any other name keeps its stem."""
    stem = os.path.splitext(os.path.basename(path))[0]
    return f"{stem if re.match(r'^snli_ve_', stem) else 'snli_ve_' + stem}.tsv"


def file_items(path: str, images_dir: str, records: List[Tuple[int, dict]]) -> Iterator[Item]:
    """One entry per image, in the order the file first names it; one row per pair."""
    def image_of(numbered: Tuple[int, dict]) -> object:
        return str(numbered[1].get("Flickr30K_ID")) if isinstance(numbered[1], dict) else None

    for image_id, pairs in group_by_first_appearance(records, image_of).items():
        entry = Entry(path, f"image {image_id}", os.path.join(images_dir, f"{image_id}.jpg"))
        for number, record in pairs:
            key = f"line {number}"
            try:
                require(record, ("Flickr30K_ID", "pairID", "sentence1", "sentence2", "gold_label"))
                entry.rows.append(snli_ve_row(key, one_line(record["pairID"]), image_id, record["sentence2"],
                                              record["sentence1"], record["gold_label"]))
            except ValueError as err:
                yield InvalidEntry(path, key, str(err))
        if entry.rows:
            yield entry


def convert(args: argparse.Namespace) -> Conversion:
    outputs = []
    for path in args.annotations:
        records = list(read_jsonl(path, "--annotations"))
        outputs.append(OutputFile(output_name(path), file_items(path, args.images, records), len(records)))
    names = [output.name for output in outputs]
    if len(set(names)) != len(names):
        raise OptionError(f"--annotations: two files would write the same output ({', '.join(names)})")
    return Conversion(outputs)
