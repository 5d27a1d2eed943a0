"""The shared launcher: recipe inheritance, demo overrides, env expansion, process layout, errors."""
import sys

import pytest

from ofa_el.recipes import REPO_ROOT, RecipeError, derived_update_freq, load_recipe
from ofa_el.tools.launch import augmentation_line, command, main


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
    gpus = command(load_recipe(recipes / "el.yaml"), {}, [], gpus=3)
    assert "--nproc_per_node=3" in gpus


def test_every_visible_gpu_by_default(recipes, monkeypatch, capsys):
    """torch.cuda.device_count() (which honours CUDA_VISIBLE_DEVICES) processes; one with --cpu or in the demo."""
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    monkeypatch.setattr("torch.cuda.device_count", lambda: 8)
    monkeypatch.delenv("NPROC_PER_NODE", raising=False)
    monkeypatch.delenv("DEMO", raising=False)
    recipe = load_recipe(recipes / "el.yaml")
    assert "--nproc_per_node=8" in command(recipe, {}, [])
    assert "--nproc_per_node=2" in command(recipe, {"NPROC_PER_NODE": "2"}, [])
    assert command(recipe, {}, ["--cpu"])[1:3] == ["-m", "ofa_el.tools.train"]
    assert command(dict(recipe, args=dict(recipe["args"], cpu=True)), {}, [])[1:3] == ["-m", "ofa_el.tools.train"]
    assert main([str(recipes / "el.yaml"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "processes: 8, one per visible GPU (8;" in out and "global batch: 8 process(es)" in out
    monkeypatch.setattr("torch.cuda.device_count", lambda: 0)
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert main([str(recipes / "el.yaml"), "--dry-run", "--cpu"]) == 0
    assert "processes: 1, no GPU in use" in capsys.readouterr().out


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


# -- which Python runs a recipe ----------------------------------------------------------------

import os  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402

from ofa_el import recipes as recipes_module  # noqa: E402


def fake_python(folder, name):
    """A ``bin/python`` that only says who it is, with the arguments it got."""
    script = folder / "bin" / "python"
    script.parent.mkdir(parents=True)
    script.write_text(f"#!/bin/sh\necho \"{name} $*\"\n")
    script.chmod(0o755)
    return folder


@pytest.fixture
def script_copy(tmp_path):
    """run_scripts/launch.sh in a repository of its own, with a .venv whose python is a fake."""
    repo = tmp_path / "repo"
    (repo / "run_scripts").mkdir(parents=True)
    shutil.copy(REPO_ROOT / "run_scripts" / "launch.sh", repo / "run_scripts" / "launch.sh")
    fake_python(repo / ".venv", "repo-venv")
    return repo


@pytest.mark.parametrize("given,expected", [
    ({}, "repo-venv"),
    ({"CONDA_PREFIX": "conda"}, "conda"),
    ({"VIRTUAL_ENV": "virtualenv", "CONDA_PREFIX": "conda"}, "virtualenv"),
    ({"PYTHON": "explicit", "VIRTUAL_ENV": "virtualenv", "CONDA_PREFIX": "conda"}, "explicit"),
])
def test_scripts_take_the_users_python_first(script_copy, tmp_path, given, expected):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHON", "VIRTUAL_ENV", "CONDA_PREFIX")}
    for variable, name in given.items():
        folder = fake_python(tmp_path / name, name)
        env[variable] = str(folder / "bin" / "python") if variable == "PYTHON" else str(folder)
    out = subprocess.run(["sh", str(script_copy / "run_scripts" / "launch.sh"), "caption/x.yaml", "--seed=3"],
                         env=env, capture_output=True, text=True, check=True).stdout
    assert out.split()[0] == expected
    assert out.split()[1:] == ["-m", "ofa_el.tools.launch", f"{script_copy}/configs/caption/x.yaml", "--seed=3"]


def test_a_virtualenv_without_python_falls_through(script_copy, tmp_path):
    env = dict(os.environ, VIRTUAL_ENV=str(tmp_path / "gone"))
    env.pop("PYTHON", None)
    env.pop("CONDA_PREFIX", None)
    out = subprocess.run(["sh", str(script_copy / "run_scripts" / "launch.sh"), "r.yaml"], env=env,
                         capture_output=True, text=True, check=True).stdout
    assert out.startswith("repo-venv ")


def test_start_line_names_python_torch_fairseq_and_the_plugin(recipes, capsys, monkeypatch):
    monkeypatch.setenv("DEMO", "1")
    assert main([str(recipes / "el.yaml"), "--dry-run"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    import torch

    assert first.startswith(f"ofa_el: python {sys.executable}") and f"torch {torch.__version__}" in first
    assert "CUDA" in first and "fairseq 0.12" in first and f"ofa_el from {REPO_ROOT}" in first


# -- fp16 needs CUDA ---------------------------------------------------------------------------

def test_fp16_recipe_without_cuda_stops_with_the_fixes(recipes, capsys, monkeypatch):
    monkeypatch.delenv("DEMO", raising=False)
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert main([str(recipes / "el.yaml"), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--fp16" in err and "CUDA" in err
    assert "DEMO=1" in err and "PYTHON=" in err and "Traceback" not in err


def test_memory_efficient_fp16_recipe_without_cuda_stops_too(tmp_path, capsys, monkeypatch):
    (tmp_path / "stage2.yaml").write_text("entry: train\nargs: {arch: ofa_large, memory-efficient-fp16: true}\n")
    monkeypatch.delenv("DEMO", raising=False)
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert main([str(tmp_path / "stage2.yaml"), "--dry-run"]) == 2
    assert "--memory-efficient-fp16, which needs a CUDA GPU" in capsys.readouterr().err
    assert main([str(tmp_path / "stage2.yaml"), "--dry-run", "--cpu"]) == 0
    assert "--memory-efficient-fp16" not in capsys.readouterr().out.splitlines()[-1].split()


def test_explicit_cpu_runs_a_gpu_recipe_without_fp16(recipes, capsys, monkeypatch):
    monkeypatch.delenv("DEMO", raising=False)
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert main([str(recipes / "el.yaml"), "--dry-run", "--cpu"]) == 0
    command_line = capsys.readouterr().out.splitlines()[-1]
    assert "--cpu" in command_line and "--fp16" not in command_line.split()


# -- torchrun on one node ------------------------------------------------------------------------

def test_one_node_uses_a_standalone_rendezvous_unless_told_where(recipes):
    recipe = load_recipe(recipes / "el.yaml")
    alone = command(recipe, {"NPROC_PER_NODE": "2"}, [])
    assert "--standalone" in alone and not any(a.startswith("--master_") for a in alone)
    pinned = command(recipe, {"NPROC_PER_NODE": "2", "MASTER_PORT": "29611"}, [])
    assert "--standalone" not in pinned and "--master_port=29611" in pinned and "--master_addr=127.0.0.1" in pinned


# -- OFA's global batch whatever the process count ------------------------------------------------

def update_freq_of(cmd):
    return [a for a in cmd if a.startswith("--update-freq")]


@pytest.fixture
def global_batch_recipe(tmp_path):
    path = tmp_path / "gb.yaml"
    path.write_text("entry: train\nglobal_batch_size: 128\nargs: {batch-size: 8, update-freq: 4}\n"
                    "demo: {global_batch_size: null, args: {batch-size: 32, update-freq: 1}}\n")
    return path


@pytest.mark.parametrize("processes,extra,expected", [
    (1, [], "--update-freq=16"),
    (4, [], "--update-freq=4"),            # OFA's 4 GPUs: OFA's own value
    (8, [], "--update-freq=2"),
    (4, ["--batch-size", "16"], "--update-freq=2"),
    (16, ["--batch-size=8"], "--update-freq=1"),
])
def test_update_freq_keeps_the_global_batch(global_batch_recipe, processes, extra, expected, capsys, monkeypatch):
    env = {"NPROC_PER_NODE": str(processes)}
    cmd = command(load_recipe(global_batch_recipe), env, extra)
    assert update_freq_of(cmd) == [expected]
    monkeypatch.setattr(os, "environ", dict(os.environ, **env))
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    assert main([str(global_batch_recipe), "--dry-run", *extra]) == 0
    assert "= 128 samples per update" in capsys.readouterr().out


def test_update_freq_given_by_the_user_wins(global_batch_recipe, capsys, monkeypatch):
    cmd = command(load_recipe(global_batch_recipe), {"NPROC_PER_NODE": "2"}, ["--update-freq", "3"])
    assert update_freq_of(cmd) == ["--update-freq=4", "--update-freq"]  # the recipe's, then the user's (last wins)
    monkeypatch.setattr(os, "environ", dict(os.environ, NPROC_PER_NODE="2"))
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    assert main([str(global_batch_recipe), "--dry-run", "--update-freq", "3"]) == 0
    assert "2 process(es) x batch 8 x update-freq 3 = 48 samples per update" in capsys.readouterr().out


def test_a_global_batch_the_processes_cannot_share_is_an_error(global_batch_recipe):
    with pytest.raises(RecipeError, match="128 samples cannot be split into 3 process"):
        command(load_recipe(global_batch_recipe), {"NPROC_PER_NODE": "3"}, [])


def test_demo_keeps_its_update_freq(global_batch_recipe):
    cmd = command(load_recipe(global_batch_recipe, demo=True), {"NPROC_PER_NODE": "2"}, [])
    assert update_freq_of(cmd) == ["--update-freq=1"]


def test_published_recipes_state_ofas_global_batch():
    for name in ("caption/stage1_ce.yaml", "caption/stage1_el.yaml", "refcoco/refcoco_el.yaml",
                 "refcoco/refcocog_ce.yaml"):
        recipe = load_recipe(REPO_ROOT / "configs" / name)
        args = recipe["args"]
        # OFA: 4 GPUs
        assert recipe["global_batch_size"] == 128 == 4 * args["batch-size"] * derived_update_freq(recipe, [], 4)
        assert args["keep-interval-updates"] == 1
        assert load_recipe(REPO_ROOT / "configs" / name, demo=True)["global_batch_size"] is None


# -- where relative defaults point ----------------------------------------------------------------

def test_relative_defaults_follow_the_clone_or_the_current_directory(recipes, tmp_path, monkeypatch):
    recipe = load_recipe(recipes / "el.yaml")
    assert command(recipe, {}, [])[3].startswith(f"{REPO_ROOT}/../data/")  # a clone: the repository
    installed = tmp_path / "site-packages" / "ofa_el"
    installed.mkdir(parents=True)
    monkeypatch.setattr(recipes_module, "REPO_ROOT", installed)  # an installed package: no setup.py beside it
    monkeypatch.chdir(tmp_path)
    assert command(recipe, {}, [])[3] == f"{tmp_path}/../data/train.tsv,{tmp_path}/../data/val.tsv"


def test_recipe_names_resolve_in_the_packaged_configs(monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DEMO", "1")
    assert main(["caption/stage1_el.yaml", "--dry-run"]) == 0
    assert "--criterion=adjust_label_smoothed_encouraging_loss" in capsys.readouterr().out


def test_defaults_may_use_other_variables_and_loops_are_errors(tmp_path):
    (tmp_path / "r.yaml").write_text("entry: evaluate\nenv: {DATA_DIR: 'dataset/${SET}_data', A: '${B}', B: '${A}'}\n"
                                     "data: ['${DATA_DIR}/${SET}_val.tsv']\nargs: {x: '${A}'}\n")
    recipe = load_recipe(tmp_path / "r.yaml")
    with pytest.raises(RecipeError, match="refers to itself"):
        command(recipe, {"SET": "refcocog"}, [])
    recipe["args"] = {}
    assert command(recipe, {"SET": "refcocog"}, [])[3] == f"{REPO_ROOT}/dataset/refcocog_data/refcocog_val.tsv"


# -- OFA's layout and per-set defaults -------------------------------------------------------------

@pytest.mark.parametrize("set_name,splits", [("refcoco", ["val", "testA", "testB"]),
                                             ("refcocoplus", ["val", "testA", "testB"]),
                                             ("refcocog", ["val", "test"])])
def test_evaluate_refcoco_defaults_follow_the_set(set_name, splits):
    env = {k: v for k, v in os.environ.items() if k not in ("DEMO", "DATA_DIR", "CHECKPOINT", "RESULTS_DIR")}
    env.update(SET=set_name, PYTHON=sys.executable)
    proc = subprocess.run(["sh", str(REPO_ROOT / "run_scripts/refcoco/evaluate_refcoco.sh"), "--dry-run"], env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    cmd = proc.stdout.splitlines()[-1].split()[1:]  # after the "+ "
    data = REPO_ROOT / "dataset" / f"{set_name}_data"
    assert cmd[3] == ",".join(f"{data}/{set_name}_{split}.tsv" for split in splits)
    assert f"--path={REPO_ROOT}/checkpoints/{set_name}_el/checkpoint_best.pt" in cmd
    assert f"--results-path={REPO_ROOT}/results/{set_name}" in cmd


def test_evaluate_refcoco_refuses_an_unknown_set():
    proc = subprocess.run(["sh", str(REPO_ROOT / "run_scripts/refcoco/evaluate_refcoco.sh")],
                          env=dict(os.environ, SET="refclef", PYTHON=sys.executable), capture_output=True, text=True)
    assert proc.returncode == 2 and "SET must be refcoco, refcocoplus or refcocog" in proc.stderr


@pytest.mark.parametrize("name", ["refcocoplus_ce", "refcocoplus_el", "refcocog_ce", "refcocog_el"])
def test_grounding_recipes_read_ofas_per_set_folders(name):
    set_name = name.split("_")[0]
    cmd = command(load_recipe(REPO_ROOT / "configs" / "refcoco" / f"{name}.yaml"), {}, [])
    data = REPO_ROOT / "dataset" / f"{set_name}_data"
    assert cmd[3] == f"{data}/{set_name}_train.tsv,{data}/{set_name}_val.tsv"
    demo = command(load_recipe(REPO_ROOT / "configs" / "refcoco" / f"{name}.yaml", demo=True), {}, [])
    assert demo[3].startswith(f"{REPO_ROOT}/demo/data/{set_name}_train.tsv")


def test_augmentation_line_says_when_training_images_are_not_augmented():
    assert augmentation_line(["--train-augmentation", "none"]) == "image augmentation: none (--train-augmentation none)"
    assert augmentation_line(["--train-augmentation=none", "--augmentation-backend", "pil",
                              "--train-augmentation", "ofa"]) == "image augmentation (pil): pil"
