"""Streaming, atomic TSV writing with images encoded in worker processes.

Rows reach the disk as they are made (memory stays flat however many images), in the order the
format module yields them whatever the number of workers, and a file appears under its final name
only once it is complete: it is written to a hidden ``.NAME.partial-PID`` beside it and renamed at
the end, so a killed run leaves no half file where training would read it.
"""
from __future__ import annotations

import multiprocessing
import os
import sys
import time
from collections import deque
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import IO, Deque, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

from tqdm import tqdm

from ..data.refcoco_dataset import parse_region
from ..errors import InvalidDataError, OptionError
from .entries import IMAGE, Box, Entry, InvalidEntry, Item, Row, format_number
from .images import EncodedImage, ImageEncoder

#: Images handed to a worker at once, and chunks in flight per worker: enough to keep every worker busy,
#: few enough that encoded images never pile up in memory ahead of the writer.
CHUNK_IMAGES = 8
CHUNKS_IN_FLIGHT_PER_WORKER = 4
#: The file that lists what ``--skip-invalid`` skipped, in the output folder.
REPORT_NAME = "make_tsv_skipped.txt"


class AtomicFile:
    """``open(path, mode)`` that writes a hidden partial file beside ``path`` and renames it to ``path``
    only when the ``with`` block ends without an error (on an error the partial file is removed)."""

    def __init__(self, path: str, mode: str = "w"):
        self.path = path
        self.mode = mode
        folder, name = os.path.split(os.path.abspath(path))
        self.partial_path = os.path.join(folder, f".{name}.partial-{os.getpid()}")
        self.handle: Optional[IO] = None
        self.discarded = False

    def discard(self) -> None:
        """Keep nothing: the partial file is removed at the end of the ``with`` block."""
        self.discarded = True

    def __enter__(self) -> IO:
        text = "b" not in self.mode
        self.handle = open(self.partial_path, self.mode, **({"encoding": "utf-8", "newline": "\n"} if text else {}))
        return self.handle

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None or self.discarded:
            self.handle.close()
            os.remove(self.partial_path)
            return
        self.handle.flush()
        os.fsync(self.handle.fileno())
        self.handle.close()
        os.replace(self.partial_path, self.path)


def write_atomically(path: str, data: Union[str, bytes]) -> None:
    """A small file (a class list, a pickle) written under the same all-or-nothing rule as the TSVs."""
    with AtomicFile(path, "wb" if isinstance(data, bytes) else "w") as handle:
        handle.write(data)


def render_box(box: Box, image: EncodedImage) -> str:
    """``x0,y0,x1,y1`` of the written image: checked and clipped against the original image exactly as
    training checks a region (:func:`parse_region`: at most 1 pixel outside), then scaled like the image."""
    original = ",".join(repr(float(v)) for v in (box.x0, box.y0, box.x1, box.y1))
    (x0, y0, x1, y1), _ = parse_region(original, image.width, image.height)
    scaled = (x0 * image.scale_x, y0 * image.scale_y, x1 * image.scale_x, y1 * image.scale_y)
    return ",".join(format_number(v) for v in scaled)


def render_row(row: Row, image: EncodedImage) -> str:
    """The row as one TSV line; ``InvalidDataError(reason)`` for a box the image cannot hold."""
    fields = []
    for column in row.columns:
        if column is IMAGE:
            fields.append(image.base64)
        elif isinstance(column, Box):
            fields.append(render_box(column, image))
        elif any(char in column for char in "\t\n\r"):  # the format modules pass text through one_line()
            raise AssertionError(f"{row.key}: a text column holds a tab or line break: {column!r}")
        else:
            fields.append(column)
    return "\t".join(fields) + "\n"


@dataclass
class OutputFile:
    """One TSV to write: its file name in the output folder, its items in row order, and (for the progress
    bar) how many rows to expect."""

    name: str
    items: Iterable[Item]
    expected_rows: Optional[int] = None


@dataclass
class Conversion:
    """What one ``make_tsv`` run writes: the TSVs, then small files beside them (answer or class lists)."""

    outputs: List[OutputFile]
    extra_files: Dict[str, Union[str, bytes]] = field(default_factory=dict)


@dataclass
class FileSummary:
    """What was written to one file (or, added up, to all)."""

    name: str
    rows: int = 0
    images: int = 0
    image_bytes: int = 0  # the source image files
    tsv_bytes: int = 0
    seconds: float = 0.0
    skipped_entries: int = 0
    skipped_rows: int = 0

    def add(self, other: "FileSummary") -> None:
        for name in ("rows", "images", "image_bytes", "tsv_bytes", "skipped_entries", "skipped_rows"):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def describe(self) -> str:
        rate = self.rows / self.seconds if self.seconds > 0 else float("inf")
        ratio = f" = {self.tsv_bytes / self.image_bytes:.2f}x" if self.image_bytes else ""
        skipped = (f"; skipped {self.skipped_entries} invalid entr{'y' if self.skipped_entries == 1 else 'ies'} "
                   f"({self.skipped_rows} rows)" if self.skipped_entries else "")
        if not self.rows:
            return f"no rows, not written{skipped}"
        return (f"{self.rows} rows, {self.images} images; TSV {self.tsv_bytes / 1e6:.2f} MB, source images "
                f"{self.image_bytes / 1e6:.2f} MB{ratio}; {self.seconds:.2f} s, {rate:.1f} rows/s{skipped}")


@dataclass
class InvalidEntryPolicy:
    """Bad entries stop the run (``skip=False``) or are counted and kept for the report."""

    skip: bool
    skipped: List[InvalidEntry] = field(default_factory=list)

    def reject(self, error: InvalidEntry, summary: FileSummary, rows: int) -> None:
        if not self.skip:
            raise error
        self.skipped.append(error)
        summary.skipped_entries += 1
        summary.skipped_rows += rows


_worker_encoder: List[ImageEncoder] = []  # set once per pool process


def _start_worker(encoder: ImageEncoder) -> None:
    _worker_encoder[:] = [encoder]


def encode_images(encoder: ImageEncoder, paths: Sequence[str]) -> List[Union[EncodedImage, str]]:
    """Each image encoded, or the reason it cannot be (a string, so that one bad image fails only its entry)."""
    results: List[Union[EncodedImage, str]] = []
    for path in paths:
        try:
            results.append(encoder.encode(path))
        except InvalidDataError as err:
            results.append(str(err))
    return results


def _encode_in_worker(paths: Sequence[str]) -> List[Union[EncodedImage, str]]:
    return encode_images(_worker_encoder[0], paths)


def encoded_in_order(items: Iterable[Item], encoder: ImageEncoder, pool, workers: int) -> Iterator[
        Tuple[Item, Union[EncodedImage, str, None]]]:
    """``(item, its image or the reason it failed)`` in the items' order (None for an InvalidEntry), with at
    most a few chunks per worker encoded ahead of the consumer."""
    def chunks() -> Iterator[List[Item]]:
        chunk: List[Item] = []
        for item in items:
            chunk.append(item)
            if sum(isinstance(i, Entry) for i in chunk) == CHUNK_IMAGES:
                yield chunk
                chunk = []
        if chunk:
            yield chunk

    def paths(chunk: List[Item]) -> List[str]:
        return [item.image_path for item in chunk if isinstance(item, Entry)]

    def resolve(chunk: List[Item], images: List[Union[EncodedImage, str]]):
        images = iter(images)
        for item in chunk:
            yield item, next(images) if isinstance(item, Entry) else None

    if pool is None:
        for chunk in chunks():
            yield from resolve(chunk, encode_images(encoder, paths(chunk)))
        return
    in_flight: Deque = deque()
    limit = CHUNKS_IN_FLIGHT_PER_WORKER * workers
    for chunk in chunks():
        in_flight.append((chunk, pool.apply_async(_encode_in_worker, (paths(chunk),))))
        if len(in_flight) >= limit:
            done, result = in_flight.popleft()
            yield from resolve(done, result.get())
    while in_flight:
        done, result = in_flight.popleft()
        yield from resolve(done, result.get())


def write_tsv(output: OutputFile, out_dir: str, encoder: ImageEncoder, pool, workers: int,
              policy: InvalidEntryPolicy, progress: bool = True) -> FileSummary:
    """One output file, streamed and renamed into place when complete."""
    summary = FileSummary(output.name)
    started = time.perf_counter()
    path = os.path.join(out_dir, output.name)
    bar = tqdm(total=output.expected_rows, desc=output.name, unit=" rows", file=sys.stderr, mininterval=1.0,
               disable=not progress, dynamic_ncols=True)
    atomic = AtomicFile(path)
    with bar, atomic as handle:
        for item, image in encoded_in_order(output.items, encoder, pool, workers):
            if isinstance(item, InvalidEntry):
                policy.reject(item, summary, rows=1)
                bar.update(1)
                continue
            if isinstance(image, str):
                policy.reject(InvalidEntry(item.source, item.key, image), summary, rows=len(item.rows))
                bar.update(len(item.rows))
                continue
            written = 0
            for row in item.rows:
                try:
                    line = render_row(row, image)
                except InvalidDataError as err:
                    policy.reject(InvalidEntry(item.source, row.key, str(err)), summary, rows=1)
                    continue
                handle.write(line)
                written += 1
            summary.rows += written
            if written:
                summary.images += 1
                summary.image_bytes += image.source_bytes
            bar.update(len(item.rows))
        if summary.rows == 0:  # an empty TSV is no data set: training and check_data would refuse it
            atomic.discard()
    summary.seconds = time.perf_counter() - started
    summary.tsv_bytes = os.path.getsize(path) if summary.rows else 0
    return summary


def write_tsv_files(outputs: Iterable[OutputFile], out_dir: str, encoder: ImageEncoder, workers: int = 1,
                    skip_invalid: bool = False, progress: bool = True) -> Tuple[List[FileSummary], List[InvalidEntry]]:
    """Every output file into ``out_dir`` with one pool of ``workers`` encoding processes (none for 1);
    the summaries and the entries skipped (``skip_invalid``; otherwise the first one raises)."""
    if workers < 1:
        raise OptionError(f"--workers must be at least 1, got {workers}")
    os.makedirs(out_dir, exist_ok=True)
    policy = InvalidEntryPolicy(skip_invalid)
    pool_context = nullcontext() if workers == 1 else multiprocessing.Pool(workers, _start_worker, (encoder,))
    with pool_context as pool:
        summaries = [write_tsv(output, out_dir, encoder, pool, workers, policy, progress) for output in outputs]
    return summaries, policy.skipped
