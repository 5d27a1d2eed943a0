"""The VQA EL recipe through run_scripts (DEMO=1) on tiny generated data: train with EMA validation, evaluate both
inference types to vqa_<split>_predict.json, answer a question with predict."""
import base64
import json

import pytest

from conftest import TINY_MODEL, run_script, tsv_rows
from ofa_el.synthetic.vqa import ANSWERS
from ofa_el.tools.predict import main as predict


def test_vqa_recipe_trains_validates_on_ema_weights_and_evaluates(demo_data, tmp_path):
    env = {"DATA_DIR": str(demo_data), "BPE_DIR": str(demo_data / "bpe"), "SAVE_DIR": str(tmp_path / "ckpt"),
           "RESTORE_FILE": "checkpoint_last.pt"}  # from scratch: the demo's caption model has other dimensions
    out = run_script("vqa/train_vqa_el.sh", env, *TINY_MODEL, "--batch-size", "8", "--max-epoch", "1")
    assert "| vqa_score " in out, out[-3000:]  # validation's metric, from the EMA model (--uses-ema)
    assert "ema_decay 0.99" in out
    best = tmp_path / "ckpt" / "checkpoint_best.pt"
    assert best.is_file()
    for inference in ("allcand", "beamsearch"):
        results = tmp_path / inference
        out = run_script("vqa/evaluate_vqa.sh", {"DATA_DIR": str(demo_data), "BPE_DIR": str(demo_data / "bpe"),
                                                  "CHECKPOINT": str(best), "RESULTS_DIR": str(results),
                                                  "SPLIT": "test"}, "--inference-type", inference)
        predictions = json.loads((results / "vqa_test_predict.json").read_text())
        assert len(predictions) == tsv_rows(demo_data / "vqa_test.tsv")
        assert all(set(p) == {"question_id", "answer"} and isinstance(p["question_id"], int) for p in predictions)
        assert all(p["answer"] in ANSWERS for p in predictions)
        table = json.loads((results / "metrics.json").read_text())
        assert set(table) == {"vqa_test"} and 0.0 <= table["vqa_test"]["vqa_score"] <= 1.0
    line = (demo_data / "vqa_test.tsv").read_text().splitlines()[0].split("\t")
    image = tmp_path / "image.jpg"
    image.write_bytes(base64.b64decode(line[5]))
    answered = predict(["--path", str(best), "--image", str(image), "--question", line[2], "--ema-eval", "--cpu"])
    assert answered[0]["answer"] in ANSWERS and answered[0]["question"] == line[2]
