"""The whole demo data set in one folder: captions, RefCOCO sets and the BPE, optionally VQA, SNLI-VE and
image classification."""
from __future__ import annotations

import os
import random
from typing import Optional, Tuple

from .bpe import write_bpe
from .captions import write_caption_sets, write_caption_stage2_train
from .image_classify import write_image_classify_sets
from .refcoco import REFCOCO_OBJECT_SIDES, write_refcoco_sets
from .snli_ve import write_snli_ve_sets
from .vqa import write_vqa_sets


def make_demo_data(out: str, seed: int = 0, image_size: int = 64, train_images: int = 1500, val_images: int = 100,
                   test_images: int = 100, refcoco_train_images: int = 1500, refcoco_eval_images: int = 100,
                   bpe_vocab_size: int = 600, refcoco_object_sides: Tuple[float, float] = REFCOCO_OBJECT_SIDES,
                   vqa_train_images: int = 0, vqa_eval_images: int = 100,
                   snli_ve_rows: Optional[Tuple[int, int, int]] = None,
                   classify_rows: Optional[Tuple[int, int, int]] = None) -> None:
    """The demo files under ``out``; the snli_ve and image_classify sets only when their (train, val, test) row
    counts are given (the command line writes them by default; they draw from their own random streams, so the
    other files are the same with or without them)."""
    os.makedirs(out, exist_ok=True)
    rng = random.Random(seed)
    texts = write_caption_sets(out, rng, {"train": train_images, "val": val_images, "test": test_images}, image_size)
    write_caption_stage2_train(out)
    if refcoco_train_images > 0:
        texts += write_refcoco_sets(out, rng, refcoco_train_images, refcoco_eval_images, refcoco_object_sides)
    write_bpe(os.path.join(out, "bpe"), texts, bpe_vocab_size)
    if vqa_train_images > 0:  # after the BPE: byte-level, it encodes the questions without them in its corpus
        write_vqa_sets(out, seed, vqa_train_images, vqa_eval_images, image_size)
    if snli_ve_rows:  # not in the BPE corpus: a byte-level BPE encodes any text
        write_snli_ve_sets(out, seed, dict(zip(("train", "dev", "test"), snli_ve_rows)))
    if classify_rows:
        write_image_classify_sets(out, seed, dict(zip(("train", "val", "test"), classify_rows)))
