"""Stock fairseq drives the plugin: train, log the new metrics, save, resume, generate, hydra."""
import json
import subprocess

import pytest

from conftest import REPO_ROOT, needs_importable_folder, venv_bin
from ofa_el.tools.sequence_demo import binarize, write_reverse_corpus

TINY_TRANSFORMER = [
    "--task", "translation", "--arch", "transformer", "--share-all-embeddings",
    "--encoder-layers", "1", "--decoder-layers", "1", "--encoder-embed-dim", "32", "--decoder-embed-dim", "32",
    "--encoder-ffn-embed-dim", "64", "--decoder-ffn-embed-dim", "64",
    "--encoder-attention-heads", "2", "--decoder-attention-heads", "2",
]
EL_FLAGS = [
    "--criterion", "adjust_label_smoothed_encouraging_loss", "--log-end", "0.75", "--label-smoothing", "0.1",
    "--report-accuracy",
]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("reverse")
    text = write_reverse_corpus(root / "text", sizes={"train": 400, "valid": 40, "test": 20})
    return binarize(text, root / "bin")


def run(cmd, cwd, env, expect_ok=True):
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    output = proc.stdout + proc.stderr
    if expect_ok:
        assert proc.returncode == 0, output[-4000:]
    return output


def json_logs(output, prefix):
    """The JSON records fairseq printed for one logger (train_inner, valid, train)."""
    records = []
    for line in output.splitlines():
        marker = f"| {prefix} | "
        if marker in line:
            records.append(json.loads(line.split(marker, 1)[1]))
    return records


def train_cmd(data_dir, save_dir, max_update):
    return [venv_bin("fairseq-train"), str(data_dir), "--user-dir", str(REPO_ROOT), *TINY_TRANSFORMER, *EL_FLAGS,
            "--optimizer", "adam", "--lr", "3e-3", "--max-tokens", "1000", "--max-update", str(max_update),
            "--save-dir", str(save_dir), "--cpu", "--log-format", "json", "--log-interval", "5",
            "--no-epoch-checkpoints", "--num-workers", "0", "--seed", "1"]


@needs_importable_folder
def test_train_resume_generate(data_dir, tmp_path, subprocess_env):
    save_dir = tmp_path / "ckpt"
    out = run(train_cmd(data_dir, save_dir, 20), tmp_path, subprocess_env)
    valid = json_logs(out, "valid")[-1]
    for key in ("valid_loss", "valid_nll_loss", "valid_ppl", "valid_accuracy", "valid_p_target", "valid_bonus",
                "valid_past_log_end"):
        assert key in valid, valid
    assert float(valid["valid_ppl"]) == pytest.approx(2 ** float(valid["valid_nll_loss"]), rel=0.02)
    assert float(valid["valid_bonus"]) < 0
    inner = json_logs(out, "train_inner")
    assert float(inner[-1]["loss"]) < float(inner[0]["loss"])  # it learns
    assert (save_dir / "checkpoint_last.pt").is_file()

    resumed = run(train_cmd(data_dir, save_dir, 30), tmp_path, subprocess_env)
    assert "Loaded checkpoint" in resumed and "@ 20 updates" in resumed
    assert json_logs(resumed, "train")[-1]["train_num_updates"] == "30"

    generate = [venv_bin("fairseq-generate"), str(data_dir), "--path", str(save_dir / "checkpoint_last.pt"),
                "--gen-subset", "test", "--beam", "2", "--cpu", "--max-tokens", "1000"]
    out = run(generate + ["--user-dir", str(REPO_ROOT)], tmp_path, subprocess_env)
    translated = int(out.split("Translated ", 1)[1].split()[0])
    assert translated >= 16  # stock fairseq rounds batches to --required-batch-size-multiple (8)
    assert sum(line.startswith("H-") for line in out.splitlines()) == translated
    # Without the plugin, torch's weights-only loading refuses the checkpoint: the plugin is what fixes it.
    bare = run(generate, tmp_path, subprocess_env, expect_ok=False)
    assert "argparse.Namespace" in bare or "weights_only" in bare.replace(" ", "_").lower()


@needs_importable_folder
def test_hydra_train_from_config(data_dir, tmp_path, subprocess_env):
    cmd = [venv_bin("fairseq-hydra-train"), "--config-dir", str(REPO_ROOT / "configs" / "reverse_demo"),
           "--config-name", "el", f"task.data={data_dir}", f"common.user_dir={REPO_ROOT}",
           f"checkpoint.save_dir={tmp_path / 'ckpt'}", "optimization.max_update=10", "common.log_interval=5"]
    out = run(cmd, tmp_path, subprocess_env)
    assert '"train_p_target"' in out and '"train_bonus"' in out
    assert (tmp_path / "ckpt" / "checkpoint_last.pt").is_file()


@needs_importable_folder
def test_user_dir_and_installed_package_are_one_plugin():
    """fairseq's user-dir import (under the folder's name) reuses an already imported ofa_el."""
    import argparse
    import sys

    import ofa_el
    from fairseq import utils
    from fairseq.criterions import CRITERION_REGISTRY

    before = dict(CRITERION_REGISTRY)
    utils.import_user_module(argparse.Namespace(user_dir=str(REPO_ROOT)))
    assert sys.modules[REPO_ROOT.name] is ofa_el
    assert dict(CRITERION_REGISTRY) == before


def test_plugin_folder_with_a_dot_in_its_name_loads(tmp_path, monkeypatch):
    """fairseq imports --user-dir as ``import <folder name>``, which fails for ``/tmp/tmp.Ab3``-like clones; the entry
    points' claim_folder_name() makes fairseq find the loaded plugin instead."""
    import argparse
    import sys

    import ofa_el
    from fairseq import utils
    from fairseq.criterions import CRITERION_REGISTRY

    def fake_clone(name):
        folder = tmp_path / name
        folder.mkdir()
        return folder

    unclaimed = fake_clone("clone.a1")
    with pytest.raises(ModuleNotFoundError):  # stock fairseq on such a folder
        utils.import_user_module(argparse.Namespace(user_dir=str(unclaimed)))
    claimed = fake_clone("clone.b2")
    monkeypatch.setattr(ofa_el, "__file__", str(claimed / "__init__.py"))  # as if ofa_el lived in the clone
    monkeypatch.setattr(ofa_el, "__path__", [str(claimed)])
    monkeypatch.delitem(sys.modules, "clone.b2", raising=False)
    before = dict(CRITERION_REGISTRY)
    ofa_el.claim_folder_name()
    utils.import_user_module(argparse.Namespace(user_dir=str(claimed)))
    assert sys.modules["clone.b2"] is ofa_el and dict(CRITERION_REGISTRY) == before


@needs_importable_folder
def test_token_dropping_under_a_task_without_update_num_is_an_error(data_dir, tmp_path, subprocess_env):
    """Stock fairseq tasks call criterion(model, sample): --drop-*-after cannot be counted there, so asking for
    dropping stops at the first update instead of silently training without it."""
    cmd = train_cmd(data_dir, tmp_path / "ckpt", 2) + ["--drop-best-ratio", "0.05"]
    out = run(cmd, tmp_path, subprocess_env, expect_ok=False)
    assert "--drop-worst-ratio/--drop-best-ratio: the task called the criterion without update_num" in out
