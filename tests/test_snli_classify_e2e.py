"""The SNLI-VE and ImageNet recipes through run_scripts (DEMO=1) on tiny generated data: train, keep the best
checkpoint by the task's accuracy, evaluate with the evaluation scripts, predict for one image."""
import base64
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO_ROOT, TINY_MODEL, tsv_rows
from ofa_el.synthetic.image_classify import DEMO_CLASSES

SMALL_MODEL = TINY_MODEL + ["--batch-size", "8", "--max-epoch", "1", "--log-interval", "2"]


def run(args, env=None, timeout=600):
    full_env = dict(os.environ, DEMO="1", PYTHON=sys.executable, OMP_NUM_THREADS="1", **(env or {}))
    proc = subprocess.run(args, capture_output=True, text=True, env=full_env, timeout=timeout, cwd=REPO_ROOT)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-5000:]
    return output


def run_script(script, env, *args):
    return run(["sh", str(REPO_ROOT / "run_scripts" / script), *args], env)


def image_file(demo_data, tmp_path, table):
    path = tmp_path / "image.jpg"
    first = (demo_data / table).read_text(encoding="utf-8").splitlines()[0].split("\t")
    path.write_bytes(base64.b64decode(first[0] if table.startswith("image_classify") else first[2]))
    return path


def test_snli_ve_recipe_trains_selects_by_snli_score_evaluates_and_predicts(demo_data, tmp_path):
    env = {"DATA_DIR": str(demo_data), "BPE_DIR": str(demo_data / "bpe"), "SAVE_DIR": str(tmp_path / "ckpt"),
           "RESTORE_FILE": "checkpoint_last.pt"}  # from scratch: the demo's caption model has other dimensions
    out = run_script("snli_ve/train_snli_ve_el.sh", env, *SMALL_MODEL)
    assert "| snli_score " in out and "adjust_label_smoothed_encouraging_loss" in out
    assert "--prompt-type=prev_output" in out and "--add-caption" in out
    best = tmp_path / "ckpt" / "checkpoint_best.pt"
    assert best.is_file()
    results = tmp_path / "results"
    out = run_script("snli_ve/evaluate_snli_ve.sh", {"DATA_DIR": str(demo_data), "BPE_DIR": str(demo_data / "bpe"),
                                                      "CHECKPOINT": str(best), "RESULTS_DIR": str(results)})
    test_rows = tsv_rows(demo_data / "snli_ve_test.tsv")
    predictions = json.loads((results / "snli_ve_test_predict.json").read_text())
    assert len(predictions) == test_rows and {p["answer"] for p in predictions} <= {"yes", "no", "maybe"}
    assert predictions[0]["uniq_id"].endswith(".jpg#0")
    metrics = json.loads((results / "metrics.json").read_text())["snli_ve_test"]
    assert 0 <= metrics["accuracy"] <= 1 and metrics["n"] == test_rows
    out = run([sys.executable, "-m", "ofa_el.tools.predict", "--path", str(best), "--image",
               str(image_file(demo_data, tmp_path, "snli_ve_test.tsv")), "--text", "there is a red circle",
               "--caption", "a picture", "--cpu", "--json"])
    result = json.loads(out[out.index("["):])
    assert result[0]["answer"] in {"yes", "no", "maybe"} and result[0]["text"] == "there is a red circle"


def test_imagenet_recipe_trains_with_augmentation_evaluates_and_predicts(demo_data, tmp_path):
    env = {"DATA_DIR": str(demo_data), "BPE_DIR": str(demo_data / "bpe"), "SAVE_DIR": str(tmp_path / "ckpt"),
           "RESTORE_FILE": "checkpoint_last.pt"}
    # the demo block trains unaugmented; the flag brings OFA's augmentation back
    out = run_script("image_classify/train_imagenet_el.sh", env, *SMALL_MODEL, "--train-augmentation", "ofa")
    assert "image augmentation (auto): " in out and "train split: OFA's random augmentation with " in out
    assert "| score " in out and f"{len(DEMO_CLASSES)} candidate answers" in out
    best = tmp_path / "ckpt" / "checkpoint_best.pt"
    results = tmp_path / "results"
    run_script("image_classify/evaluate_imagenet.sh", {"DATA_DIR": str(demo_data), "BPE_DIR": str(demo_data / "bpe"),
                                                        "CHECKPOINT": str(best), "RESULTS_DIR": str(results)})
    test_rows = tsv_rows(demo_data / "image_classify_test.tsv")
    predictions = json.loads((results / "image_classify_test_predict.json").read_text())
    assert [p["uniq_id"] for p in predictions] == list(range(test_rows))
    assert {p["answer"] for p in predictions} <= set(DEMO_CLASSES)
    metrics = json.loads((results / "metrics.json").read_text())["image_classify_test"]
    assert 0 <= metrics["accuracy"] <= 1 and metrics["n"] == test_rows
    out = run([sys.executable, "-m", "ofa_el.tools.predict", "--path", str(best), "--image",
               str(image_file(demo_data, tmp_path, "image_classify_test.tsv")), "--cpu"])
    name = out.strip().splitlines()[-1].split(": ", 1)[1]
    assert name in DEMO_CLASSES
