"""The one reader of caption references: a caption field's ``&&``-joined references, cleaned and checked.

Validation rows (the caption dataset), the CIDEr tables the caption task counts for validation and SCST, and
``tools/cider_table.py`` all read references here, so that they clean and reject exactly the same text: a row
whose references the dataset refuses is never counted in a table either.
"""
from __future__ import annotations

from typing import Iterator, List, Optional, Sequence, Tuple

from ..errors import InvalidDataError
from .text import clean_references
from .tsv import InvalidRowError, TsvFile


def parse_references(field: str) -> List[str]:
    """The cleaned references of one caption field; one that cleans to nothing is an
    :class:`~ofa_el.errors.InvalidDataError` (the caller names the column and row)."""
    references = clean_references(field)
    empty = [number for number, reference in enumerate(references, start=1) if not reference]
    if empty:
        raise InvalidDataError(f"reference(s) {empty} of {len(references)} empty after cleaning")
    return references


def read_references(paths: Sequence[str], caption_column: int, id_column: Optional[int] = None,
                    skip_invalid_rows: bool = False) -> Iterator[Tuple[Optional[str], List[str]]]:
    """``(image id or None, cleaned references)`` of every row of ``paths``, file by file, in file order.

    Only the id and caption columns are decoded (images are streamed past, so multi-GB files work). A row
    whose references do not parse raises :class:`~ofa_el.data.tsv.InvalidRowError` naming file, row and
    column, or is left out with ``skip_invalid_rows`` (as the dataset skips it).
    """
    columns = (caption_column,) if id_column is None else (id_column, caption_column)
    for path in paths:
        rows = TsvFile(path, columns, slice_id=0, slice_count=1)
        try:
            for index in range(len(rows)):
                fields = rows[index]
                try:
                    references = parse_references(fields[-1])
                except InvalidDataError as err:
                    if skip_invalid_rows:
                        continue
                    raise InvalidRowError(path, rows.row_number(index), f"caption column {caption_column}: {err}"
                                          ) from None
                yield (fields[0] if id_column is not None else None), references
        finally:
            rows.close()
