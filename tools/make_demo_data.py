"""Write the synthetic demo data set (captions, RefCOCO, SNLI-VE, image classification, optionally VQA) in OFA's
TSV formats, with its own GPT-2 BPE; everything is a pure function of ``--seed``.

    python -m ofa_el.tools.make_demo_data --out demo/data --seed 0

The files and what they hold: :mod:`ofa_el.synthetic`.
"""
from __future__ import annotations

import argparse
from typing import Optional, Sequence

from ..synthetic.demo_set import make_demo_data
from ..synthetic.refcoco import REFCOCO_OBJECT_SIDES
from .errors import run_cli


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=64, help="side of the square caption images (px)")
    parser.add_argument("--train-images", type=int, default=1500, help="caption train images (5 lines each)")
    parser.add_argument("--val-images", type=int, default=100)
    parser.add_argument("--test-images", type=int, default=100)
    parser.add_argument("--refcoco-train-images", type=int, default=1500,
                        help="rows of each refcoco*_train.tsv; 0 writes no refcoco sets")
    parser.add_argument("--refcoco-eval-images", type=int, default=100, help="rows of each refcoco* val/test file")
    parser.add_argument("--refcoco-object-sides", default=None,
                        help="MIN,MAX side of the refcoco shapes as fractions of the image's shorter side "
                             "(default: 1/4,1/2)")
    parser.add_argument("--bpe-vocab-size", type=int, default=600, help="BPE vocabulary size, >= 256 (the bytes)")
    parser.add_argument("--vqa-train-images", type=int, default=0,
                        help="images of vqa_train.tsv (3 questions each; see synthetic/vqa.py); 0 writes no VQA sets")
    parser.add_argument("--vqa-eval-images", type=int, default=100, help="images of vqa_val.tsv and vqa_test.tsv")
    parser.add_argument("--snli-ve-rows", default="3000,300,300", help="TRAIN,DEV,TEST rows of the snli_ve files")
    parser.add_argument("--classify-rows", default="2400,240,240",
                        help="TRAIN,VAL,TEST rows of the image_classify files")
    args = parser.parse_args(argv)
    row_counts = {}
    for flag in ("snli_ve_rows", "classify_rows"):
        try:
            row_counts[flag] = tuple(int(n) for n in getattr(args, flag).split(","))
        except ValueError:
            row_counts[flag] = ()
        if len(row_counts[flag]) != 3 or min(row_counts[flag]) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be three positive row counts TRAIN,VAL,TEST, got "
                         f"{getattr(args, flag)!r}")
    try:
        sides = REFCOCO_OBJECT_SIDES if args.refcoco_object_sides is None else tuple(
            float(f) for f in args.refcoco_object_sides.split(","))
    except ValueError:
        sides = ()
    if len(sides) != 2 or not 0 < sides[0] <= sides[1] <= 0.5:
        parser.error(f"--refcoco-object-sides must be two fractions 0 < MIN <= MAX <= 0.5, got "
                     f"{args.refcoco_object_sides!r}")
    for name in ("image_size", "train_images", "val_images", "test_images"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    if args.image_size < 24:
        parser.error("--image-size must be at least 24 px for two shapes to fit")
    if args.refcoco_train_images < 0 or args.refcoco_eval_images < 1:
        parser.error("--refcoco-train-images must be >= 0 and --refcoco-eval-images >= 1")
    if args.bpe_vocab_size < 256:
        parser.error("--bpe-vocab-size must be at least 256")
    if args.vqa_train_images < 0 or args.vqa_eval_images < 1:
        parser.error("--vqa-train-images must be >= 0 and --vqa-eval-images >= 1")
    make_demo_data(args.out, args.seed, args.image_size, args.train_images, args.val_images, args.test_images,
                   args.refcoco_train_images, args.refcoco_eval_images, args.bpe_vocab_size, sides,
                   args.vqa_train_images, args.vqa_eval_images, row_counts["snli_ve_rows"],
                   row_counts["classify_rows"])


if __name__ == "__main__":
    run_cli(main)
