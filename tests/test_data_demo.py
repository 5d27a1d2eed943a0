"""The synthetic demo data: deterministic, OFA's file layout, texts that describe the pixels."""
import base64
import filecmp
import io
import os

import numpy as np
import pytest
import torch
from PIL import Image

from ofa_el.synthetic.refcoco import REFCOCO_SPLITS
from ofa_el.synthetic.scenes import COLOURS, SHAPES
from ofa_el.tools.make_demo_data import main

torch.set_num_threads(1)
SIZES = ["--image-size", "32", "--train-images", "8", "--val-images", "4", "--test-images", "4",
         "--refcoco-train-images", "6", "--refcoco-eval-images", "6", "--bpe-vocab-size", "400",
         "--snli-ve-rows", "9,3,3", "--classify-rows", "6,3,3"]
LOCATION_WORDS = {"left", "right", "top", "bottom", "center"}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    main(["--out", str(out), "--seed", "0"] + SIZES)
    return out


def read_rows(path):
    return [line.split("\t") for line in path.read_text(encoding="utf-8").splitlines()]


def decode(field):
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(field))).convert("RGB")).astype(int)


def colour_pixels(pixels, colour):
    return (np.abs(pixels - np.array(COLOURS[colour])).max(axis=-1) < 40).sum()


def all_files(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, files in os.walk(root) for f in files)


def test_same_seed_same_files_other_seed_other_files(demo, tmp_path):
    main(["--out", str(tmp_path / "again"), "--seed", "0"] + SIZES)
    main(["--out", str(tmp_path / "other"), "--seed", "1"] + SIZES)
    names = all_files(demo)
    assert names == all_files(tmp_path / "again") == all_files(tmp_path / "other")
    assert all(filecmp.cmp(demo / n, tmp_path / "again" / n, shallow=False) for n in names)
    assert not filecmp.cmp(demo / "caption_val.tsv", tmp_path / "other" / "caption_val.tsv", shallow=False)


def test_file_names_and_layout(demo):
    expected = {"caption_stage1_train.tsv", "caption_stage2_train.tsv", "caption_val.tsv", "caption_test.tsv",
                "bpe/encoder.json", "bpe/vocab.bpe", "bpe/dict.txt"}
    expected |= {f"{variant}_{split}.tsv" for variant, splits in REFCOCO_SPLITS.items() for split in splits}
    expected |= {f"snli_ve_{split}.tsv" for split in ("train", "dev", "test")}
    expected |= {f"image_classify_{split}.tsv" for split in ("train", "val", "test")} | {"class2label_new.pkl"}
    assert set(all_files(demo)) == expected
    train = read_rows(demo / "caption_stage1_train.tsv")
    assert len(train) == 8 * 5 and all(len(row) == 5 for row in train)
    assert len({row[0] for row in train}) == len(train)  # uniq-ids are unique
    for name in ("caption_val.tsv", "caption_test.tsv"):
        rows = read_rows(demo / name)
        assert len(rows) == 4 and all(len(row[2].split("&&")) == 5 for row in rows)


def test_captions_name_the_colours_and_shapes_drawn(demo):
    for row in read_rows(demo / "caption_val.tsv"):
        pixels = decode(row[4])
        references = row[2].split("&&")
        assert len(set(references)) == 5
        for colour in COLOURS:
            mentioned = all(f" {colour} " in f" {ref} " for ref in references)
            assert mentioned == (colour_pixels(pixels, colour) > 8), (colour, references)
        assert sorted(row[3].split("&&")) == sorted(w for w in references[1].split() if w in SHAPES)


def test_refcoco_boxes_enclose_a_target_of_the_named_colour(demo):
    for variant, splits in REFCOCO_SPLITS.items():
        for split in splits:
            for uniq_id, _, text, region, image in read_rows(demo / f"{variant}_{split}.tsv"):
                x0, y0, x1, y1 = (int(float(c)) for c in region.split(","))
                pixels = decode(image)
                words = text.split()
                target_colour = next(w for w in words if w in COLOURS)  # expressions name the target first
                assert colour_pixels(pixels[y0:y1, x0:x1], target_colour) >= 0.3 * (x1 - x0) * (y1 - y0)
                target_kind = next(w for w in words if w in SHAPES)
                if split == "testA":
                    assert target_kind == "circle"
                if split == "testB":
                    assert target_kind != "circle"
                if variant == "refcocoplus":
                    assert not LOCATION_WORDS & set(words)
                if variant == "refcocog":
                    assert len(words) >= 8
