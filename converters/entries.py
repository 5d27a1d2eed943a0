"""What a format module hands the writer: images with their rows, and the entries it rejected.

A row's columns are strings, the :data:`IMAGE` marker (the image's base64 goes there) or a
:class:`Box` (checked against the image, clipped, scaled like the image). A bad entry is never
written as a silent bad row: it is an :class:`InvalidEntry` (``input: entry: reason``), which stops
the run or, with ``--skip-invalid``, is counted and listed in the report.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Hashable, Iterable, Iterator, List, Tuple, TypeVar, Union

from ..errors import InvalidDataError, MissingFileError

T = TypeVar("T")
#: Separator of ``&&``-joined fields (caption references, VQA answers, object tags).
JOIN = "&&"


class _ImageColumn:
    """The column that holds the row's image as base64."""

    def __repr__(self) -> str:
        return "IMAGE"


IMAGE = _ImageColumn()


@dataclass(frozen=True)
class Box:
    """A box column: corners ``x0, y0, x1, y1`` in the original image's pixels."""

    x0: float
    y0: float
    x1: float
    y1: float

    @classmethod
    def from_xywh(cls, xywh: Any) -> "Box":
        """COCO's ``[x, y, width, height]``; ``InvalidDataError`` unless it is four finite numbers with w, h > 0."""
        if not (isinstance(xywh, (list, tuple)) and len(xywh) == 4
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in xywh)):
            raise InvalidDataError(f"bbox must be [x, y, width, height], got {xywh!r}")
        x, y, w, h = (float(v) for v in xywh)
        if not w > 0 or not h > 0:
            raise InvalidDataError(f"bbox [x, y, width, height] = {xywh!r} has no area")
        return cls(x, y, x + w, y + h)


Column = Union[str, _ImageColumn, Box]


@dataclass
class Row:
    """One TSV row; ``key`` names it in messages (``"ref 17 sentence 2"``)."""

    key: str
    columns: Tuple[Column, ...]


@dataclass
class Entry:
    """One image (``image_path``) and its rows; ``source`` is the input file that named it, ``key`` the entry."""

    source: str
    key: str
    image_path: str
    rows: List[Row] = field(default_factory=list)


class InvalidEntry(InvalidDataError):
    """An annotation that cannot become a row: ``input: entry: reason``."""

    def __init__(self, source: str, key: str, reason: str):
        super().__init__(f"{source}: {key}: {reason}")
        self.source, self.key, self.reason = source, key, reason

    def __reduce__(self):
        return type(self), (self.source, self.key, self.reason)


#: What a format module yields for one output file, in the order the rows are written.
Item = Union[Entry, InvalidEntry]


def group_by_first_appearance(records: Iterable[T], key: Callable[[T], Hashable]) -> Dict[Hashable, List[T]]:
    """Records grouped by ``key`` (an image id), groups in the order their first record comes, records in
    theirs: each image is encoded once, its rows stay together, and the order is the annotations'."""
    groups: Dict[Hashable, List[T]] = {}
    for record in records:
        groups.setdefault(key(record), []).append(record)
    return groups


def one_line(text: Any) -> str:
    """Text with every run of whitespace (tabs and newlines included) as one space: it cannot break a TSV row."""
    return " ".join(str(text).split())


def format_number(value: float) -> str:
    """A number to 1e-6 without trailing zeros (``140``, ``213.5``, ``0.6``, ``20.123457``): box corners, scores."""
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def join_fields(values: Iterable[str], what: str) -> str:
    """``values`` joined by ``&&``; ``InvalidDataError`` if one is empty or holds the separator itself."""
    values = list(values)
    for value in values:
        if not value:
            raise InvalidDataError(f"{what} is empty")
        if JOIN in value:
            raise InvalidDataError(f"{what} {value!r} contains the separator {JOIN!r}")
    return JOIN.join(values)


def load_json(path: str, option: str) -> Any:
    """A JSON input file; a missing or malformed file is an error naming the option and the file."""
    if not os.path.isfile(path):
        raise MissingFileError(f"{option}: file not found: {path}")
    with open(path, encoding="utf-8") as handle:
        try:
            return json.load(handle)
        except json.JSONDecodeError as err:
            raise InvalidDataError(f"{path}: not valid JSON ({err})") from None


def read_jsonl(path: str, option: str) -> Iterator[Tuple[int, Any]]:
    """``(1-based line, object)`` per non-blank line of a JSON Lines file; a malformed line names its line."""
    if not os.path.isfile(path):
        raise MissingFileError(f"{option}: file not found: {path}")
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as err:
                raise InvalidDataError(f"{path}: line {number}: not valid JSON ({err})") from None


def linked_annotation(record: Any, keys: Iterable[str], link: str, annotations: Dict[Any, T], missing: str) -> T:
    """``annotations[record[link]]`` once ``record`` is checked to hold ``keys`` (:func:`require`); an
    :class:`~ofa_el.errors.InvalidDataError` with reason ``missing`` (``{}`` in it: the id) when none has that id."""
    require(record, keys)
    annotation = annotations.get(record[link])
    if annotation is None:
        raise InvalidDataError(missing.format(record[link]))
    return annotation


def require(record: Any, keys: Iterable[str], where: str = "") -> None:
    """``InvalidDataError`` (naming ``where`` if given) unless ``record`` is a JSON object holding every key."""
    prefix = f"{where}: " if where else ""
    if not isinstance(record, dict):
        raise InvalidDataError(f"{prefix}expected a JSON object, got {type(record).__name__}")
    missing = [key for key in keys if key not in record]
    if missing:
        raise InvalidDataError(f"{prefix}missing key(s) {missing}")
