"""Write OFA's TSV files from public annotations or your own JSONL: one command for every task.

    python -m ofa_el.tools.make_tsv coco-karpathy --annotations dataset_coco.json --images coco/ --out caption_data
    python -m ofa_el.tools.make_tsv refcoco --refs refcoco/refs(unc).p --instances refcoco/instances.json \\
        --images coco/train2014 --out refcoco_data

Images are copied as they are (and decoded once, to catch bad files) unless ``--max-image-size`` or
``--jpeg-quality`` asks to re-encode them as JPEG (boxes are scaled alike). ``--workers N`` encodes in N
processes; rows keep the annotations' order. Each file is written under a temporary name and renamed when
complete. An invalid entry (missing or undecodable image, empty caption or expression, a box more than
1 pixel outside its image, a question without answers) stops the run with ``input: entry: reason``;
``--skip-invalid`` skips it, counts it and lists it in ``OUT/make_tsv_skipped.txt``.
"""
from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

from ..converters import coco_captions, imagenet, jsonl, refcoco, snli_ve, vqa
from ..converters.images import ImageEncoder
from ..converters.writer import REPORT_NAME, Conversion, FileSummary, write_atomically, write_tsv_files
from .errors import MissingFileError, quiet_logs, run_cli


@dataclass(frozen=True)
class Format:
    """One input format: its help line, its own options and its conversion."""

    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    convert: Callable[[argparse.Namespace], Conversion]


def _karpathy_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--annotations", required=True, help="Karpathy's dataset_coco.json")
    parser.add_argument("--images", required=True,
                        help="folder holding the COCO image folders the JSON's filepath names (train2014/, val2014/)")


def _coco_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--annotations", required=True, help="a COCO caption file (captions_val2014.json)")
    parser.add_argument("--images", required=True, help="the folder of its images (val2014/)")
    parser.add_argument("--per-caption", action="store_true",
                        help="one caption per row (stage-1 training layout) instead of one &&-joined row per image")


def _refcoco_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--refs", required=True, help="refer's refs(unc).p, refs(umd).p or refs(google).p")
    parser.add_argument("--instances", required=True, help="refer's instances.json for the same set")
    parser.add_argument("--images", required=True, help="COCO's train2014/ folder")
    parser.add_argument("--set-name", help="file prefix (default: from the refs' folder: refcoco, refcoco+ -> "
                        "refcocoplus, refcocog)")


def _vqa_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--questions", required=True, nargs="+", help="VQAv2 question files (v2_OpenEnded_mscoco_"
                        "train2014_questions.json ...), one per split")
    parser.add_argument("--annotations", required=True, nargs="+",
                        help="the matching annotation files (v2_mscoco_train2014_annotations.json ...), same order")
    parser.add_argument("--images", required=True, help="folder holding train2014/, val2014/ (or the images)")
    parser.add_argument("--num-answers", type=int, default=vqa.NUM_ANSWERS,
                        help=f"candidate answers in trainval_ans2label.pkl (default: OFA's {vqa.NUM_ANSWERS})")


def _snli_ve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--annotations", required=True, nargs="+", help="snli_ve_{train,dev,test}.jsonl")
    parser.add_argument("--images", required=True, help="Flickr30k's flickr30k_images/ folder")


def _imagenet_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", required=True,
                        help="folder holding train/<wnid>/*.JPEG and val/ (val/<wnid>/*.JPEG, or flat with "
                             "--annotations)")
    parser.add_argument("--synsets", required=True, help="LOC_synset_mapping.txt (wnid and names, one class a line)")
    parser.add_argument("--annotations", help="LOC_val_solution.csv, for a flat val/ folder")
    parser.add_argument("--splits", default="train,val", help="sub-folders to convert (default: train,val)")


def _jsonl_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", required=True, choices=sorted(jsonl.TASKS), help="the TSV layout to write")
    parser.add_argument("--annotations", required=True, nargs="+",
                        help="JSON Lines files, one object per line (see README); FILE.jsonl becomes FILE.tsv")
    parser.add_argument("--images", help="folder the image paths are relative to (default: each file's folder)")


FORMATS: Dict[str, Format] = {
    "coco-karpathy": Format("Karpathy's dataset_coco.json: caption_stage1_train, _stage2_train, _val, _test",
                            _karpathy_arguments, coco_captions.karpathy),
    "coco-captions": Format("a COCO captions_*.json: one &&-joined caption row per image", _coco_arguments,
                            coco_captions.coco),
    "refcoco": Format("refer's refs pickle + instances.json: <set>_<split>.tsv, one row per expression",
                      _refcoco_arguments, refcoco.convert),
    "vqa": Format("VQAv2 questions + annotations: vqa_<split>.tsv with soft scores, trainval_ans2label.pkl",
                  _vqa_arguments, vqa.convert),
    "snli-ve": Format("SNLI-VE's snli_ve_<split>.jsonl + Flickr30k images: snli_ve_<split>.tsv", _snli_ve_arguments,
                      snli_ve.convert),
    "imagenet": Format("ImageNet folders + LOC_synset_mapping.txt: imagenet_1k_<split>.tsv, class2label_new.pkl",
                       _imagenet_arguments, imagenet.convert),
    "jsonl": Format("your own JSON Lines: the TSV of any task", _jsonl_arguments, jsonl.convert),
}


class _ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str):
        self.exit(2, f"error: {message} (see --help)\n")


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = _ArgumentParser(prog="python -m ofa_el.tools.make_tsv", description=__doc__,
                             formatter_class=argparse.RawDescriptionHelpFormatter)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--out", required=True, help="output folder (created if missing)")
    common.add_argument("--workers", type=int, default=1, help="image-encoding processes (default 1)")
    common.add_argument("--max-image-size", type=int, help="re-encode as JPEG with the longer side at most this many "
                        "pixels (boxes scaled alike); default: copy the original bytes")
    common.add_argument("--jpeg-quality", type=int, help="re-encode as JPEG at this quality (1-100; default 95 when "
                        "--max-image-size is given)")
    common.add_argument("--skip-invalid", action="store_true",
                        help=f"skip invalid entries, count them and list them in OUT/{REPORT_NAME} instead of "
                             "stopping at the first")
    common.add_argument("--no-progress", action="store_true", help="no progress bar")
    formats = parser.add_subparsers(dest="format", required=True, metavar="FORMAT",
                                    parser_class=_ArgumentParser)
    for name, spec in FORMATS.items():
        sub = formats.add_parser(name, parents=[common], help=spec.help, description=spec.help)
        spec.add_arguments(sub)
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error(f"--workers must be at least 1, got {args.workers}")
    return args


def main(argv: Optional[Sequence[str]] = None) -> List[FileSummary]:
    """Convert; the per-file summaries (the report of skipped entries is written beside the TSVs)."""
    quiet_logs()
    args = parse_args(argv)
    encoder = ImageEncoder(args.max_image_size, args.jpeg_quality)
    images = getattr(args, "images", None)
    if images is not None and not os.path.isdir(images):
        raise MissingFileError(f"--images: folder not found: {images}")
    started = time.perf_counter()
    conversion = FORMATS[args.format].convert(args)
    summaries, skipped = write_tsv_files(conversion.outputs, args.out, encoder, args.workers, args.skip_invalid,
                                         progress=not args.no_progress)
    for name, data in conversion.extra_files.items():
        write_atomically(os.path.join(args.out, name), data)
    total = FileSummary("total", seconds=time.perf_counter() - started)
    for summary in summaries:
        total.add(summary)
        print(f"{os.path.join(args.out, summary.name)}: {summary.describe()}")
    for name in conversion.extra_files:
        print(f"{os.path.join(args.out, name)}: written")
    print(f"total, {len(summaries)} file(s): {total.describe()}")
    if args.skip_invalid:
        report = os.path.join(args.out, REPORT_NAME)
        write_atomically(report, "".join(f"{error}\n" for error in skipped))
        print(f"skipped {len(skipped)} invalid entr{'y' if len(skipped) == 1 else 'ies'}: listed in {report}")
    return summaries


if __name__ == "__main__":
    run_cli(main)
