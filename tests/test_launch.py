"""The shared launcher: recipe inheritance, demo overrides, env expansion, process layout, errors."""
import sys

import pytest

from ofa_el.tools.launch import REPO_ROOT, RecipeError, command, load_recipe, main


@pytest.fixture
def recipes(tmp_path):
    (tmp_path / "base.yaml").write_text(
        "entry: train\n"
        "env: {DATA_DIR: ../data, SAVE_DIR: ./ckpt}\n"
        "data: ['${DATA_DIR}/train.tsv', '${DATA_DIR}/val.tsv']\n"
        "args: {arch: ofa_large, lr: 1.0e-5, fp16: true, drop-worst-ratio: 0.2, save-dir: '${SAVE_DIR}'}\n"
        "demo: {env: {DATA_DIR: demo/data}, args: {arch: ofa_demo, fp16: null}}\n")
    (tmp_path / "el.yaml").write_text(
        "extends: base.yaml\n"
        "args: {criterion: adjust_label_smoothed_encouraging_loss, log-end: 0.75, drop-worst-ratio: 0.05}\n")
    return tmp_path


def test_extends_and_env_expansion(recipes):
    cmd = command(load_recipe(recipes / "el.yaml"), {"SAVE_DIR": "/runs/x"}, ["--seed=3"])
    assert cmd[:3] == [sys.executable, "-m", "ofa_el.tools.train"]
    # relative env defaults are relative to the repository root
    assert cmd[3] == f"{REPO_ROOT}/../data/train.tsv,{REPO_ROOT}/../data/val.tsv"
    args = cmd[4:]
    assert "--arch=ofa_large" in args and "--fp16" in args and "--log-end=0.75" in args
    assert "--drop-worst-ratio=0.05" in args and "--drop-worst-ratio=0.2" not in args  # the child wins
    assert "--save-dir=/runs/x" in args  # the environment wins over env defaults (and is taken as given)
    assert args[-1] == "--seed=3"  # extra arguments come last, so they override


def test_demo_overrides(recipes):
    cmd = command(load_recipe(recipes / "el.yaml", demo=True), {}, [])
    assert cmd[3] == f"{REPO_ROOT}/demo/data/train.tsv,{REPO_ROOT}/demo/data/val.tsv"
    assert "--arch=ofa_demo" in cmd and "--fp16" not in cmd and "--log-end=0.75" in cmd


def test_torchrun_layout(recipes):
    env = {"NPROC_PER_NODE": "4", "NNODES": "2", "NODE_RANK": "1", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "6000"}
    cmd = command(load_recipe(recipes / "el.yaml"), env, [])
    assert cmd[1:3] == ["-m", "torch.distributed.run"]
    for expected in ("--nnodes=2", "--node_rank=1", "--nproc_per_node=4", "--master_addr=10.0.0.1",
                     "--master_port=6000"):
        assert expected in cmd
    gpus = command(load_recipe(recipes / "el.yaml"), {"CUDA_VISIBLE_DEVICES": "0,1,2"}, [])
    assert "--nproc_per_node=3" in gpus


def test_errors_name_the_file_and_problem(recipes, tmp_path, capsys):
    (tmp_path / "bad.yaml").write_text("args: {x: '${NOT_SET}'}\n")
    with pytest.raises(RecipeError, match="NOT_SET"):
        command(load_recipe(tmp_path / "bad.yaml"), {}, [], where="bad.yaml")
    (tmp_path / "typo.yaml").write_text("argz: {}\n")
    with pytest.raises(RecipeError, match="typo.yaml.*unknown keys"):
        load_recipe(tmp_path / "typo.yaml")
    assert main([str(tmp_path / "missing.yaml")]) == 2
    assert "recipe not found" in capsys.readouterr().err


def test_dry_run_prints_the_command(recipes, capsys, monkeypatch):
    monkeypatch.setenv("DEMO", "1")
    assert main([str(recipes / "el.yaml"), "--dry-run"]) == 0
    assert "--arch=ofa_demo" in capsys.readouterr().out


# -- the training entry point: resume instead of restoring the pretrained file again ----------

from ofa_el.tools.train import MissingRestoreFileError, resume_or_restore  # noqa: E402

FINETUNE = ["data.tsv", "--restore-file", "PRETRAINED", "--reset-optimizer", "--reset-dataloader",
            "--reset-meters", "--lr=1e-5"]


def finetune_argv(tmp_path):
    pretrained = tmp_path / "ofa_tiny.pt"
    pretrained.write_bytes(b"x")
    save = tmp_path / "save"
    argv = [str(pretrained) if a == "PRETRAINED" else a for a in FINETUNE] + [f"--save-dir={save}"]
    return argv, save


def test_first_launch_restores_the_pretrained_file(tmp_path):
    argv, _ = finetune_argv(tmp_path)
    assert resume_or_restore(argv, log=pytest.fail) == argv


def test_restart_resumes_from_checkpoint_last(tmp_path):
    argv, save = finetune_argv(tmp_path)
    save.mkdir()
    (save / "checkpoint_last.pt").write_bytes(b"x")
    messages = []
    resumed = resume_or_restore(argv, log=messages.append)
    assert resumed == ["data.tsv", "--lr=1e-5", f"--save-dir={save}"]
    assert "resuming" in messages[0] and str(save / "checkpoint_last.pt") in messages[0]


def test_missing_restore_file_is_an_error_not_a_fresh_start(tmp_path):
    missing = tmp_path / "nowhere" / "ofa_large.pt"
    with pytest.raises(MissingRestoreFileError, match=str(missing)):
        resume_or_restore(["d.tsv", f"--restore-file={missing}", "--save-dir", str(tmp_path)])


def test_default_restore_file_is_left_to_fairseq(tmp_path):
    argv = ["d.tsv", "--restore-file", "checkpoint_last.pt", "--save-dir", str(tmp_path)]
    assert resume_or_restore(argv, log=pytest.fail) == argv
    assert resume_or_restore(["d.tsv"], log=pytest.fail) == ["d.tsv"]
