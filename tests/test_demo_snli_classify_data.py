"""The demo's entailment statements and classification images: labels that the pictures decide."""
import base64
import json
import io
import pickle
import random
import re

import numpy as np
import pytest
from PIL import Image

from ofa_el.data.image_classify_dataset import ImageClassifyRowParser
from ofa_el.data.snli_ve_dataset import SnliVeRowParser
from ofa_el.synthetic.image_classify import DEMO_CLASSES, write_image_classify_sets
from ofa_el.synthetic.scenes import COLOURS, SHAPES, majority_baseline, place_shapes, position_phrase
from ofa_el.synthetic.snli_ve import NUMBER_WORDS, UNDECIDABLE, entailment_row, write_snli_ve_sets


def judge(hypothesis, shapes, size):
    """An independent reading of a statement: what the drawn shapes make of it."""
    names = {s.name: s for s in shapes}
    if any(hypothesis.endswith(" " + property_) for property_ in UNDECIDABLE):
        return "neutral"
    count = re.fullmatch(r"there (?:is|are) (\w+) shapes?", hypothesis)
    if count:
        return "entailment" if NUMBER_WORDS.index(count.group(1)) == len(shapes) else "contradiction"
    where = re.fullmatch(r"the (\w+ \w+) is at the (.+)", hypothesis)
    if where:
        actual = position_phrase(names[where.group(1)], size, size)
        return "entailment" if where.group(2) == actual else "contradiction"
    exists = re.fullmatch(r"(?:there is a|the image shows a) (\w+ \w+)", hypothesis)
    return "entailment" if exists.group(1) in names else "contradiction"


def test_every_statement_gets_the_label_the_picture_gives_it():
    rng = random.Random(5)
    checked = 0
    while checked < 600:
        kinds = list({(rng.choice(SHAPES), rng.choice(list(COLOURS))) for _ in range(rng.randint(1, 3))})
        shapes = place_shapes(rng, 64, 64, sorted(kinds), 12, 25)
        if shapes is None:
            continue
        for label in ("entailment", "contradiction", "neutral"):
            hypothesis = entailment_row(rng, shapes, label, 64, 64)
            assert judge(hypothesis, shapes, 64) == label, (hypothesis, shapes)
            checked += 1


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo_sets")
    write_snli_ve_sets(str(out), 0, {"train": 60, "dev": 30, "test": 30})
    write_image_classify_sets(str(out), 0, {"train": 48, "val": 24, "test": 24})
    return out


def rows(path):
    return [line.split("\t") for line in path.read_text(encoding="utf-8").splitlines()]


def test_snli_ve_files_parse_and_hold_all_labels(files):
    parser = SnliVeRowParser(64, add_caption=True)
    for split, count in (("train", 60), ("dev", 30), ("test", 30)):
        table = rows(files / f"snli_ve_{split}.tsv")
        assert len(table) == count and all(len(row) == 6 for row in table)
        for row in table:
            parser.parse(dict(zip(parser.FIELDS, [row[i] for i in (0, 2, 3, 4, 5)])))
    labels = [row[5] for row in rows(files / "snli_ve_train.tsv")]
    assert set(labels) == {"entailment", "contradiction", "neutral"}
    value, share = majority_baseline(str(files / "snli_ve_train.tsv"), 5)
    assert share == max(labels.count(v) for v in set(labels)) / len(labels) and labels.count(value) == share * 60


def drawn_shape(pixels):
    """An independent reading of a classification image: the shape that the object's pixels form."""
    mask = np.abs(pixels - pixels[0, 0]).max(axis=-1) > 40  # one plain background, the corner shows it
    ys, xs = np.nonzero(mask)
    box = mask[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    fill = box.mean()
    if fill > 0.9:
        return "square"
    if fill > 0.65:
        return "circle"
    return "triangle" if box[-2].mean() > 0.7 else "diamond"  # a triangle's base spans its box


def test_classify_images_show_their_shape_in_any_colour_and_the_pickle_lists_the_classes(files):
    with open(files / "class2label_new.pkl", "rb") as handle:
        class2label = pickle.load(handle)
    assert list(class2label) == list(DEMO_CLASSES) == list(SHAPES)
    parser = ImageClassifyRowParser(64, classes=list(class2label))
    colours_of = {name: set() for name in DEMO_CLASSES}
    for row in rows(files / "image_classify_train.tsv"):
        assert DEMO_CLASSES[int(row[1]) - 1] == row[2]
        parser.parse({"image": row[0], "class_name": row[2]})
        pixels = np.asarray(Image.open(io.BytesIO(base64.b64decode(row[0]))).convert("RGB")).astype(int)
        assert drawn_shape(pixels) == row[2]
        colours_of[row[2]].update(name for name, rgb in COLOURS.items()
                                  if (np.abs(pixels - np.array(rgb)).max(axis=-1) < 40).sum() > 64 * 64 / 20)
    assert all(len(colours) >= 3 for colours in colours_of.values())  # a class is its shape, whatever the colour


@pytest.mark.parametrize("part, test_file, column", [("snli_ve", "snli_ve_test.tsv", 5),
                                                      ("image_classify", "image_classify_test.tsv", 2)])
def test_demo_part_reports_accuracy_beside_the_majority_baseline(part, test_file, column, tmp_path, monkeypatch,
                                                                 capsys):
    from ofa_el.tools import demo

    monkeypatch.setattr(demo, "DEMO", tmp_path)
    (tmp_path / "data").mkdir()
    calls = []

    def fake_run(script, log, env, *extra):  # stands in for the training and evaluation scripts
        calls.append(script)
        if "RESULTS_DIR" in env:
            results = tmp_path / "results" / part
            assert env["RESULTS_DIR"] == str(results)
            results.mkdir(parents=True)
            (results / "metrics.json").write_text(json.dumps({test_file[:-4]: {"accuracy": 0.75, "n": 240}}))

    monkeypatch.setattr(demo, "run", fake_run)
    (write_snli_ve_sets if part == "snli_ve" else write_image_classify_sets)(
        str(tmp_path / "data"), 0, {"train": 3, "dev": 3, "val": 3, "test": 30})
    result = demo.candidate_part(part)
    label, share = majority_baseline(str(tmp_path / "data" / test_file), column)
    assert result == {"test": {"accuracy": 0.75, "majority_baseline": share, "majority_class": label}}
    assert calls == list(demo.CANDIDATE_PARTS[part][:2])
    assert f"test accuracy 0.750 (majority class {label!r}: {share:.3f})" in capsys.readouterr().out
