"""Checks before any process starts: data, BPE, checkpoint files and save dirs; a rerun with other
hyper-parameters into a save dir that holds checkpoint_last.pt stops instead of silently resuming."""
import subprocess

import pytest
import torch

from ofa_el.preflight import check_bpe_dir, check_checkpoint_file, check_launch, check_save_dir, training_config
from ofa_el.recipes import load_recipe
from ofa_el.tools import launch
from ofa_el.tools.errors import UserError


@pytest.fixture
def files(tmp_path):
    """Data, a BPE folder (its files' content does not matter to the checks) and a pretrained file."""
    (tmp_path / "train.tsv").write_text("x\n")
    (tmp_path / "val.tsv").write_text("x\n")
    bpe = tmp_path / "bpe"
    bpe.mkdir()
    for name in ("encoder.json", "vocab.bpe", "dict.txt"):
        (bpe / name).write_text("x")
    torch.save({"model": {}}, tmp_path / "pretrained.pt")
    return tmp_path


def train_argv(files, *extra):
    return [f"{files}/train.tsv,{files}/val.tsv", "--task=caption", "--arch=ofa_tiny", f"--bpe-dir={files}/bpe",
            "--batch-size=2", "--criterion=adjust_label_smoothed_encouraging_loss", "--log-end=0.75",
            "--optimizer=adam", "--lr=1e-4", "--max-update=10", f"--save-dir={files}/save",
            f"--restore-file={files}/pretrained.pt", "--reset-optimizer", "--cpu", *extra]


def test_a_complete_command_passes(files):
    check_launch("train", train_argv(files))


@pytest.mark.parametrize("broken,message", [
    (lambda f: (f / "val.tsv").unlink(), "data file not found: {f}/val.tsv (DATA_DIR sets"),
    (lambda f: (f / "bpe" / "vocab.bpe").unlink(), "--bpe-dir {f}/bpe: vocab.bpe missing"),
    (lambda f: (f / "pretrained.pt").unlink(), "--restore-file {f}/pretrained.pt: no such file (RESTORE_FILE sets"),
    (lambda f: (f / "save").write_text("a file"), "--save-dir {f}/save: a file, not a folder"),
])
def test_each_missing_piece_is_named(files, broken, message):
    broken(files)
    with pytest.raises(UserError) as err:
        check_launch("train", train_argv(files))
    assert message.format(f=files) in str(err.value)


def test_bpe_folder_that_is_not_there(tmp_path):
    with pytest.raises(UserError, match=f"--bpe-dir {tmp_path}/utils/BPE: no such folder .*OFA's utils/BPE"):
        check_bpe_dir(str(tmp_path / "utils" / "BPE"))


def test_checkpoint_files_that_torch_cannot_read(tmp_path):
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "notes.pt").write_text("not a checkpoint\n")
    torch.save({"x": torch.zeros(3)}, tmp_path / "real.pt")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "real.pt").read_bytes()[:200])
    check_checkpoint_file(str(tmp_path / "real.pt"), "--path")
    for name, reason in (("empty.pt", "empty file"), ("notes.pt", "not a PyTorch checkpoint"),
                         ("cut.pt", "a cut-off checkpoint"), ("gone.pt", "no such file")):
        with pytest.raises(UserError, match=f"--path {tmp_path}/{name}: {reason}"):
            check_checkpoint_file(str(tmp_path / name), "--path")
    with pytest.raises(UserError, match="a folder, not a checkpoint file"):
        check_checkpoint_file(str(tmp_path), "--path")


def test_save_dir_that_cannot_be_made(tmp_path):
    (tmp_path / "notes.txt").write_text("a file where a folder should be")
    with pytest.raises(UserError, match=f"--save-dir {tmp_path}/notes.txt/run: cannot be created"):
        check_save_dir(str(tmp_path / "notes.txt" / "run"))
    check_save_dir(str(tmp_path / "new" / "save"))  # a folder that can be made is fine
    assert not (tmp_path / "new").exists()  # and the check makes nothing


def test_the_demos_missing_start_model_says_which_make_target_trains_it(files):
    (files / "pretrained.pt").unlink()
    with pytest.raises(UserError, match="`make demo-all`"):
        check_launch("train", train_argv(files), demo=True)
    (files / "train.tsv").unlink()
    with pytest.raises(UserError, match="train.tsv .the demo data: `make demo` writes it"):
        check_launch("train", train_argv(files), demo=True)


def test_evaluate_needs_a_readable_checkpoint(files):
    (files / "best.pt").write_bytes(b"")
    argv = [f"{files}/val.tsv", f"--path={files}/best.pt", f"--bpe-dir={files}/bpe"]
    with pytest.raises(UserError, match="--path .*best.pt: empty file"):
        check_launch("evaluate", argv)
    (files / "best.pt").unlink()
    with pytest.raises(UserError, match="--path .*best.pt: no such file .CHECKPOINT sets it"):
        check_launch("evaluate", argv)


# -- a save dir that already holds checkpoint_last.pt --------------------------------------------------

def save_last_checkpoint(files, argv, world_size=1):
    """checkpoint_last.pt as fairseq writes it for ``argv``: its training config beside (here empty) weights."""
    cfg = training_config(argv)
    cfg["distributed_training"]["distributed_world_size"] = world_size
    (files / "save").mkdir(exist_ok=True)
    torch.save({"cfg": cfg, "model": {}, "args": None}, files / "save" / "checkpoint_last.pt")


def test_resuming_the_same_command_just_works(files):
    save_last_checkpoint(files, train_argv(files))
    check_launch("train", train_argv(files))
    (files / "pretrained.pt").unlink()  # on resume the pretrained file is no longer read
    check_launch("train", train_argv(files))


def test_flags_of_the_first_launch_only_do_not_count(files):
    save_last_checkpoint(files, train_argv(files, "--reset-dataloader", "--reset-meters", "--num-workers=2",
                                           "--log-interval=7"))
    check_launch("train", train_argv(files, f"--restore-file={files}/other.pt"))


def test_other_hyper_parameters_stop_with_the_differences_and_both_ways_on(files):
    save_last_checkpoint(files, train_argv(files))
    with pytest.raises(UserError) as err:
        check_launch("train", train_argv(files, "--log-end=0.5", "--lr=3e-4"))
    message = str(err.value)
    assert f"{files}/save/checkpoint_last.pt was trained with other hyper-parameters" in message
    assert "--log-end 0.75 -> 0.5" in message and "--lr 0.0001 -> 0.0003" in message
    assert "SAVE_DIR=" in message and "--resume" in message
    check_launch("train", train_argv(files, "--log-end=0.5"), resume=True)


def test_the_samples_per_update_count_not_the_process_layout(files):
    save_last_checkpoint(files, train_argv(files, "--update-freq=4"), world_size=2)
    check_launch("train", train_argv(files, "--update-freq=2"), processes=4)  # 2 x 4 x 2 = 2 x 2 x 4
    with pytest.raises(UserError, match=r"samples per update .* 16 -> 8"):
        check_launch("train", train_argv(files, "--update-freq=4"), processes=1)


def test_the_launcher_checks_before_any_process_starts(files, capsys, monkeypatch):
    recipe = files / "r.yaml"
    recipe.write_text(f"entry: train\nenv: {{DATA_DIR: {files}}}\ndata: ['${{DATA_DIR}}/train.tsv', "
                      f"'${{DATA_DIR}}/val.tsv']\nargs: {{task: caption, arch: ofa_tiny, bpe-dir: {files}/bpe, "
                      f"batch-size: 2, save-dir: {files}/save, cpu: true}}\n")
    monkeypatch.setattr(subprocess, "call", lambda cmd: pytest.fail("a process started"))
    monkeypatch.setenv("DATA_DIR", "/nowhere")
    assert launch.main([str(recipe)]) == 2
    assert capsys.readouterr().err == ("error: data file not found: /nowhere/train.tsv (DATA_DIR sets the data "
                                       "folder; OFA's TSV files: README.md, 'Data: OFA's TSV files')\n")
    monkeypatch.delenv("DATA_DIR")
    save_last_checkpoint(files, launch.entry_arguments(
        launch.command(load_recipe(recipe), {}, [], gpus=0), "train"))
    assert launch.main([str(recipe), "--lr=0.5"]) == 2
    assert "--lr 0.25 -> 0.5" in capsys.readouterr().err  # fairseq's default --lr in the first run
    started = []
    monkeypatch.setattr(subprocess, "call", lambda cmd: started.append(cmd) or 0)
    assert launch.main([str(recipe)]) == 0 and len(started) == 1
    assert launch.main([str(recipe), "--lr=0.5", "--resume"]) == 0 and "--resume" not in started[-1]


def test_the_resume_check_parses_in_a_clone_whose_folder_name_has_a_dot(files, tmp_path, monkeypatch):
    """fairseq imports ``--user-dir`` by its folder name, which fails for a clone in ``/tmp/tmp.Ab3x``; the resume
    check parses the command in the launcher's own process, so the flag that names the folder also claims it."""
    import sys

    import ofa_el
    from ofa_el import flags

    clone = tmp_path / "clone.d4"
    clone.mkdir()
    monkeypatch.setattr(ofa_el, "__file__", str(clone / "__init__.py"))  # as if ofa_el lived in the clone
    monkeypatch.setattr(ofa_el, "__path__", [str(clone)])
    monkeypatch.setattr(flags, "PACKAGE_DIR", str(clone))
    monkeypatch.setitem(sys.modules, "clone.d4", None)
    del sys.modules["clone.d4"]  # absent during the test, removed again afterwards
    cfg = training_config(train_argv(files))
    assert cfg["common"]["user_dir"] == str(clone) and sys.modules["clone.d4"] is ofa_el
