"""Entry points print ``error: <message>`` and exit 2 for what the user must fix; bugs keep their traceback."""
import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO_ROOT
from ofa_el.data.ofa_dataset import collate
from ofa_el.data.tsv import parse_selected_cols
from ofa_el.tools import errors, evaluate


def run(module, *args, env=None):
    full_env = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
    full_env.pop("OFA_EL_TRACEBACK", None)
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, env=full_env,
                          timeout=300, cwd=REPO_ROOT)


def assert_user_error(proc, *fragments):
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    line = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert line, proc.stderr[-3000:]
    for fragment in fragments:
        assert fragment in line[-1], line[-1]


TINY = ["--task", "caption", "--arch", "ofa_tiny", "--encoder-layers", "1", "--decoder-layers", "1",
        "--encoder-embed-dim", "32", "--decoder-embed-dim", "32", "--encoder-ffn-embed-dim", "64",
        "--decoder-ffn-embed-dim", "64", "--encoder-attention-heads", "2", "--decoder-attention-heads", "2",
        "--resnet-type", "resnet18", "--patch-image-size", "32", "--code-dict-size", "0", "--num-bins", "10",
        "--criterion", "adjust_label_smoothed_encouraging_loss", "--optimizer", "adam", "--lr", "1e-4",
        "--batch-size", "2", "--max-update", "2", "--cpu", "--num-workers", "0", "--disable-validation",
        "--no-save", "--ignore-unused-valid-subsets", "--keep-row-order"]


def test_train_with_a_missing_bpe_dir(demo_data, tmp_path):
    tsv = f"{demo_data}/caption_stage1_train.tsv,{demo_data}/caption_val.tsv"
    proc = run("ofa_el.tools.train", tsv, "--bpe-dir", str(tmp_path / "nowhere"), *TINY)
    assert_user_error(proc, f"--bpe-dir {tmp_path / 'nowhere'}: no such folder")
    assert len(proc.stdout + proc.stderr) < 1000, proc.stdout  # the error, not after pages of config


def test_train_with_missing_data_stops_before_the_model_is_built(demo_data, tmp_path):
    proc = run("ofa_el.tools.train", "/nowhere/train.tsv,/nowhere/val.tsv", "--bpe-dir", str(demo_data / "bpe"), *TINY)
    assert_user_error(proc, "data file not found: /nowhere/train.tsv")
    assert "OFAModel" not in proc.stdout + proc.stderr and len(proc.stdout + proc.stderr) < 1000


def test_train_without_arguments_says_what_to_give():
    proc = run("ofa_el.tools.train")
    assert_user_error(proc, "no arguments: python -m ofa_el.tools.train TRAIN.tsv,VALID.tsv", "ofa-el launch")
    assert proc.stderr.count("\n") == 1


@pytest.mark.parametrize("drop,keep,expected", [
    ("--batch-size", 2, "--batch-size: required"),
    ("--arch", 2, "--arch: required"),
    ("--task", 2, "--task: required"),
])
def test_train_without_a_required_flag(demo_data, drop, keep, expected):
    at = TINY.index(drop)
    argv = TINY[:at] + TINY[at + keep:]
    proc = run("ofa_el.tools.train", f"{demo_data}/caption_stage1_train.tsv,{demo_data}/caption_val.tsv", "--bpe-dir",
               str(demo_data / "bpe"), *argv)
    assert_user_error(proc, expected)


def test_train_with_an_unknown_arch_lists_the_plugins(demo_data):
    at = TINY.index("--arch")
    argv = TINY[:at] + ["--arch", "ofa_bse"] + TINY[at + 2:]
    proc = run("ofa_el.tools.train", f"{demo_data}/caption_val.tsv,{demo_data}/caption_val.tsv", *argv)
    assert_user_error(proc, "--arch ofa_bse: unknown (did you mean ofa_base", "ofa_large", "ofa_tiny")


@pytest.mark.parametrize("content,reason", [(b"", "empty file (0 bytes)"),
                                            (b"a text file\n", "not a PyTorch checkpoint")])
def test_evaluate_on_a_file_that_is_no_checkpoint(demo_data, tmp_path, content, reason):
    bad = tmp_path / "checkpoint_best.pt"
    bad.write_bytes(content)
    proc = run("ofa_el.tools.evaluate", str(demo_data / "caption_test.tsv"), "--path", str(bad), "--bpe-dir",
               str(demo_data / "bpe"))
    assert_user_error(proc, f"--path {bad}: {reason}")


def test_train_stops_at_a_bad_row_with_file_and_row(demo_data, tmp_path):
    rows = (demo_data / "caption_stage1_train.tsv").read_text().splitlines()
    fields = rows[1].split("\t")
    fields[4] = "not*base64"
    rows[1] = "\t".join(fields)
    bad = tmp_path / "caption_stage1_train.tsv"
    bad.write_text("\n".join(rows) + "\n")
    bpe = str(demo_data / "bpe")
    proc = run("ofa_el.tools.train", f"{bad},{demo_data}/caption_val.tsv", "--bpe-dir", bpe, *TINY)
    assert_user_error(proc, f"{bad}: row 2: image column: invalid base64")
    skipped = run("ofa_el.tools.train", f"{bad},{demo_data}/caption_val.tsv", "--bpe-dir", bpe, *TINY,
                  "--skip-invalid-rows", "--tensorboard-logdir", str(tmp_path / "tb"))
    assert skipped.returncode == 0, skipped.stderr[-3000:]
    assert "tensorboardX" not in skipped.stderr  # installed: no "Please install tensorboardX" at start
    log = skipped.stdout + skipped.stderr
    assert "DEBUG" not in log and "hydra" not in log.lower()  # no third-party debug lines or hydra deprecations
    assert "skipped 1 invalid rows" in log
    assert list((tmp_path / "tb").rglob("events.out.tfevents.*"))  # --tensorboard-logdir works


def test_evaluate_with_a_missing_checkpoint(demo_data, tmp_path):
    proc = run("ofa_el.tools.evaluate", str(demo_data / "caption_test.tsv"), "--path", str(tmp_path / "none.pt"),
               "--bpe-dir", str(demo_data / "bpe"))
    assert_user_error(proc, "file not found", str(tmp_path / "none.pt"))


def test_launcher_with_a_missing_recipe(tmp_path):
    assert_user_error(run("ofa_el.tools.launch", str(tmp_path / "x.yaml")), "recipe not found")


def test_caption_evaluation_needs_java_before_generating(monkeypatch):
    monkeypatch.setattr(evaluate.shutil, "which", lambda name: None)
    with pytest.raises(errors.UserError, match="java not found on PATH"):
        evaluate.require_java()
    monkeypatch.setattr(evaluate.shutil, "which", lambda name: "/usr/bin/java")
    evaluate.require_java()


def raise_here(error):
    raise error


def test_the_type_alone_makes_a_user_error():
    with pytest.raises(ValueError) as option:
        parse_selected_cols("0,x")
    assert isinstance(option.value, errors.OptionError) and errors.is_user_error(option.value)
    with pytest.raises(ValueError) as library:
        json.loads("{")
    assert not errors.is_user_error(library.value)  # raised inside the standard library: a bug, keep the traceback
    with pytest.raises(ValueError) as plugin_bug:
        collate([{"id": 0, "source": torch.tensor([0, 2]), "patch_image": torch.zeros(3, 2, 2),
                  "patch_mask": torch.tensor([True]), "target": torch.tensor([2]),
                  "prev_output_tokens": torch.tensor([0]), "undeclared": 1}], pad_idx=1, eos_idx=2)
    assert not errors.is_user_error(plugin_bug.value)  # a plain ValueError raised by plugin code is a bug too
    assert not errors.is_user_error(FileNotFoundError("x"))  # an OS error nobody checked for: a bug
    assert errors.is_user_error(errors.MissingFileError("--bpe-dir: missing x"))
    assert errors.is_user_error(errors.InvalidDataError("answers column is empty"))
    assert not errors.is_user_error(RuntimeError("x"))


def test_a_value_error_from_a_bug_in_plugin_code_keeps_its_traceback():
    """Run through ``run_cli`` in a fresh interpreter: the plugin's own ValueError (not a user error) prints
    Python's traceback, ending in the plugin frame that raised it, and exits 1 rather than 2."""
    bug = ("from ofa_el.data.ofa_dataset import collate; from ofa_el.tools.errors import run_cli; import torch; "
           "run_cli(lambda: collate([{'id': 0, 'source': torch.tensor([0, 2]), 'patch_image': torch.zeros(3, 2, 2), "
           "'patch_mask': torch.tensor([True]), 'target': torch.tensor([2]), 'prev_output_tokens': torch.tensor([0]), "
           "'undeclared': 1}], 1, 2))")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("OFA_EL_TRACEBACK", None)
    proc = subprocess.run([sys.executable, "-c", bug], capture_output=True, text=True, env=env, timeout=300,
                          cwd=REPO_ROOT)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback (most recent call last)" in proc.stderr and "ofa_dataset.py" in proc.stderr
    assert proc.stderr.rstrip().splitlines()[-1].startswith("ValueError: sample keys ['undeclared'] have no batch name")
    assert not any(line.startswith("error: ") for line in proc.stderr.splitlines())


def test_a_bad_criterion_option_is_one_error_line_from_train(demo_data):
    at = TINY.index("--criterion")
    argv = TINY[:at + 2] + ["--log-end", "0"] + TINY[at + 2:]
    proc = run("ofa_el.tools.train", f"{demo_data}/caption_stage1_train.tsv,{demo_data}/caption_val.tsv", "--bpe-dir",
               str(demo_data / "bpe"), *argv)
    assert_user_error(proc)
    assert [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")] == [
        "error: --log-end: must lie in (0, 1], got 0.0"]


def test_run_cli_exits_2_for_user_errors_and_reraises_bugs(capsys, monkeypatch):
    monkeypatch.delenv("OFA_EL_TRACEBACK", raising=False)
    with pytest.raises(SystemExit) as stop:
        errors.run_cli(lambda: raise_here(errors.UserError("the data is wrong")))
    assert stop.value.code == 2 and capsys.readouterr().err == "error: the data is wrong\n"
    with pytest.raises(KeyError):
        errors.run_cli(lambda: raise_here(KeyError("bug")))
    monkeypatch.setenv("OFA_EL_TRACEBACK", "1")
    with pytest.raises(errors.UserError):
        errors.run_cli(lambda: raise_here(errors.UserError("shown with its traceback")))


def test_user_errors_are_a_typed_family():
    import ofa_el.errors
    from ofa_el.data.tsv import InvalidRowError
    from ofa_el.recipes import RecipeError
    from ofa_el.tools.train import MissingRestoreFileError

    assert errors.UserError is ofa_el.errors.UserError  # the core's classes, which the runner prints
    for kind in (RecipeError, InvalidRowError, errors.OptionError, errors.MissingFileError, errors.InvalidDataError,
                 MissingRestoreFileError):
        assert issubclass(kind, errors.UserError), kind
    row = InvalidRowError("f.tsv", 3, "image column: invalid base64")
    assert errors.is_user_error(row) and str(row) == "f.tsv: row 3: image column: invalid base64"
    assert not errors.is_user_error(ValueError("a plain ValueError"))
    for kind in (errors.OptionError, errors.InvalidDataError, InvalidRowError, RecipeError):
        assert issubclass(kind, ValueError), kind  # existing `except ValueError` callers still catch them
    assert issubclass(errors.MissingFileError, FileNotFoundError)
