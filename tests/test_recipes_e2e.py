"""The published recipes through run_scripts (DEMO=1) on tiny generated data: train, pick the best
checkpoint by the task metric, evaluate it with the evaluation scripts."""
import json

import pytest

from conftest import TINY_MODEL, run_script, tsv_rows

SMALL_MODEL = TINY_MODEL + ["--batch-size", "8", "--max-epoch", "1", "--log-interval", "2"]


def assert_readable_evaluation(output, split, items):
    """A progress bar with items/s and elapsed time per split; no third-party DEBUG lines."""
    bar = [line for line in output.replace("\r", "\n").splitlines() if line.startswith(f"{split}: 100%")]
    assert bar and f"{items}/{items} [" in bar[-1] and " items/s]" in bar[-1], output[-3000:]
    assert "| DEBUG |" not in output and "DEBUG:" not in output


def test_caption_recipe_trains_selects_by_cider_and_evaluates(demo_data, tmp_path):
    env = {"DATA_DIR": str(demo_data), "BPE_DIR": str(demo_data / "bpe"), "SAVE_DIR": str(tmp_path / "ckpt")}
    out = run_script("caption/train_caption_stage1_el_db.sh", env, *SMALL_MODEL)
    assert "| cider " in out and "checkpoint_best.pt (epoch 1 @ " in out  # chosen by --best-checkpoint-metric cider
    assert "adjust_label_smoothed_encouraging_loss" in out and "drop_best_ratio': 0.05" in out
    best = tmp_path / "ckpt" / "checkpoint_best.pt"
    assert best.is_file()
    results = tmp_path / "results"
    out = run_script("caption/evaluate_caption.sh", {"DATA_DIR": str(demo_data), "BPE_DIR": str(demo_data / "bpe"),
                                                      "CHECKPOINT": str(best), "RESULTS_DIR": str(results)})
    test_images = tsv_rows(demo_data / "caption_test.tsv")
    assert_readable_evaluation(out, "caption_test", test_images)
    predictions = json.loads((results / "caption_test_predict.json").read_text())
    assert len(predictions) == test_images and {"image_id", "caption"} <= set(predictions[0])
    metrics = json.loads((results / "metrics.json").read_text())["caption_test"]
    assert {"Bleu_4", "METEOR", "ROUGE_L", "CIDEr"} <= set(metrics)


def test_refcoco_recipe_trains_selects_by_score_and_evaluates(demo_data, tmp_path):
    # from scratch (fairseq's default restore file, none in the save dir): the demo's caption checkpoint
    # has other dimensions than SMALL_MODEL
    env = {"DATA_DIR": str(demo_data), "BPE_DIR": str(demo_data / "bpe"), "SAVE_DIR": str(tmp_path / "ckpt"),
           "RESTORE_FILE": "checkpoint_last.pt"}
    out = run_script("refcoco/train_refcocog_el.sh", env, *SMALL_MODEL)
    assert "| score " in out and "| miou " in out and "refcocog_train.tsv" in out
    best = tmp_path / "ckpt" / "checkpoint_best.pt"
    results = tmp_path / "results"
    out = run_script("refcoco/evaluate_refcoco.sh", {"SET": "refcocog", "DATA_DIR": str(demo_data),
                                                     "BPE_DIR": str(demo_data / "bpe"), "CHECKPOINT": str(best),
                                                     "RESULTS_DIR": str(results)})
    assert_readable_evaluation(out, "refcocog_val", tsv_rows(demo_data / "refcocog_val.tsv"))
    table = json.loads((results / "metrics.json").read_text())
    assert set(table) == {"refcocog_val", "refcocog_test"}
    assert all(0.0 <= row["Acc@0.5"] <= 1.0 and row["n"] == tsv_rows(demo_data / f"{split}.tsv")
               for split, row in table.items())
    predictions = json.loads((results / "refcocog_val_predict.json").read_text())
    assert len(predictions) == tsv_rows(demo_data / "refcocog_val.tsv") and len(predictions[0]["box"]) == 4
