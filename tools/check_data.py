"""Check OFA-format TSV files before training: every row through the same checks training runs.

Training stops at the first bad row (or, with ``--skip-invalid-rows``, drops it); this tool
reads every row of every file with the reader and row parser the task's dataset uses
(column count, UTF-8, line endings, base64, image decoding, caption cleaning or references,
box parsing, clipping and bins, SNLI-VE labels, class names), without a BPE or a model, and lists each
bad row as ``file:row: reason`` (1-based row), then a summary per file and in total.

    python -m ofa_el.tools.check_data --task refcoco refcoco_train.tsv refcoco_val.tsv --workers 4
    python -m ofa_el.tools.check_data --task vqa_gen --ans2label-file trainval_ans2label.pkl vqa_val.tsv

Exit status: 0 if every row is usable, 1 if any row is bad, 2 for a usage error (missing
file, bad option). Rows are read by seeking, a block at a time, so memory stays flat
whatever the file size; ``--workers N`` checks contiguous blocks in N processes and still
prints in file order.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from multiprocessing.pool import Pool
from typing import Callable, ContextManager, Dict, Iterator, List, Optional, Sequence, Tuple

from ..data.candidates import load_answer_list, parse_answer_dict
from ..data.caption_dataset import CAPTION_PATCH_IMAGE_SIZE, CAPTION_SELECTED_COLS, CaptionRowParser
from ..data.image_classify_dataset import (IMAGE_CLASSIFY_PATCH_IMAGE_SIZE, IMAGE_CLASSIFY_SELECTED_COLS,
                                           ImageClassifyRowParser)
from ..data.ofa_dataset import RowParser, selected_field_columns
from ..data.refcoco_dataset import REFCOCO_PATCH_IMAGE_SIZE, REFCOCO_SELECTED_COLS, RefcocoRowParser
from ..data.snli_ve_dataset import SNLI_VE_PATCH_IMAGE_SIZE, SNLI_VE_SELECTED_COLS, SnliVeRowParser
from ..data.tsv import InvalidRowError, TsvFile
from ..data.vqa_dataset import VQA_PATCH_IMAGE_SIZE, VQA_SELECTED_COLS, VqaRowParser
from ..tasks.vqa_gen import VqaGenConfig
from .errors import quiet_logs, run_cli

#: Rows per block handed to a worker: large enough to amortise the hand-over, small enough to
#: keep every worker busy and the results printed soon after they are known.
MAX_BLOCK_ROWS = 256


@dataclass(frozen=True)
class TaskSpec:
    """What the checker needs to know of a task: its parser and OFA's defaults for it."""

    selected_cols: str
    patch_image_size: int
    make_parser: Callable[[argparse.Namespace, str], RowParser]
    reads_split: bool  # whether --split changes how rows are read


TASKS: Dict[str, TaskSpec] = {
    "caption": TaskSpec(
        CAPTION_SELECTED_COLS, CAPTION_PATCH_IMAGE_SIZE,
        lambda args, split: CaptionRowParser(args.patch_image_size, split=split, max_tgt_length=args.max_tgt_length),
        reads_split=True),
    "refcoco": TaskSpec(
        REFCOCO_SELECTED_COLS, REFCOCO_PATCH_IMAGE_SIZE,
        lambda args, split: RefcocoRowParser(args.patch_image_size, num_bins=args.num_bins,
                                             max_image_size=args.max_image_size),
        reads_split=False),
    "snli_ve": TaskSpec(
        SNLI_VE_SELECTED_COLS, SNLI_VE_PATCH_IMAGE_SIZE,
        lambda args, split: SnliVeRowParser(args.patch_image_size, add_caption=args.add_caption),
        reads_split=False),
    "image_classify": TaskSpec(
        IMAGE_CLASSIFY_SELECTED_COLS, IMAGE_CLASSIFY_PATCH_IMAGE_SIZE,
        lambda args, split: ImageClassifyRowParser(args.patch_image_size, classes=args.classes,
                                                   classes_source=args.ans2label_file),
        reads_split=False),
    "vqa_gen": TaskSpec(
        VQA_SELECTED_COLS, VQA_PATCH_IMAGE_SIZE,
        lambda args, split: VqaRowParser(args.patch_image_size, max_src_length=args.max_src_length,
                                         max_object_length=args.max_object_length, add_object=args.add_object,
                                         answers=args.answers),
        reads_split=False),
}


@dataclass
class Tally:
    """Counts over some rows: usable (``ok``, of which ``clipped`` had their box clipped) and ``bad``."""

    ok: int = 0
    bad: int = 0
    clipped: int = 0
    seconds: float = 0.0

    @property
    def rows(self) -> int:
        return self.ok + self.bad

    def add(self, other: "Tally") -> None:
        self.ok += other.ok
        self.bad += other.bad
        self.clipped += other.clipped

    def describe(self) -> str:
        rate = self.rows / self.seconds if self.seconds > 0 else float("inf")
        return (f"{self.rows} rows: {self.ok} ok, {self.bad} bad, {self.clipped} clipped; "
                f"{self.seconds:.2f} s, {rate:.0f} rows/s")


@dataclass
class BlockResult:
    tally: Tally
    bad_rows: List[Tuple[int, str]] = field(default_factory=list)  # (1-based row, reason), in file order


def check_block(tsv: TsvFile, parser: RowParser, start: int, stop: int) -> BlockResult:
    """Rows ``start..stop-1`` of ``tsv`` through the reader's and the parser's checks."""
    result = BlockResult(Tally())
    for index in range(start, stop):
        try:
            row = parser.parse(dict(zip(parser.FIELDS, tsv[index])))
        except InvalidRowError as err:  # the reader's checks: columns, UTF-8, line ending
            result.bad_rows.append((err.row, err.reason))
        except ValueError as err:  # the parser's checks
            result.bad_rows.append((tsv.row_number(index), str(err)))
        else:
            result.tally.ok += 1
            result.tally.clipped += bool(getattr(row, "clipped", False))
    result.tally.bad = len(result.bad_rows)
    return result


def block_bounds(num_rows: int, workers: int) -> List[Tuple[int, int]]:
    """Contiguous ``(start, stop)`` blocks, about four per worker for small files, at most MAX_BLOCK_ROWS rows."""
    size = max(1, min(MAX_BLOCK_ROWS, -(-num_rows // (4 * workers))))
    return [(start, min(start + size, num_rows)) for start in range(0, num_rows, size)]


_worker_files: List[Tuple[TsvFile, RowParser]] = []  # set once per pool process


def _start_worker(files: List[Tuple[TsvFile, RowParser]]) -> None:
    _worker_files[:] = files


def _check_block_in_worker(block: Tuple[int, int, int]) -> BlockResult:
    file_number, start, stop = block
    return check_block(*_worker_files[file_number], start, stop)


def worker_pool(files: List[Tuple[TsvFile, RowParser]], workers: int) -> ContextManager[Optional[Pool]]:
    """A pool of ``workers`` processes for all files (None for one worker). Each process receives the
    files' row indexes once, at its start, not with every block."""
    if workers == 1:
        return nullcontext()
    return multiprocessing.Pool(workers, _start_worker, (files,))


def check_file(files: List[Tuple[TsvFile, RowParser]], file_number: int, pool: Optional[Pool],
               workers: int) -> Iterator[BlockResult]:
    """One file's block results in file order (in ``pool`` if given); a file's blocks are all checked
    before the next file's start, so that each file's time is its own."""
    tsv, parser = files[file_number]
    blocks = block_bounds(len(tsv), workers)
    if pool is None:
        for start, stop in blocks:
            yield check_block(tsv, parser, start, stop)
        return
    yield from pool.imap(_check_block_in_worker, [(file_number, start, stop) for start, stop in blocks])


def default_split(path: str) -> str:
    """OFA's file naming: train files hold one caption per row, the others ``&&``-joined references."""
    return "train" if "train" in os.path.basename(path) else "valid"


class _ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str):
        self.exit(2, f"error: {message} (see --help)\n")


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = _ArgumentParser(prog="python -m ofa_el.tools.check_data", description=__doc__,
                             formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", required=True, choices=sorted(TASKS), help="how rows are read")
    parser.add_argument("files", nargs="+", metavar="FILE.tsv", help="TSV files to check")
    parser.add_argument("--selected-cols", help="columns to read, as in training (default: " + ", ".join(
                        f"{name} {spec.selected_cols}" for name, spec in sorted(TASKS.items())) + ")")
    parser.add_argument("--patch-image-size", type=int, help="side of the model input (default: " + ", ".join(
                        f"{name} {spec.patch_image_size}" for name, spec in sorted(TASKS.items()))
                        + "); refcoco bins depend on it")
    parser.add_argument("--num-bins", type=int, default=1000, help="refcoco: number of <bin_i> tokens")
    parser.add_argument("--max-image-size", type=float, help="refcoco: box normaliser (default: --patch-image-size)")
    parser.add_argument("--max-tgt-length", type=int, default=30, help="caption: max words of a train caption")
    parser.add_argument("--add-caption", action="store_true",
                        help="snli_ve: the prompt holds the caption (premise) too, so it must not be empty")
    parser.add_argument("--split", choices=("train", "valid"),
                        help="caption: train reads one caption per row, valid &&-joined references (default: "
                             "train if the file name contains 'train', else valid)")
    vqa = parser.add_argument_group("vqa_gen (the task's options)")
    vqa.add_argument("--ans2label-file", help="the candidate answers (OFA's .pkl, .json or one per line); every "
                     "row's target answer must be one (default: --ans2label-dict); image_classify: the class "
                     "list (required)")
    vqa.add_argument("--ans2label-dict", default=VqaGenConfig.ans2label_dict,
                     help="the candidate answers as inline JSON (default: %(default)s)")
    vqa.add_argument("--unconstrained-training", action="store_true", help="no candidate set: any target answer")
    vqa.add_argument("--max-src-length", type=int, default=VqaGenConfig.max_src_length,
                     help="words of the question kept (default: %(default)s)")
    vqa.add_argument("--max-object-length", type=int, default=VqaGenConfig.max_object_length)
    vqa.add_argument("--add-object", action="store_true", help="the object tags are read too")
    parser.add_argument("--workers", type=int, default=1, help="processes checking blocks of rows (default 1)")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error(f"--workers must be at least 1, got {args.workers}")
    if args.patch_image_size is None:
        args.patch_image_size = TASKS[args.task].patch_image_size
    if args.selected_cols is None:
        args.selected_cols = TASKS[args.task].selected_cols
    args.answers = None
    if args.task == "vqa_gen" and not args.unconstrained_training:
        try:
            args.answers = frozenset(load_answer_list(args.ans2label_file) if args.ans2label_file
                                     else parse_answer_dict(args.ans2label_dict))
        except (OSError, ValueError) as err:
            parser.error(str(err))
    args.classes = None
    if args.task == "image_classify":
        if not args.ans2label_file:
            parser.error("--task image_classify needs --ans2label-file (the class list: OFA's class2label_new.pkl, "
                         "or a text file with one class name per line)")
        try:
            args.classes = load_answer_list(args.ans2label_file)
        except (OSError, ValueError) as err:
            parser.error(str(err))
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Check the files; the exit status (0 all rows usable, 1 some bad; a usage error: 2, from :func:`run_cli`)."""
    quiet_logs()
    args = parse_args(argv)
    spec = TASKS[args.task]
    started = time.perf_counter()
    files: List[Tuple[TsvFile, RowParser]] = []
    tallies: List[Tally] = []
    for path in args.files:  # every usage error before the first row is checked
        parser = spec.make_parser(args, args.split or default_split(path))
        selected_field_columns(args.selected_cols, parser.FIELDS, f"--task {args.task}")
        indexing = time.perf_counter()
        files.append((TsvFile(path, args.selected_cols, slice_id=0, slice_count=1), parser))  # one pass
        tallies.append(Tally(seconds=time.perf_counter() - indexing))

    with worker_pool(files, args.workers) as pool:  # its start-up counts in the total only
        for file_number, ((tsv, _), tally) in enumerate(zip(files, tallies)):
            checking = time.perf_counter()
            for result in check_file(files, file_number, pool, args.workers):
                for row, reason in result.bad_rows:
                    print(f"{tsv.path}:{row}: {reason}")
                tally.add(result.tally)
            tally.seconds += time.perf_counter() - checking
    total = Tally(seconds=time.perf_counter() - started)
    for tally in tallies:
        total.add(tally)

    print("summary:")
    for (tsv, parser), tally in zip(files, tallies):
        split = f" (as split {parser.split})" if spec.reads_split else ""
        print(f"{tsv.path}{split}: {tally.describe()}")
    print(f"total, {len(files)} file(s): {total.describe()}")
    return 1 if total.bad else 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
