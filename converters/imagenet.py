"""ImageNet-1k: ``train/<wnid>/*.JPEG``, ``val/`` and ``LOC_synset_mapping.txt`` -> ``imagenet_1k_<split>.tsv``
and the class list ``class2label_new.pkl``.

Columns (OFA's image_classify layout): image, label index (1-based, the synset file's order, which is
Caffe's ``synset_words.txt`` order), class name. A class's name is the first of its synonyms
(``n01440764 tench, Tinca tinca`` -> ``tench``); the few first synonyms that several classes share
(``crane``, ``maillot``) are told apart by the class's next synonym when it has one that is unique,
else by its wnid (``crane (n03126707)``), because the task scores by exact class-name match and the
class list must hold distinct names. ``class2label_new.pkl`` is ``{class name: 0-based index}`` in
the synset order. A ``val/`` folder is read either as ``val/<wnid>/*`` or, flat, with
``--annotations LOC_val_solution.csv`` (``ImageId,PredictionString``, the first wnid is the label).
"""
from __future__ import annotations

import argparse
import csv
import os
import pickle
from collections import Counter
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from ..errors import InvalidDataError, MissingFileError, OptionError
from .entries import IMAGE, Entry, InvalidEntry, Item, Row, one_line
from .writer import Conversion, OutputFile

CLASS_LIST_NAME = "class2label_new.pkl"
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")


def read_synsets(path: str) -> List[Tuple[str, List[str]]]:
    """``(wnid, synonyms)`` per line of LOC_synset_mapping.txt, in file order."""
    if not os.path.isfile(path):
        raise MissingFileError(f"--synsets: file not found: {path}")
    synsets = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            wnid, _, names = line.strip().partition(" ")
            synonyms = [one_line(name) for name in names.split(",") if one_line(name)]
            if not wnid or not synonyms:
                raise InvalidDataError(f"{path}: line {number}: expected '<wnid> <name>[, <name>...]', got "
                                       f"{line.strip()!r}")
            synsets.append((wnid, synonyms))
    wnids = Counter(wnid for wnid, _ in synsets)
    repeated = sorted(wnid for wnid, count in wnids.items() if count > 1)
    if repeated:
        raise InvalidDataError(f"{path}: wnid(s) listed twice: {repeated}")
    return synsets


def class_names(synsets: Sequence[Tuple[str, List[str]]]) -> List[str]:
    """One distinct name per class (the module docstring's rule)."""
    first = Counter(synonyms[0] for _, synonyms in synsets)
    taken = {name for name, count in first.items() if count == 1}
    names = []
    for wnid, synonyms in synsets:
        name = synonyms[0]
        if first[name] > 1:
            alternative = next((f"{name}, {other}" for other in synonyms[1:] if f"{name}, {other}" not in taken), None)
            name = alternative or f"{name} ({wnid})"
            taken.add(name)
        names.append(name)
    return names


def image_classify_row(key: str, label_index: int, class_name: str) -> Row:
    """An image_classify TSV row (image, 1-based label index, class name)."""
    if not class_name:
        raise InvalidDataError("the class name is empty")
    return Row(key, (IMAGE, str(label_index), class_name))


def is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def folder_images(split_dir: str, wnids: Dict[str, int]) -> List[Tuple[str, str]]:
    """``(path, wnid)`` of ``split_dir/<wnid>/*`` in (synset, file name) order; an unknown folder is an error."""
    folders = sorted(name for name in os.listdir(split_dir) if os.path.isdir(os.path.join(split_dir, name)))
    unknown = [name for name in folders if name not in wnids]
    if unknown:
        raise InvalidDataError(f"{split_dir}: folder(s) {unknown[:5]} are not wnids of --synsets")
    images = []
    for wnid in sorted(folders, key=wnids.__getitem__):
        folder = os.path.join(split_dir, wnid)
        images += [(os.path.join(folder, name), wnid) for name in sorted(os.listdir(folder)) if is_image(name)]
    return images


def flat_images(split_dir: str, solution: Optional[str]) -> List[Tuple[str, Optional[str]]]:
    """``(path, wnid or None)`` of a flat folder labelled by LOC_val_solution.csv (None: no label found)."""
    if solution is None:
        raise InvalidDataError(f"{split_dir}: no class folders; give --annotations LOC_val_solution.csv for a flat "
                               "folder")
    if not os.path.isfile(solution):
        raise MissingFileError(f"--annotations: file not found: {solution}")
    labels: Dict[str, str] = {}
    with open(solution, encoding="utf-8", newline="") as handle:
        for number, record in enumerate(csv.DictReader(handle), 2):
            if not record.get("ImageId") or not (record.get("PredictionString") or "").split():
                raise InvalidDataError(f"{solution}: line {number}: expected ImageId,PredictionString")
            labels[record["ImageId"]] = record["PredictionString"].split()[0]
    names = sorted(name for name in os.listdir(split_dir) if is_image(name))
    return [(os.path.join(split_dir, name), labels.get(os.path.splitext(name)[0])) for name in names]


def split_items(source: str, split_dir: str, images: List[Tuple[str, Optional[str]]], wnids: Dict[str, int],
                names: List[str]) -> Iterator[Item]:
    for path, wnid in images:
        key = os.path.relpath(path, split_dir)
        if wnid is None:
            yield InvalidEntry(source, key, "no label for this image")
        elif wnid not in wnids:
            yield InvalidEntry(source, key, f"label {wnid!r} is not a wnid of --synsets")
        else:
            index = wnids[wnid]
            yield Entry(source, key, path, [image_classify_row(key, index + 1, names[index])])


def class_list_pickle(names: Sequence[str]) -> bytes:
    """OFA's class list: ``{class name: 0-based index}``, in label order."""
    if len(set(names)) != len(names):
        raise InvalidDataError("class names must be distinct")
    return pickle.dumps({name: index for index, name in enumerate(names)}, protocol=4)


def convert(args: argparse.Namespace) -> Conversion:
    synsets = read_synsets(args.synsets)
    wnids = {wnid: index for index, (wnid, _) in enumerate(synsets)}
    names = class_names(synsets)
    outputs, flat_splits = [], 0
    for split in [s for s in args.splits.split(",") if s]:
        split_dir = os.path.join(args.images, split)
        if not os.path.isdir(split_dir):
            raise MissingFileError(f"--images: no {split}/ folder in {args.images} (--splits {args.splits})")
        has_folders = any(os.path.isdir(os.path.join(split_dir, name)) for name in os.listdir(split_dir))
        images = folder_images(split_dir, wnids) if has_folders else flat_images(split_dir, args.annotations)
        source = split_dir if has_folders else args.annotations
        outputs.append(OutputFile(f"imagenet_1k_{split}.tsv", split_items(source, split_dir, images, wnids, names),
                                  len(images)))
        flat_splits += not has_folders
    if args.annotations and not flat_splits:
        raise OptionError(f"--annotations {args.annotations}: labels a flat folder, but every split of --splits "
                          f"{args.splits} has class folders")
    return Conversion(outputs, {CLASS_LIST_NAME: class_list_pickle(names)})
