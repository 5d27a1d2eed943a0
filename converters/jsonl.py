"""Your own data: JSON Lines (one object per line: an image path and the task's fields) -> the task's TSV.

Keys per ``--task`` (``image``: a path relative to ``--images``, default the file's folder; ``id`` and
``image_id`` are optional and default to the line number and the image's file name without extension):

* ``caption``: ``caption``, a string (one caption per row: training) or a list (one ``&&``-joined row of
  references: validation, test, stage 2);
* ``refcoco``: ``text`` and ``box``, the corners ``[x0, y0, x1, y1]`` in the image's pixels;
* ``vqa_gen``: ``question`` and ``answers``, the annotators' answers (a list: scored as VQA does, see
  :mod:`.vqa`) or ``{answer: confidence}``; optional ``tags`` (a list or ``&&``-joined string);
* ``snli_ve``: ``hypothesis``, ``caption`` (the premise) and ``label`` (entailment, neutral, contradiction);
* ``image_classify``: ``label``, the class name; the label index is its position among the sorted class
  names of all the given files, which ``class2label_new.pkl`` lists.
"""
from __future__ import annotations

import argparse
import os
from collections import Counter
from typing import Callable, Dict, Iterator, List, Tuple

from ..errors import InvalidDataError, OptionError
from .coco_captions import caption_row, checked_caption
from .entries import Box, Entry, InvalidEntry, Item, Row, one_line, read_jsonl, require
from .imagenet import CLASS_LIST_NAME, class_list_pickle, image_classify_row
from .refcoco import refcoco_row
from .snli_ve import snli_ve_row
from .vqa import ANS2LABEL_NAME, ans2label_pickle, ranked, soft_scores, vqa_row
from .writer import Conversion, OutputFile

#: ``(key, uniq_id, image_id, record, candidate or class indexes) -> Row`` per task.
RowBuilder = Callable[[str, str, str, dict, Dict[str, int]], Row]


def _caption(key: str, uniq_id: str, image_id: str, record: dict, _) -> Row:
    require(record, ("caption",))
    captions = record["caption"] if isinstance(record["caption"], list) else [record["caption"]]
    return caption_row(key, uniq_id, image_id, [checked_caption(str(c), f"caption {k + 1}")
                                                for k, c in enumerate(captions)])


def _corners(value) -> Box:
    if not (isinstance(value, list) and len(value) == 4
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
        raise InvalidDataError(f"box must be [x0, y0, x1, y1], got {value!r}")
    return Box(*(float(v) for v in value))


def _refcoco(key: str, uniq_id: str, image_id: str, record: dict, _) -> Row:
    require(record, ("text", "box"))
    return refcoco_row(key, uniq_id, image_id, str(record["text"]), _corners(record["box"]))


def _scored_answers(record: dict) -> List[Tuple[str, float]]:
    """A vqa_gen line's ``(answer, confidence)`` pairs, best first."""
    require(record, ("question", "answers"))
    answers = record["answers"]
    if isinstance(answers, dict):
        return ranked((one_line(a), float(c)) for a, c in answers.items())
    if isinstance(answers, list):
        return soft_scores([one_line(a) for a in answers if one_line(a)])
    raise InvalidDataError(f"answers must be a list of answers or {{answer: confidence}}, got {answers!r}")


def _vqa(key: str, uniq_id: str, image_id: str, record: dict, candidates: Dict[str, int]) -> Row:
    tags = record.get("tags", "")
    return vqa_row(key, uniq_id, image_id, str(record.get("question", "")), _scored_answers(record),
                   candidates.keys(), "&&".join(map(str, tags)) if isinstance(tags, list) else str(tags))


def _snli_ve(key: str, uniq_id: str, image_id: str, record: dict, _) -> Row:
    require(record, ("hypothesis", "caption", "label"))
    return snli_ve_row(key, uniq_id, image_id, str(record["hypothesis"]), str(record["caption"]),
                       str(record["label"]))


def _image_classify(key: str, uniq_id: str, image_id: str, record: dict, classes: Dict[str, int]) -> Row:
    require(record, ("label",))
    name = one_line(record["label"])
    return image_classify_row(key, classes.get(name, -1) + 1, name)


TASKS: Dict[str, RowBuilder] = {"caption": _caption, "refcoco": _refcoco, "vqa_gen": _vqa, "snli_ve": _snli_ve,
                                "image_classify": _image_classify}


def file_items(path: str, images_dir: str, records: List[Tuple[int, dict]], build: RowBuilder,
               classes: Dict[str, int]) -> Iterator[Item]:
    """One entry and one row per line, in file order."""
    for number, record in records:
        key = f"line {number}"
        try:
            require(record, ("image",))
            image = str(record["image"])
            uniq_id = one_line(record.get("id", number))
            image_id = one_line(record.get("image_id", os.path.splitext(os.path.basename(image))[0]))
            row = build(key, uniq_id, image_id, record, classes)
        except (ValueError, TypeError) as err:
            yield InvalidEntry(path, key, str(err))
            continue
        yield Entry(path, key, os.path.join(images_dir, image), [row])


def output_name(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0] + ".tsv"


def convert(args: argparse.Namespace) -> Conversion:
    files = [(path, list(read_jsonl(path, "--annotations"))) for path in args.annotations]
    names = [output_name(path) for path, _ in files]
    if len(set(names)) != len(names):
        raise OptionError(f"--annotations: two files would write the same output ({', '.join(names)})")
    classes: Dict[str, int] = {}
    extra = {}
    if args.task == "vqa_gen":  # every line's training target is a candidate answer, the most frequent first
        targets = Counter()
        for _, records in files:
            for _, record in records:
                try:
                    targets[_scored_answers(record)[0][0]] += 1
                except (ValueError, TypeError, IndexError):
                    pass  # the line is reported as invalid when its row is built
        classes = {answer: index for index, (answer, _) in enumerate(ranked(targets.items()))}
        extra[ANS2LABEL_NAME] = ans2label_pickle(classes)
    elif args.task == "image_classify":
        labels = sorted({one_line(r["label"]) for _, records in files for _, r in records
                         if isinstance(r, dict) and "label" in r} - {""})
        classes = {name: index for index, name in enumerate(labels)}
        extra[CLASS_LIST_NAME] = class_list_pickle(labels)
    outputs = [OutputFile(name, file_items(path, args.images or os.path.dirname(os.path.abspath(path)), records,
                                           TASKS[args.task], classes), len(records))
               for name, (path, records) in zip(names, files)]
    return Conversion(outputs, extra)
