"""make_tsv: every format converts a small set in its public layout (built here in temporary folders, as COCO,
Karpathy, refer, VQAv2, SNLI-VE and ImageNet publish theirs) into the TSVs the tasks and check_data read."""
import base64
import io
import json
import os
import pickle
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from conftest import TINY_MODEL
from ofa_el.converters.vqa import soft_scores
from ofa_el.tools import check_data
from ofa_el.tools.make_tsv import main as make_tsv


# ------------------------------------------------------------------------------------------- tiny public-layout sets


def write_image(path: Path, size=(40, 30), seed=0, fmt="JPEG") -> Path:
    """A noisy RGB image (JPEG by default), so that decoding and re-encoding do real work."""
    rng = random.Random(seed)
    image = Image.new("RGB", size)
    image.putdata([(rng.randrange(256), rng.randrange(256), (x * 7) % 256) for x in range(size[0] * size[1])])
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return path


def karpathy_set(root: Path):
    """dataset_coco.json with 2 train, 1 restval, 2 val, 1 test images (3 captions each) and their image folders."""
    images, sentid = [], 0
    layout = [("train", "train2014"), ("train", "train2014"), ("restval", "val2014"), ("val", "val2014"),
              ("val", "val2014"), ("test", "val2014")]
    for cocoid, (split, folder) in enumerate(layout, start=100):
        name = f"COCO_{folder}_{cocoid:012d}.jpg"
        write_image(root / "coco" / folder / name, seed=cocoid)
        sentences = []
        for k in range(3):
            words = ["a", ["red", "blue", "green"][k], "square", "on", "grass", "number", str(cocoid)]
            sentences.append({"tokens": words, "raw": " ".join(words).capitalize() + ".", "sentid": sentid})
            sentid += 1
        images.append({"filepath": folder, "filename": name, "split": split, "cocoid": cocoid, "imgid": cocoid - 100,
                       "sentences": sentences})
    path = root / "dataset_coco.json"
    path.write_text(json.dumps({"images": images, "dataset": "coco"}))
    return path, root / "coco"


def coco_caption_set(root: Path):
    folder = root / "val2014"
    images, annotations = [], []
    for image_id in (7, 9):
        name = f"COCO_val2014_{image_id:012d}.jpg"
        write_image(folder / name, seed=image_id)
        images.append({"id": image_id, "file_name": name, "width": 40, "height": 30})
        for k in range(2):
            annotations.append({"id": 10 * image_id + k, "image_id": image_id, "caption": f"A Dog\tsits  {k}\n"})
    path = root / "captions_val2014.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations}))
    return path, folder


#: refcoco boxes [x, y, w, h] on 64x48 images: inside, touching the border, 0.5 px outside (clipped).
REFCOCO_BOXES = {1: [2.5, 3.25, 20.0, 10.5], 2: [40.0, 20.0, 24.0, 28.0], 3: [10.0, 0.0, 54.5, 30.0],
                 4: [0.0, 1.125, 30.0, 20.0], 5: [5.123456789, 6.987654321, 7.3333333, 8.0]}


def refcoco_set(root: Path, protocol=2):
    """refer's layout: refcoco/refs(unc).p + refcoco/instances.json, COCO's train2014/ with 64x48 images."""
    images, annotations = [], []
    ann_image = {1: 11, 2: 11, 3: 12, 4: 13, 5: 13}
    for image_id in (11, 12, 13):
        name = f"COCO_train2014_{image_id:012d}.jpg"
        write_image(root / "train2014" / name, size=(64, 48), seed=image_id)
        images.append({"id": image_id, "file_name": name, "width": 64, "height": 48})
    for ann_id, bbox in REFCOCO_BOXES.items():
        annotations.append({"id": ann_id, "image_id": ann_image[ann_id], "bbox": bbox, "category_id": 1})
    splits = {1: "train", 2: "train", 3: "val", 4: "testA", 5: "testB"}
    refs = [{"ref_id": 50 + ann_id, "ann_id": ann_id, "image_id": ann_image[ann_id], "split": splits[ann_id],
             "file_name": f"COCO_train2014_{ann_image[ann_id]:012d}_{ann_id}.jpg", "category_id": 1,
             "sentences": [{"sent_id": 100 * ann_id + k, "sent": f"the {['left', 'right'][k]} thing {ann_id}",
                            "raw": f"The {['left', 'right'][k]} thing", "tokens": []} for k in range(2)],
             "sent_ids": [100 * ann_id, 100 * ann_id + 1]} for ann_id in REFCOCO_BOXES]
    folder = root / "refcoco"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "refs(unc).p").write_bytes(pickle.dumps(refs, protocol=protocol))
    (folder / "instances.json").write_text(json.dumps({"images": images, "annotations": annotations,
                                                       "categories": [{"id": 1, "name": "thing"}]}))
    return folder / "refs(unc).p", folder / "instances.json", root / "train2014"


def vqa_set(root: Path, subtype="train2014", answers_per_question=None):
    """VQAv2 question + annotation files for 2 images x 2 questions, 10 annotator answers each."""
    answers_per_question = answers_per_question or {
        1: ["yes"] * 10, 2: ["2"] * 3 + ["two"] * 2 + ["3"] * 1 + ["4"] * 4,
        3: ["red"] * 1 + ["blue"] * 9, 4: ["cat"] * 2 + ["dog"] * 8}
    questions, annotations = [], []
    for question_id, answers in answers_per_question.items():
        image_id = 20 + (question_id - 1) // 2
        questions.append({"image_id": image_id, "question": f"what is  shown {question_id}?",
                          "question_id": question_id})
        annotations.append({"question_id": question_id, "image_id": image_id, "answer_type": "other",
                            "multiple_choice_answer": max(sorted(set(answers)), key=answers.count),
                            "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": k + 1}
                                        for k, a in enumerate(answers)]})
        write_image(root / "images" / subtype / f"COCO_{subtype}_{image_id:012d}.jpg", seed=image_id)
    q = root / f"v2_OpenEnded_mscoco_{subtype}_questions.json"
    a = root / f"v2_mscoco_{subtype}_annotations.json"
    q.write_text(json.dumps({"questions": questions, "data_subtype": subtype, "data_type": "mscoco"}))
    a.write_text(json.dumps({"annotations": annotations, "data_subtype": subtype}))
    return q, a, root / "images"


def snli_ve_set(root: Path, split="train", labels=("entailment", "neutral", "contradiction", "entailment")):
    lines = []
    for k, label in enumerate(labels):
        image_id = str(3000 + k // 2)
        write_image(root / "flickr30k_images" / f"{image_id}.jpg", seed=k // 2)
        lines.append(json.dumps({"Flickr30K_ID": image_id, "pairID": f"{image_id}.jpg#{k}r1{label[0]}",
                                 "captionID": f"{image_id}.jpg#{k}", "sentence1": f"two dogs run {k}",
                                 "sentence2": f"animals are outside {k}", "gold_label": label}))
    path = root / f"snli_ve_{split}.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path, root / "flickr30k_images"


SYNSETS = ["n01440764 tench, Tinca tinca", "n02012849 crane", "n03126707 crane", "n03710637 maillot",
           "n03710721 maillot, tank suit"]


def imagenet_set(root: Path, flat_val=False):
    """train/<wnid>/*.JPEG (2 per class), val/ as class folders or flat + LOC_val_solution.csv."""
    synsets = root / "LOC_synset_mapping.txt"
    synsets.write_text("\n".join(SYNSETS) + "\n")
    wnids = [line.split()[0] for line in SYNSETS]
    for index, wnid in enumerate(wnids):
        for k in range(2):
            write_image(root / "imagenet" / "train" / wnid / f"{wnid}_{k}.JPEG", seed=10 * index + k)
    solution = ["ImageId,PredictionString"]
    for index, wnid in enumerate(wnids):
        name = f"ILSVRC2012_val_{index + 1:08d}"
        if flat_val:
            write_image(root / "imagenet" / "val" / f"{name}.JPEG", seed=100 + index)
            solution.append(f"{name},{wnid} 1 2 30 20")
        else:
            write_image(root / "imagenet" / "val" / wnid / f"{name}.JPEG", seed=100 + index)
    csv = root / "LOC_val_solution.csv"
    csv.write_text("\n".join(solution) + "\n")
    return synsets, root / "imagenet", csv


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def make_bpe(folder: Path, tsv_files, text_columns):
    """A small GPT-2-format BPE trained on the TSVs' text columns (as the demo data's BPE is built)."""
    from ofa_el.synthetic.bpe import write_bpe

    texts = []
    for path in tsv_files:
        for line in Path(path).read_text().splitlines():
            fields = line.split("\t")
            texts += [piece for col in text_columns for piece in fields[col].split("&&")]
    write_bpe(str(folder), texts, vocab_size=300)
    return folder


# ----------------------------------------------------------------------------------------------------------- helpers

def rows(path):
    return [line.split("\t") for line in Path(path).read_text(encoding="utf-8").splitlines()]


def decoded(field):
    return Image.open(io.BytesIO(base64.b64decode(field)))


def convert(*argv):
    return make_tsv([*map(str, argv), "--no-progress"])


def check(task, *files, extra=()):
    """check_data's exit status over the files (0: every row usable)."""
    return check_data.main(["--task", task, *map(str, files), *map(str, extra)])


def box(field):
    return [float(v) for v in field.split(",")]


# ---------------------------------------------------------------------------------------------------------- captions

def test_karpathy_writes_the_four_caption_files_with_original_image_bytes(tmp_path):
    annotations, images = karpathy_set(tmp_path)
    out = tmp_path / "out"
    summaries = convert("coco-karpathy", "--annotations", annotations, "--images", images, "--out", out)
    assert [s.name for s in summaries] == ["caption_stage1_train.tsv", "caption_stage2_train.tsv", "caption_val.tsv",
                                           "caption_test.tsv"]
    stage1 = rows(out / "caption_stage1_train.tsv")
    assert len(stage1) == 9 and all(len(r) == 5 for r in stage1)  # 3 train + restval images x 3 captions
    assert stage1[0][:4] == ["0", "100", "a red square on grass number 100", ""]
    original = (images / "train2014" / "COCO_train2014_000000000100.jpg").read_bytes()
    assert base64.b64decode(stage1[0][4]) == original  # copied, not re-encoded
    val = rows(out / "caption_val.tsv")
    assert [r[1] for r in val] == ["103", "104"]
    assert val[0][2].split("&&") == [f"a {c} square on grass number 103" for c in ("red", "blue", "green")]
    assert len(rows(out / "caption_stage2_train.tsv")) == 3 and len(rows(out / "caption_test.tsv")) == 1
    assert check("caption", out / "caption_stage1_train.tsv", out / "caption_val.tsv", out / "caption_test.tsv") == 0
    assert check("caption", out / "caption_stage2_train.tsv", extra=("--split", "valid")) == 0


def test_coco_captions_one_joined_row_per_image_on_one_line(tmp_path):
    annotations, images = coco_caption_set(tmp_path)
    convert("coco-captions", "--annotations", annotations, "--images", images, "--out", tmp_path / "out")
    table = rows(tmp_path / "out" / "caption_val2014.tsv")
    assert [r[:3] for r in table] == [["7", "7", "a dog sits 0&&a dog sits 1"],
                                      ["9", "9", "a dog sits 0&&a dog sits 1"]]
    convert("coco-captions", "--annotations", annotations, "--images", images, "--out", tmp_path / "out",
            "--per-caption")
    assert [r[2] for r in rows(tmp_path / "out" / "caption_val2014_per_caption.tsv")][:2] == ["a dog sits 0",
                                                                                             "a dog sits 1"]
    assert check("caption", tmp_path / "out" / "caption_val2014.tsv") == 0


# ----------------------------------------------------------------------------------------------------------- refcoco

def expected_corners(ann_id, width=64, height=48, scale=1.0):
    x, y, w, h = REFCOCO_BOXES[ann_id]
    corners = [min(max(x, 0), width), min(max(y, 0), height), min(x + w, width), min(y + h, height)]
    return [c * scale for c in corners]


@pytest.mark.parametrize("protocol", [0, 2])
def test_refcoco_boxes_equal_the_annotations(tmp_path, protocol):
    refs, instances, images = refcoco_set(tmp_path, protocol=protocol)
    out = tmp_path / "out"
    convert("refcoco", "--refs", refs, "--instances", instances, "--images", images, "--out", out)
    files = {split: rows(out / f"refcoco_{split}.tsv") for split in ("train", "val", "testA", "testB")}
    assert [r[0] for r in files["train"]] == ["51_100", "51_101", "52_200", "52_201"]  # one row per expression
    assert files["train"][1][1:3] == ["11", "the right thing 1"]
    for split, table in files.items():
        for row in table:
            ann_id = int(row[0].split("_")[0]) - 50
            assert box(row[3]) == pytest.approx(expected_corners(ann_id), abs=1e-6)
            assert decoded(row[4]).size == (64, 48)
    assert box(files["val"][0][3])[2] == 64  # 0.5 px outside: clipped
    assert check("refcoco", *(out / f"refcoco_{s}.tsv" for s in files)) == 0


def test_refcoco_max_image_size_scales_boxes_with_the_image(tmp_path):
    refs, instances, images = refcoco_set(tmp_path)
    out = tmp_path / "out"
    convert("refcoco", "--refs", refs, "--instances", instances, "--images", images, "--out", out,
            "--max-image-size", "32", "--jpeg-quality", "80", "--set-name", "mine")
    table = rows(out / "mine_train.tsv")
    for row in table:
        assert decoded(row[4]).size == (32, 24) and decoded(row[4]).format == "JPEG"
        assert box(row[3]) == pytest.approx(expected_corners(int(row[0].split("_")[0]) - 50, scale=0.5), abs=1e-6)
    assert check("refcoco", out / "mine_train.tsv") == 0


def test_a_crafted_refs_pickle_is_refused_naming_the_file(tmp_path):
    marker = tmp_path / "ran"

    class Exploit:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    folder = tmp_path / "refcoco"
    folder.mkdir()
    crafted = folder / "refs(unc).p"
    crafted.write_bytes(pickle.dumps([{"ref_id": 1, "sentences": Exploit()}], protocol=2))
    instances = folder / "instances.json"
    instances.write_text('{"images": [], "annotations": []}')
    refused = f"--refs {crafted}: refusing to load 'posix.system': a RefCOCO refs file holds only"
    with pytest.raises(ValueError, match=re.escape(refused)):
        convert("refcoco", "--refs", crafted, "--instances", instances, "--images", tmp_path, "--out", tmp_path / "o")
    assert not marker.exists()


def test_a_python2_refs_pickle_loads(tmp_path):
    """refer's pickles were written by Python 2 (protocol 0, byte strings): read as latin-1 text."""
    from ofa_el.converters.refcoco import load_refs

    path = tmp_path / "refs.p"
    path.write_bytes(b"(lp0\n(dp1\nS'split'\np2\nS'train'\np3\nsS'ref_id'\np4\nI7\nsS'box'\np5\nF1.5\nsa.")
    assert load_refs(str(path)) == [{"split": "train", "ref_id": 7, "box": 1.5}]


# ----------------------------------------------------------------------------------------------------- invalid input

def test_bad_entries_stop_with_input_entry_reason(tmp_path):
    annotations, images = karpathy_set(tmp_path)
    (images / "val2014" / "COCO_val2014_000000000103.jpg").unlink()
    with pytest.raises(ValueError, match="^" + re.escape(f"{annotations}: image 103: image file not found: ")):
        convert("coco-karpathy", "--annotations", annotations, "--images", images, "--out", tmp_path / "out")
    assert not (tmp_path / "out" / "caption_val.tsv").exists()  # neither final nor partial file
    assert not list((tmp_path / "out").glob(".caption_val.tsv.partial-*"))
    assert (tmp_path / "out" / "caption_stage1_train.tsv").exists()  # the files before it are complete


def test_skip_invalid_counts_and_reports_every_kind_of_bad_entry(tmp_path, capsys):
    refs, instances, images = refcoco_set(tmp_path)
    data = pickle.loads(refs.read_bytes())
    data[0]["sentences"][1]["sent"] = "  "  # empty expression
    data[2]["ann_id"] = 99  # no such annotation
    refs.write_bytes(pickle.dumps(data))
    coco = json.loads(instances.read_text())
    coco["annotations"][1]["bbox"] = [40.0, 20.0, 26.0, 28.0]  # 2 px outside the 64-px-wide image
    instances.write_text(json.dumps(coco))
    (images / "COCO_train2014_000000000013.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    args = ["refcoco", "--refs", refs, "--instances", instances, "--images", images, "--out", tmp_path / "out"]
    with pytest.raises(ValueError, match=r"refs\(unc\)\.p: ref 51 sentence 101: the expression is empty"):
        convert(*args)
    summaries = convert(*args, "--skip-invalid")
    report = (tmp_path / "out" / "make_tsv_skipped.txt").read_text().splitlines()
    assert all(line.startswith(f"{refs}: ") for line in report)
    reasons = [line[len(f"{refs}: "):] for line in report]
    assert reasons[0] == "ref 51 sentence 101: the expression is empty"
    assert [r.split(": ")[0] for r in reasons] == ["ref 51 sentence 101", "ref 52 sentence 200", "ref 52 sentence 201",
                                                   "ref 53", "image 13", "image 13"]  # image 13 in testA and testB
    assert "region column: box" in reasons[1] and "by 2 px" in reasons[1]
    assert reasons[3] == "ref 53: annotation 99 is not in --instances"
    assert "undecodable or truncated image" in reasons[4]
    by_name = {s.name: s for s in summaries}
    assert by_name["refcoco_train.tsv"].rows == 1 and by_name["refcoco_train.tsv"].skipped_entries == 3
    assert [r[0] for r in rows(tmp_path / "out" / "refcoco_train.tsv")] == ["51_100"]
    assert by_name["refcoco_val.tsv"].rows == 0 and not (tmp_path / "out" / "refcoco_val.tsv").exists()
    assert "skipped 6 invalid entries" in capsys.readouterr().out


def test_user_errors_print_one_line_and_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "ofa_el.tools.make_tsv", "coco-karpathy", "--annotations",
                           str(tmp_path / "none.json"), "--images", str(tmp_path), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip() == f"error: --annotations: file not found: {tmp_path}/none.json"


# ----------------------------------------------------------------------------------------------------------- writing

def test_rows_keep_the_annotation_order_with_two_workers(tmp_path):
    annotations, images = karpathy_set(tmp_path)
    convert("coco-karpathy", "--annotations", annotations, "--images", images, "--out", tmp_path / "one")
    convert("coco-karpathy", "--annotations", annotations, "--images", images, "--out", tmp_path / "two",
            "--workers", "2", "--max-image-size", "1000")
    convert("coco-karpathy", "--annotations", annotations, "--images", images, "--out", tmp_path / "three",
            "--workers", "2")
    for name in ("caption_stage1_train.tsv", "caption_val.tsv"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "three" / name).read_bytes()
        assert [r[:3] for r in rows(tmp_path / "one" / name)] == [r[:3] for r in rows(tmp_path / "two" / name)]


def test_images_are_encoded_only_a_few_chunks_ahead_of_the_writer(tmp_path):
    """Memory stays flat: however many entries, at most CHUNKS_IN_FLIGHT_PER_WORKER chunks per worker are being
    encoded or waiting for the writer; results come back in the entries' order, rejected entries in place."""
    from ofa_el.converters import writer
    from ofa_el.converters.entries import Entry, InvalidEntry
    from ofa_el.converters.images import ImageEncoder

    class CountingPool:
        def __init__(self):
            self.outstanding = self.most = 0

        def apply_async(self, function, args):
            self.outstanding += 1
            self.most = max(self.most, self.outstanding)
            pool = self

            class Result:
                def get(self):
                    pool.outstanding -= 1
                    return [f"reason {path}" for path in args[0]]  # what encode_images returns for a bad image
            return Result()

    items = [Entry("in", f"e{k}", f"img{k}") if k % 7 else InvalidEntry("in", f"e{k}", "bad") for k in range(500)]
    pool = CountingPool()
    seen = list(writer.encoded_in_order(iter(items), ImageEncoder(), pool, workers=2))
    assert pool.most == writer.CHUNKS_IN_FLIGHT_PER_WORKER * 2 and pool.outstanding == 0
    assert [item for item, _ in seen] == items
    assert all(image == (None if isinstance(item, InvalidEntry) else f"reason {item.image_path}")
               for item, image in seen)


def test_a_killed_run_leaves_no_file_under_the_final_name(tmp_path):
    image = write_image(tmp_path / "img.png", size=(400, 300), fmt="PNG")
    records = [{"image": "img.png", "caption": f"picture number {k}"} for k in range(4000)]
    jsonl = write_jsonl(tmp_path / "big_train.jsonl", records)
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "ofa_el.tools.make_tsv", "jsonl", "--task", "caption",
                             "--annotations", str(jsonl), "--out", str(out), "--max-image-size", "399",
                             "--no-progress"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and not list(out.glob(".big_train.tsv.partial-*")):
        time.sleep(0.05)
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = list(out.glob(".big_train.tsv.partial-*"))
    assert partial and partial[0].stat().st_size > 0, proc.stderr.read()
    assert not (out / "big_train.tsv").exists()
    assert image.exists()


# -------------------------------------------------------------------------------------------- vqa, snli-ve, imagenet

def test_vqa_soft_scores_are_the_official_leave_one_out_accuracy():
    assert dict(soft_scores(["a"] * 1 + ["b"] * 9)) == pytest.approx({"a": 0.3, "b": 1.0})
    assert dict(soft_scores(["a"] * 2 + ["b"] * 3 + ["c"] * 5)) == pytest.approx({"a": 0.6, "b": 0.9, "c": 1.0})
    # brute force: min(1, matches / 3) over the 10 subsets of 9 annotators
    answers = ["x"] * 2 + ["y"] * 4 + ["z"] * 4
    for answer, score in soft_scores(answers):
        subsets = [answers[:i] + answers[i + 1:] for i in range(10)]
        assert score == pytest.approx(sum(min(1, s.count(answer) / 3) for s in subsets) / 10)


def test_vqa_columns_answers_and_ans2label(tmp_path):
    questions, annotations, images = vqa_set(tmp_path)
    out = tmp_path / "out"
    convert("vqa", "--questions", questions, "--annotations", annotations, "--images", images, "--out", out,
            "--num-answers", "4")
    table = rows(out / "vqa_train.tsv")
    assert [r[:3] for r in table] == [["1", "20", "what is shown 1?"], ["2", "20", "what is shown 2?"],
                                      ["3", "21", "what is shown 3?"], ["4", "21", "what is shown 4?"]]
    assert table[0][3] == "1|!+yes"
    assert table[1][3] == "1|!+4&&0.9|!+2&&0.6|!+two&&0.3|!+3"
    assert all(r[4] == "" and decoded(r[5]).size == (40, 30) for r in table)
    labels = pickle.loads((out / "trainval_ans2label.pkl").read_bytes())
    assert list(labels.items()) == [("4", 0), ("blue", 1), ("dog", 2), ("yes", 3)]  # 1 each, ties by text


def test_vqa_target_outside_the_candidates_is_invalid_and_ties_prefer_candidates(tmp_path):
    """The task trains on the best answer, which must be a candidate; among equally good answers a candidate
    comes first."""
    questions, annotations, images = vqa_set(tmp_path, answers_per_question={
        1: ["yes"] * 10, 2: ["zebra"] * 5 + ["horse"] * 5, 3: ["yes"] * 6 + ["no"] * 4, 4: ["rare"] * 10})
    out = tmp_path / "out"
    # multiple-choice answers yes (2 questions), horse, rare: the 2 most frequent are yes and horse
    args = ["vqa", "--questions", questions, "--annotations", annotations, "--images", images, "--out", out,
            "--num-answers", "2"]
    reason = "question 4: the best answer 'rare' is not one of the 2 candidate answers (trainval_ans2label.pkl)"
    with pytest.raises(ValueError, match="^" + re.escape(f"{questions}: {reason}") + "$"):
        convert(*args)
    (summary,) = convert(*args, "--skip-invalid")
    assert summary.rows == 3 and summary.skipped_entries == 1
    assert [r[3] for r in rows(out / "vqa_train.tsv")] == ["1|!+yes", "1|!+horse&&1|!+zebra", "1|!+yes&&1|!+no"]
    assert list(pickle.loads((out / "trainval_ans2label.pkl").read_bytes())) == ["yes", "horse"]


def test_vqa_question_without_answers_is_invalid(tmp_path):
    questions, annotations, images = vqa_set(tmp_path, answers_per_question={1: ["yes"] * 10, 2: ["", " "]})
    with pytest.raises(ValueError, match="^" + re.escape(f"{questions}: question 2: no answers") + "$"):
        convert("vqa", "--questions", questions, "--annotations", annotations, "--images", images,
                "--out", tmp_path / "out")


def test_snli_ve_columns_and_labels(tmp_path):
    path, images = snli_ve_set(tmp_path)
    convert("snli-ve", "--annotations", path, "--images", images, "--out", tmp_path / "out")
    table = rows(tmp_path / "out" / "snli_ve_train.tsv")
    assert [(r[0], r[1], r[3], r[4], r[5]) for r in table][:2] == [
        ("3000.jpg#0r1e", "3000", "animals are outside 0", "two dogs run 0", "entailment"),
        ("3000.jpg#1r1n", "3000", "animals are outside 1", "two dogs run 1", "neutral")]
    assert decoded(table[0][2]).size == (40, 30)
    bad, _ = snli_ve_set(tmp_path, split="dev", labels=("entailment", "-"))
    with pytest.raises(ValueError, match=re.escape(f"{bad}: line 2: label '-' is not one of entailment, neutral")):
        convert("snli-ve", "--annotations", bad, "--images", images, "--out", tmp_path / "out")


@pytest.mark.parametrize("flat_val", [False, True])
def test_imagenet_folders_to_rows_and_class_list(tmp_path, flat_val):
    synsets, images, solution = imagenet_set(tmp_path, flat_val=flat_val)
    out = tmp_path / "out"
    convert("imagenet", "--images", images, "--synsets", synsets, "--out", out,
            *(["--annotations", solution] if flat_val else []))
    names = ["tench", "crane (n02012849)", "crane (n03126707)", "maillot (n03710637)", "maillot, tank suit"]
    assert list(pickle.loads((out / "class2label_new.pkl").read_bytes())) == names
    train = rows(out / "imagenet_1k_train.tsv")
    assert [(r[1], r[2]) for r in train] == [(str(i + 1), n) for i, n in enumerate(names) for _ in range(2)]
    val = rows(out / "imagenet_1k_val.tsv")
    assert [(r[1], r[2]) for r in val] == [(str(i + 1), n) for i, n in enumerate(names)]
    assert decoded(val[0][0]).size == (40, 30) and len(SYNSETS) == 5
    if not flat_val:  # a label file with nothing to label is a mistake, not an option to ignore
        with pytest.raises(ValueError, match="labels a flat folder, but every split of --splits train,val has class"):
            convert("imagenet", "--images", images, "--synsets", synsets, "--out", out, "--annotations", solution)


def test_jsonl_writes_each_task_layout(tmp_path):
    write_image(tmp_path / "pics" / "a.jpg", size=(50, 40))
    jsonl = {
        "caption": {"caption": ["one cat", "a cat"]},
        "refcoco": {"text": "left cat", "box": [1, 2, 30.5, 40.4]},
        "vqa_gen": {"question": "how many?", "answers": ["2", "2", "3"], "tags": ["cat", "sofa"]},
        "snli_ve": {"hypothesis": "a cat", "caption": "a cat sleeps", "label": "entailment"},
        "image_classify": {"label": "tabby cat"},
    }
    expected = {
        "caption": ["7", "a", "one cat&&a cat", "", None],
        "refcoco": ["7", "a", "left cat", "1,2,30.5,40", None],  # 0.4 px below: clipped
        "vqa_gen": ["7", "a", "how many?", "0.444444|!+2&&0.222222|!+3", "cat&&sofa", None],  # 3 annotators
        "snli_ve": ["7", "a", None, "a cat", "a cat sleeps", "entailment"],
        "image_classify": [None, "1", "tabby cat"],
    }
    for task, fields in jsonl.items():
        path = write_jsonl(tmp_path / f"{task}_val.jsonl", [{"image": "a.jpg", "id": 7, **fields}])
        convert("jsonl", "--task", task, "--annotations", path, "--images", tmp_path / "pics", "--out", tmp_path / "o")
        (row,) = rows(tmp_path / "o" / f"{task}_val.tsv")
        assert [None if value.startswith("/9j/") else value for value in row] == expected[task]
    assert list(pickle.loads((tmp_path / "o" / "trainval_ans2label.pkl").read_bytes())) == ["2"]  # the targets
    assert list(pickle.loads((tmp_path / "o" / "class2label_new.pkl").read_bytes())) == ["tabby cat"]


# ----------------------------------------------------------------------------------------------------- check + train

def train_two_updates(data_files, task, bpe, selected_cols, *extra):
    cmd = [sys.executable, "-m", "ofa_el.tools.train", ",".join(map(str, data_files)), "--task", task,
           "--bpe-dir", str(bpe), "--arch", "ofa_tiny", *TINY_MODEL, "--resnet-type", "resnet18",
           "--patch-image-size", "32", "--batch-size", "2", "--max-update", "2", "--criterion",
           "adjust_label_smoothed_encouraging_loss", "--label-smoothing", "0.1", "--log-end", "0.75", "--optimizer",
           "adam", "--lr", "1e-3", "--cpu", "--disable-validation", "--no-save", "--num-workers", "0",
           "--code-dict-size", "0", "--num-bins", "100", "--log-format", "simple", "--log-interval", "1",
           "--selected-cols", selected_cols, "--save-dir", str(Path(bpe).parent / "ckpt"), *map(str, extra)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    assert "num_updates=2" in output and "Stopping training due to num_updates: 2" in output, output[-4000:]


def test_karpathy_output_passes_check_data_and_trains(tmp_path):
    annotations, images = karpathy_set(tmp_path)
    out = tmp_path / "out"
    convert("coco-karpathy", "--annotations", annotations, "--images", images, "--out", out)
    train, val = out / "caption_stage1_train.tsv", out / "caption_val.tsv"
    assert check("caption", train, val) == 0
    train_two_updates([train, val], "caption", make_bpe(tmp_path / "bpe", [train], [2]), "0,4,2")


def test_refcoco_output_passes_check_data_and_trains(tmp_path):
    refs, instances, images = refcoco_set(tmp_path)
    out = tmp_path / "out"
    convert("refcoco", "--refs", refs, "--instances", instances, "--images", images, "--out", out)
    train, val = out / "refcoco_train.tsv", out / "refcoco_val.tsv"
    assert check("refcoco", train, val) == 0
    train_two_updates([train, val], "refcoco", make_bpe(tmp_path / "bpe", [train, val], [2]), "0,4,2,3")


def test_vqa_output_passes_check_data_and_trains(tmp_path):
    questions, annotations, images = vqa_set(tmp_path)
    out = tmp_path / "out"
    convert("vqa", "--questions", questions, "--annotations", annotations, "--images", images, "--out", out)
    tsv, ans2label = out / "vqa_train.tsv", out / "trainval_ans2label.pkl"
    assert check("vqa_gen", tsv, extra=("--ans2label-file", ans2label)) == 0
    train_two_updates([tsv, tsv], "vqa_gen", make_bpe(tmp_path / "bpe", [tsv], [2]), "0,5,2,3,4",
                      "--ans2label-file", ans2label)


def test_snli_ve_output_passes_check_data_and_trains(tmp_path):
    path, images = snli_ve_set(tmp_path)
    out = tmp_path / "out"
    convert("snli-ve", "--annotations", path, "--images", images, "--out", out)
    tsv = out / "snli_ve_train.tsv"
    assert check("snli_ve", tsv) == 0
    train_two_updates([tsv, tsv], "snli_ve", make_bpe(tmp_path / "bpe", [tsv], [3, 4]), "0,2,3,4,5")


def test_imagenet_output_passes_check_data_and_trains(tmp_path):
    synsets, images, _ = imagenet_set(tmp_path)
    out = tmp_path / "out"
    convert("imagenet", "--images", images, "--synsets", synsets, "--out", out)
    train, val = out / "imagenet_1k_train.tsv", out / "imagenet_1k_val.tsv"
    assert check("image_classify", train, val, extra=("--ans2label-file", out / "class2label_new.pkl")) == 0
    train_two_updates([train, val], "image_classify", make_bpe(tmp_path / "bpe", [train], [2]), "0,2",
                      "--ans2label-file", out / "class2label_new.pkl")
