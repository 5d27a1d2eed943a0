"""``python -m ofa_el.tools.predict``: captions and boxes for the user's own image files, preprocessed by the
datasets' own code (the same batch, tensor for tensor, as evaluation builds from a TSV row of that image)."""
import argparse
import base64
import json
import math
import os
import subprocess
import sys

import pytest
import torch
from PIL import Image

from conftest import REPO_ROOT
from ofa_el.data import scoring
from ofa_el.tools import evaluate, predict
from ofa_el.tools.errors import run_cli

NUM_BINS = 10
TINY = ["--arch", "ofa_tiny", "--encoder-layers", "1", "--decoder-layers", "1", "--encoder-embed-dim", "32",
        "--decoder-embed-dim", "32", "--encoder-ffn-embed-dim", "64", "--decoder-ffn-embed-dim", "64",
        "--encoder-attention-heads", "2", "--decoder-attention-heads", "2", "--resnet-type", "resnet18",
        "--patch-image-size", "32", "--code-dict-size", "0", "--num-bins", str(NUM_BINS),
        "--criterion", "adjust_label_smoothed_encouraging_loss", "--optimizer", "adam", "--lr", "1e-3",
        "--batch-size", "4", "--max-update", "2", "--cpu", "--num-workers", "0", "--disable-validation",
        "--keep-row-order", "--no-epoch-checkpoints"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, demo_data):
    """Demo data and a caption and a refcoco checkpoint of a tiny model (2 updates each, trained side by side)."""
    root = tmp_path_factory.mktemp("predict")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    runs = {}
    for task, train in (("caption", "caption_stage1_train"), ("refcoco", "refcoco_train")):
        tsv = f"{demo_data}/{train}.tsv,{demo_data}/{task}_val.tsv"
        cmd = [sys.executable, "-m", "ofa_el.tools.train", tsv, "--task", task, *TINY, "--bpe-dir",
               str(demo_data / "bpe"), "--save-dir", str(root / task)]
        runs[task] = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    for task, proc in runs.items():
        output, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, output[-4000:]
    return {"data": demo_data, "bpe": demo_data / "bpe", "caption": root / "caption" / "checkpoint_last.pt",
            "refcoco": root / "refcoco" / "checkpoint_last.pt"}


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """A JPEG, a greyscale PNG, an RGBA PNG and a palette PNG of one demo-like scene, in other sizes."""
    folder = tmp_path_factory.mktemp("images")
    scene = Image.new("RGB", (120, 80), (200, 200, 200))
    scene.paste((30, 60, 220), (10, 10, 50, 50))
    scene.paste((220, 30, 30), (70, 30, 110, 70))
    paths = {"jpeg": folder / "scene.jpg", "grey": folder / "grey.png", "rgba": folder / "rgba.png",
             "palette": folder / "palette.png"}
    scene.save(paths["jpeg"], quality=92)
    scene.resize((90, 100)).convert("L").save(paths["grey"])
    scene.resize((64, 48)).convert("RGBA").save(paths["rgba"])
    scene.convert("P").save(paths["palette"])
    (folder / "notes.jpg").write_text("not an image")
    paths["bad"] = folder / "notes.jpg"
    return paths


def run_predict(capsys, *argv):
    """``main`` through the command-line wrapper: (exit status, stdout, stderr)."""
    capsys.readouterr()
    try:
        run_cli(lambda: predict.main([str(arg) for arg in argv]))
        status = 0
    except SystemExit as exit_:
        status = exit_.code
    out, err = capsys.readouterr()
    return status, out, err


def one_row_tsv(path, image_path, fields):
    """An evaluation TSV row holding ``image_path``'s bytes, as OFA's TSVs hold images."""
    image = base64.b64encode(image_path.read_bytes()).decode("ascii")
    path.write_text("\t".join(field if field != "IMAGE" else image for field in fields) + "\n")
    return path


def test_caption_one_line_per_image_equal_to_evaluation(trained, images, tmp_path, subprocess_env, monkeypatch):
    files = [images["jpeg"], images["grey"], images["rgba"]]
    proc = subprocess.run([sys.executable, "-m", "ofa_el.tools.predict", "--path", str(trained["caption"]),
                           "--image", *map(str, files), "--cpu"], capture_output=True, text=True,
                          env=subprocess_env, cwd=REPO_ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert [line.split(": ", 1)[0] for line in lines] == list(map(str, files)), proc.stdout
    assert "Traceback" not in proc.stderr and "pin_memory" not in proc.stderr

    # evaluation's own loading, batching, generation and text: only the COCO scorers (Java) are left out
    monkeypatch.setattr(evaluate, "require_java", lambda: None)
    monkeypatch.setattr(scoring, "coco_caption_metrics", lambda records: {"n": len(records)})
    tsv = one_row_tsv(tmp_path / "photo.tsv", images["jpeg"], ["7", "7", "a scene&&two squares", "", "IMAGE"])
    evaluate.main([str(tsv), "--path", str(trained["caption"]), "--bpe-dir", str(trained["bpe"]), "--cpu",
                   "--results-path", str(tmp_path / "results")])
    evaluated = json.loads((tmp_path / "results" / "photo_predict.json").read_text())
    assert lines[0] == f"{files[0]}: {evaluated[0]['caption']}"


@pytest.mark.parametrize("task", ["caption", "refcoco"])
def test_the_batch_is_evaluations_batch_of_that_image(trained, images, tmp_path, task):
    """Prompt, image transform at the checkpoint's patch size, resize ratios: all from the dataset code."""
    image_path = images["grey"]
    args = predict.parse_args(["--path", str(trained[task]), "--image", str(image_path), "--cpu"])
    state = predict.load_checkpoint_state(args.path)
    _, task_of_predict = predict.load_model(args, state, use_cuda=False)
    text = "the Blue square  on the left"
    field = predict.expression_text(text, state["cfg"].task) if task == "refcoco" else None
    batch = next(predict.image_batches(task_of_predict, task, predict.read_images([str(image_path)]), field, 16,
                                       use_cuda=False))

    if task == "caption":
        tsv = one_row_tsv(tmp_path / "caption.tsv", image_path, ["3", "3", "a scene", "", "IMAGE"])
    else:
        tsv = one_row_tsv(tmp_path / "refcoco.tsv", image_path, ["3", "3", text, "10,10,50,50", "IMAGE"])
    eval_args = argparse.Namespace(data=str(tsv), path=str(trained[task]), bpe_dir=str(trained["bpe"]),
                                   selected_cols=None, cpu=True)
    _, _, task_of_evaluate, _ = evaluate.load(eval_args)
    expected = next(evaluate.batches(task_of_evaluate, str(tsv), 16, use_cuda=False))

    assert batch["net_input"]["patch_images"].shape == (1, 3, 32, 32)  # the checkpoint's --patch-image-size
    for key in ("src_tokens", "patch_images", "patch_masks"):
        assert torch.equal(batch["net_input"][key], expected["net_input"][key]), key
    if task == "refcoco":
        assert torch.equal(batch["w_resize_ratios"], expected["w_resize_ratios"])
        assert torch.equal(batch["h_resize_ratios"], expected["h_resize_ratios"])
        assert batch["w_resize_ratios"].item() == pytest.approx(32 / 90)  # the ORIGINAL image's size


def test_grounding_box_in_original_pixels_and_drawn(trained, images, tmp_path, capsys):
    files = [images["jpeg"], images["palette"], images["rgba"]]
    status, out, err = run_predict(capsys, "--path", trained["refcoco"], "--image", *files, "--text",
                                   "the blue square", "--draw", tmp_path / "boxes", "--json", "--cpu")
    assert status == 2 and "--draw" in err and "folder" in err  # several images, and no such folder yet
    (tmp_path / "boxes").mkdir()
    status, out, err = run_predict(capsys, "--path", trained["refcoco"], "--image", *files, "--text",
                                   "the blue square", "--draw", tmp_path / "boxes", "--json", "--cpu")
    assert status == 0, err
    results = json.loads(out)
    assert [r["image"] for r in results] == list(map(str, files))
    for result, path in zip(results, files):
        source = Image.open(path).convert("RGB")
        width, height = source.size
        box = result["box"]
        assert result["text"] == "the blue square" and len(box) == 4 and all(math.isfinite(c) for c in box)
        assert 0 <= box[0] <= width and 0 <= box[2] <= width and 0 <= box[1] <= height and 0 <= box[3] <= height
        # restricted decoding: every coordinate is a bin (k / (bins - 1) of the image side), mapped back with the
        # image's own resize ratios
        for value, side in zip(box, (width, height, width, height)):
            k = value / side * (NUM_BINS - 1)
            assert k == pytest.approx(round(k), abs=1e-3)
        drawn = Image.open(tmp_path / "boxes" / f"{path.stem}.png")
        assert drawn.size == source.size
        corner = (min(int(box[0]), width - 1), min(int(box[1]), height - 1))
        assert drawn.convert("RGB").getpixel(corner) == predict.BOX_COLOUR != source.getpixel(corner)

    status, out, _ = run_predict(capsys, "--path", trained["refcoco"], "--image", files[0], "--text",
                                 "the blue square", "--cpu")
    box = ",".join(f"{c:.1f}" for c in results[0]["box"])
    assert status == 0 and out == f'{files[0]}: {box} for "the blue square"\n'


def test_draw_outlines_the_box_and_leaves_the_rest(tmp_path):
    source = Image.new("RGB", (100, 60), (10, 200, 10))
    target = tmp_path / "out.png"
    predict.draw_box(source, [60.0, 50.0, 20.0, 10.0], target)  # corners in any order
    drawn = Image.open(target).convert("RGB")
    assert drawn.size == source.size
    outline = [(x, y) for x in range(20, 61) for y in (10, 50)] + [(x, y) for x in (20, 60) for y in range(10, 51)]
    assert all(drawn.getpixel(p) == predict.BOX_COLOUR for p in outline)
    assert drawn.getpixel((40, 30)) == drawn.getpixel((5, 5)) == drawn.getpixel((99, 59)) == (10, 200, 10)
    predict.draw_box(source, [0.0, 0.0, 100.0, 60.0], target)  # the whole image: the outline stays inside it
    drawn = Image.open(target).convert("RGB")
    assert drawn.getpixel((99, 30)) == drawn.getpixel((50, 59)) == predict.BOX_COLOUR


@pytest.mark.parametrize("case", ["missing image", "unreadable image", "text for caption", "no text for refcoco",
                                  "draw for caption", "other task", "missing checkpoint", "missing bpe dir",
                                  "two images, one draw file"])
def test_user_errors(trained, images, tmp_path, capsys, monkeypatch, case):
    monkeypatch.delenv("OFA_EL_TRACEBACK", raising=False)
    caption, refcoco, jpeg = trained["caption"], trained["refcoco"], images["jpeg"]
    if case in ("other task", "missing bpe dir"):
        state = torch.load(caption)
        state.pop("last_optimizer_state", None)
        if case == "other task":
            state["cfg"]["task"]["_name"] = "translation"
        else:
            state["cfg"]["task"]["bpe_dir"] = str(tmp_path / "gone")
        caption = tmp_path / "edited.pt"
        torch.save(state, caption)
    argv, fragments = {
        "missing image": (["--path", caption, "--image", jpeg, tmp_path / "nope.jpg"],
                          ["image not found", str(tmp_path / "nope.jpg")]),
        "unreadable image": (["--path", caption, "--image", images["bad"]], [str(images["bad"]), "image"]),
        "text for caption": (["--path", caption, "--image", jpeg, "--text", "a man"], ["--text", "caption"]),
        "no text for refcoco": (["--path", refcoco, "--image", jpeg],
                                ["this checkpoint was trained for refcoco: pass --text"]),
        "draw for caption": (["--path", caption, "--image", jpeg, "--draw", tmp_path / "x.png"], ["--draw"]),
        "other task": (["--path", caption, "--image", jpeg], [str(caption), "'translation'"]),
        "missing checkpoint": (["--path", tmp_path / "none.pt", "--image", jpeg],
                               ["checkpoint not found", str(tmp_path / "none.pt")]),
        "missing bpe dir": (["--path", caption, "--image", jpeg], [str(tmp_path / "gone"), "pass --bpe-dir"]),
        "two images, one draw file": (["--path", refcoco, "--image", jpeg, images["grey"], "--text", "a",
                                       "--draw", tmp_path / "x.png"], ["{stem}"]),
    }[case]
    status, out, err = run_predict(capsys, *argv, "--cpu")
    assert status == 2 and out == "", (status, out, err)
    assert "Traceback" not in err
    message = [line for line in err.splitlines() if line.startswith("error: ")]
    assert message, err
    for fragment in fragments:
        assert fragment in message[-1], message[-1]
