"""Random-access reader for OFA's TSV files, sharded across distributed ranks.

OFA's ``FileDataset`` reads rows strictly in file order and ignores the requested index,
so rows can never be shuffled and DataLoader workers see an ill-defined stream. This
reader records the byte offset of every row in one pass and then seeks to exactly the
row asked for: the file never has to fit in memory, any order works, and every process
(DataLoader worker) opens its own handle on first use.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ..errors import InvalidDataError, MissingFileError, OptionError

#: Bytes scanned per read while indexing; large enough for multi-GB files to index quickly.
_SCAN_CHUNK = 1 << 24


class InvalidRowError(InvalidDataError):
    """A row of a data file that cannot be turned into a sample; ``row`` is the 1-based line number."""

    def __init__(self, path: str, row: int, reason: str):
        super().__init__(f"{path}: row {row}: {reason}")
        self.path = path
        self.row = row
        self.reason = reason

    def __reduce__(self):  # picklable with its three fields (multiprocessing pools, gathered errors)
        return type(self), (self.path, self.row, self.reason)


def parse_selected_cols(selected_cols: Union[None, str, Sequence[int]]) -> Optional[Tuple[int, ...]]:
    """``--selected-cols``: ``"0,4,2"`` or a sequence of 0-based column indices, kept in the given order."""
    if selected_cols is None or selected_cols == "":
        return None
    if isinstance(selected_cols, str):
        try:
            cols = tuple(int(part) for part in selected_cols.split(","))
        except ValueError:
            raise OptionError("--selected-cols: expected comma-separated column indices, got "
                              f"{selected_cols!r}") from None
    else:
        cols = tuple(int(col) for col in selected_cols)
    if any(col < 0 for col in cols):
        raise OptionError(f"--selected-cols: column indices must be >= 0, got {selected_cols!r}")
    return cols


def shard_range(total_rows: int, slice_id: int, slice_count: int) -> Tuple[int, int]:
    """``(first_row, num_rows)`` of one rank's contiguous block, with OFA's arithmetic.

    The first ``total_rows % slice_count`` ranks get one extra row, so the blocks tile the
    file exactly once.
    """
    if slice_count < 1 or not 0 <= slice_id < slice_count:
        raise ValueError(f"shard {slice_id} of {slice_count}: need 0 <= slice_id < slice_count")
    per_slice, remainder = divmod(total_rows, slice_count)
    if slice_id < remainder:
        return (per_slice + 1) * slice_id, per_slice + 1
    return per_slice * slice_id + remainder, per_slice


def default_shard() -> Tuple[int, int]:
    """``(rank, world_size)`` of torch.distributed, or ``(0, 1)`` when it is not initialised."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def index_rows(path: str) -> np.ndarray:
    """Byte offsets of the start of every line, plus the file size as a final sentinel.

    A last line without a trailing newline still counts as a row.
    """
    starts = [np.zeros(1, dtype=np.int64)]
    size = 0
    with open(path, "rb") as handle:
        while True:
            chunk = handle.read(_SCAN_CHUNK)
            if not chunk:
                break
            newlines = np.flatnonzero(np.frombuffer(chunk, dtype=np.uint8) == ord("\n"))
            starts.append(newlines.astype(np.int64) + size + 1)
            size += len(chunk)
    offsets = np.concatenate(starts)
    if offsets[-1] != size:  # no trailing newline: the file end closes the last row
        offsets = np.append(offsets, size)
    return offsets


class TsvFile:
    """The rows of one TSV file that belong to this rank, as tuples of ``str`` fields.

    Args:
        path: the TSV file (LF line endings, UTF-8, tab-separated).
        selected_cols: the columns to return, in this order (``--selected-cols``); all if None.
        num_columns: the number of columns every row must have; default: as many as row 1
            has. A stray tab inside a field would otherwise shift the columns silently.
        slice_id, slice_count: this rank's shard; default :func:`default_shard`.
    """

    def __init__(
        self,
        path: str,
        selected_cols: Union[None, str, Sequence[int]] = None,
        num_columns: Optional[int] = None,
        slice_id: Optional[int] = None,
        slice_count: Optional[int] = None,
    ):
        if not os.path.isfile(path):
            raise MissingFileError(f"data file not found: {path}")
        self.path = path
        self.selected_cols = parse_selected_cols(selected_cols)
        if (slice_id is None) != (slice_count is None):
            raise ValueError("give both slice_id and slice_count, or neither")
        if slice_id is None:
            slice_id, slice_count = default_shard()
        self._handle = None
        self._handle_pid = None
        self._offsets = index_rows(path)
        self.total_rows = len(self._offsets) - 1
        if self.total_rows == 0:
            raise InvalidDataError(f"data file is empty: {path}")
        self.slice_id, self.slice_count = slice_id, slice_count
        self.first_row, self.num_rows = shard_range(self.total_rows, slice_id, slice_count)
        self.num_columns = num_columns if num_columns is not None else self._read_row(0).count(b"\t") + 1
        if self.selected_cols is not None and max(self.selected_cols) >= self.num_columns:
            raise InvalidRowError(
                path, 1, f"--selected-cols {','.join(map(str, self.selected_cols))} asks for column "
                f"{max(self.selected_cols)}, but rows have {self.num_columns} columns (0-based indices)")

    def __len__(self) -> int:
        return self.num_rows

    def row_number(self, index: int) -> int:
        """1-based line number in the file of this shard's ``index``-th row (for error messages)."""
        return self.first_row + index + 1

    def row_error(self, index: int, reason: str) -> InvalidRowError:
        """The error for this shard's ``index``-th row: ``<file>: row <line>: <reason>``."""
        return InvalidRowError(self.path, self.row_number(index), reason)

    def _file(self):
        # One handle per process: a handle inherited from the parent of a forked DataLoader
        # worker would share its file position with the parent and the other workers.
        if self._handle is None or self._handle_pid != os.getpid():
            self._handle = open(self.path, "rb")
            self._handle_pid = os.getpid()
        return self._handle

    def read_line(self, index: int) -> bytes:
        """The raw bytes of this shard's ``index``-th row, without the line terminator."""
        if not 0 <= index < self.num_rows:
            raise IndexError(f"{self.path}: index {index} out of range for a shard of {self.num_rows} rows")
        return self._read_row(self.first_row + index)

    def _read_row(self, row: int) -> bytes:
        start, end = int(self._offsets[row]), int(self._offsets[row + 1])
        handle = self._file()
        handle.seek(start)
        data = handle.read(end - start)
        return data[:-1] if data.endswith(b"\n") else data

    def __getitem__(self, index: int) -> Tuple[str, ...]:
        data = self.read_line(index)
        row = self.row_number(index)
        if data.endswith(b"\r"):
            raise InvalidRowError(self.path, row, "line ends with CR (CRLF line endings); OFA TSV files use LF")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as err:
            raise InvalidRowError(self.path, row, f"not valid UTF-8 at byte {err.start}") from None
        fields = text.split("\t")
        if len(fields) != self.num_columns:
            raise InvalidRowError(self.path, row, f"has {len(fields)} tab-separated columns, expected {self.num_columns}")
        if self.selected_cols is None:
            return tuple(fields)
        return tuple(fields[col] for col in self.selected_cols)

    def close(self) -> None:
        if getattr(self, "_handle", None) is not None:
            self._handle.close()
        self._handle = None

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_handle"] = None  # handles do not travel to other processes; reopened on first read
        state["_handle_pid"] = None
        return state

    def __del__(self):
        self.close()
