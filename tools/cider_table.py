"""Write OFA's CIDEr document-frequency pickle (``coco-valid-words.p`` style) for caption TSV files.

    python -m ofa_el.tools.cider_table caption_val.tsv -o cider_cached_tokens/my-valid-words.p
    python -m ofa_el.tools.cider_table caption_stage2_train.tsv -o my-train-words.p --append-eos

Rows are grouped into images by the image-id column; the caption column's ``&&``-joined
references (one caption per row in stage-1 train files, all of an image's references in
valid/test/stage-2 files) are cleaned as validation cleans references (punctuation removed),
and every image's set of references is one document. The pickle has OFA's keys and types
(see ``ofa_el.data.scoring``): ``--eval-cider-cached-tokens`` (this plugin or OFA) and OFA's
``--scst-cider-cached-tokens`` read it. Only the id and caption columns are decoded into
memory; images are streamed past, so multi-GB files work.
"""
from __future__ import annotations

import argparse
import os
import pickle
import sys
from collections import defaultdict
from typing import Dict, List, Optional, Sequence, Tuple

from ..data import caption_references
from ..data.scoring import SCST_END_TOKEN, document_frequency_of
from ..data.tsv import parse_selected_cols
from .errors import MissingFileError, UserError, quiet_logs, run_cli

#: OFA's caption TSV columns: uniq-id, image-id, caption, object labels, image (base64).
DEFAULT_COLUMNS = "1,2"


def read_references(paths: Sequence[str], columns: Tuple[int, int], append_eos: bool = False
                    ) -> Dict[str, List[str]]:
    """Cleaned references of every image of ``paths``, keyed by image id in first-seen order.

    An image id seen in several rows or files gathers all their references.
    """
    id_col, caption_col = columns
    references: Dict[str, List[str]] = {}
    for image_id, cleaned in caption_references.read_references(paths, caption_col, id_column=id_col):
        if append_eos:
            cleaned = [f"{ref} {SCST_END_TOKEN}" for ref in cleaned]
        references.setdefault(image_id, []).extend(cleaned)
    return references


def ofa_cider_table(document_frequency: Dict[tuple, float], images: float) -> dict:
    """The object OFA pickles: a ``defaultdict(float)`` (OFA looks up unseen n-grams) and the image count."""
    return {"document_frequency": defaultdict(float, document_frequency), "ref_len": int(images)}


def write_pickle(table: dict, output: str) -> None:
    """Protocol 2, as OFA's file; written beside ``output`` and renamed, so a failure leaves no partial file."""
    directory, name = os.path.split(os.path.abspath(output))
    partial = os.path.join(directory, f".{name}.{os.getpid()}.partial")
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # mode as umask allows
    try:
        with os.fdopen(descriptor, "wb") as handle:
            pickle.dump(table, handle, protocol=2)
        os.replace(partial, output)
    except OSError as err:  # a full disk or a lost mount: the user's to fix, the old file kept
        os.unlink(partial)
        raise UserError(f"{err} (writing {output}; it is left as it was)") from None
    except BaseException:
        os.unlink(partial)
        raise


def check_output(output: str) -> None:
    """Fail before reading gigabytes of input when the pickle could not be written anyway."""
    if os.path.isdir(output):
        raise UserError(f"-o {output}: is a directory")
    directory = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(directory):
        raise UserError(f"-o {output}: directory {directory} does not exist")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise UserError(f"-o {output}: directory {directory} is not writable")


def parse_columns(value: str) -> Tuple[int, int]:
    """``--selected-cols IMAGE_ID,CAPTION`` (0-based)."""
    try:
        columns = parse_selected_cols(value)
    except ValueError as err:
        raise UserError(str(err)) from None
    if columns is None or len(columns) != 2:
        raise UserError(f"--selected-cols: expected two columns IMAGE_ID,CAPTION (0-based), got {value!r}")
    return columns[0], columns[1]


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tsv", nargs="+", help="caption TSV file(s); their images are counted together")
    parser.add_argument("-o", "--output", required=True, help="the pickle to write (e.g. coco-valid-words.p)")
    parser.add_argument("--selected-cols", default=DEFAULT_COLUMNS,
                        help=f"0-based image-id and caption columns (default {DEFAULT_COLUMNS}: OFA's caption TSVs)")
    parser.add_argument("--append-eos", action="store_true",
                        help=f"end every reference with {SCST_END_TOKEN!r}, as OFA's SCST criterion "
                        "(--scst-cider-cached-tokens) ends hypotheses and references; validation appends nothing")
    args = parser.parse_args(argv)
    quiet_logs()
    columns = parse_columns(args.selected_cols)
    check_output(args.output)
    for path in args.tsv:
        if not os.path.isfile(path):
            raise MissingFileError(f"file not found: {path}")
    references = read_references(args.tsv, columns, args.append_eos)
    reference_count = sum(len(refs) for refs in references.values())
    table = ofa_cider_table(*document_frequency_of(references.values()))
    del references
    write_pickle(table, args.output)
    print(f"{table['ref_len']} images, {reference_count} references, {len(table['document_frequency'])} n-grams "
          f"(n = 1..4) -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
