"""Rows held in memory, read by a dataset as it reads a TSV file (:class:`~.tsv.TsvFile`).

fairseq's ``build_dataset_for_inference`` builds a dataset from the inputs a caller holds; here a task's own
dataset does so, row checks and preprocessing included, when it is given a :class:`MemoryRows` instead of a path:
``predict`` hands it the images it has decoded and the text it was given, without writing them to a file.
"""
from __future__ import annotations

from typing import Any, Sequence, Tuple

from .tsv import InvalidRowError


class InvalidInputError(InvalidRowError):
    """A row held in memory that cannot be turned into a sample: named by its own name, not by a file and line."""

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


class MemoryRows:
    """Rows in memory, each a tuple of fields already in the dataset's field order (``--selected-cols`` picks
    columns of a file and does not apply here) and a name for its error messages, such as
    ``<predict input 2: photo.jpg>``. A field may hold a decoded value where a file holds text: an image column
    a ``PIL.Image``, so that an image is decoded once.

    Offers what the datasets read of a :class:`~.tsv.TsvFile`: ``len``, rows by index, ``row_number``,
    ``row_error``, ``path`` (what the rows are, for logs), and one shard holding every row.
    """

    slice_id, slice_count, first_row = 0, 1, 0

    def __init__(self, rows: Sequence[Sequence[Any]], names: Sequence[str], path: str = "<rows in memory>"):
        if len(rows) != len(names):
            raise ValueError(f"{path}: {len(rows)} rows but {len(names)} names")
        if not rows:
            raise ValueError(f"{path}: no rows")
        self.rows = [tuple(row) for row in rows]
        self.names = list(names)
        self.path = path
        self.total_rows = self.num_rows = len(self.rows)

    def __len__(self) -> int:
        return self.num_rows

    def __getitem__(self, index: int) -> Tuple[Any, ...]:
        return self.rows[index]

    def row_number(self, index: int) -> int:
        return index + 1

    def row_error(self, index: int, reason: str) -> InvalidInputError:
        return InvalidInputError(self.names[index], self.row_number(index), reason)

    def close(self) -> None:
        """Nothing to release (a file's rows hold a handle)."""
