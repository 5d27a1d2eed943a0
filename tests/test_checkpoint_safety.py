"""Weights-only checkpoint loading with a minimal allow-list, and a clear refusal otherwise."""
import argparse
import fractions
import hashlib
import json
import os
import pickle
import pickletools
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from fairseq import checkpoint_utils

import ofa_el  # noqa: F401  (installs the guarded loader)
from conftest import REPO_ROOT, TINY_MODEL, tsv_rows
from ofa_el.checkpoint_safety import TRUSTED_ENV, UntrustedCheckpointError, guard_loader


def fairseq_like_state(**extra):
    state = {
        "args": None,
        "cfg": {"model": argparse.Namespace(arch="transformer", dropout=0.1), "common": {"seed": 1}},
        "model": {"w": torch.ones(2)},
        "extra_state": {"best": np.float64(1.25), "val_loss": 3.0},
        "optimizer_history": [{"num_updates": 5}],
    }
    state.update(extra)
    return state


def test_fairseq_checkpoint_types_load_weights_only(tmp_path):
    path = tmp_path / "ok.pt"
    torch.save(fairseq_like_state(), path)
    state = torch.load(path, weights_only=True)
    assert state["cfg"]["model"].arch == "transformer"
    assert state["extra_state"]["best"] == 1.25


def test_foreign_object_is_refused_with_its_name(tmp_path, monkeypatch):
    monkeypatch.delenv(TRUSTED_ENV, raising=False)
    path = tmp_path / "evil.pt"
    torch.save(fairseq_like_state(payload=fractions.Fraction(1, 3)), path)
    with pytest.raises(UntrustedCheckpointError) as err:
        checkpoint_utils.load_checkpoint_to_cpu(str(path))
    message = str(err.value)
    assert "fractions.Fraction" in message and str(path) in message and TRUSTED_ENV in message


def test_trusted_file_loads_with_its_extra_types(tmp_path, monkeypatch):
    path = tmp_path / "trusted.pt"
    torch.save(fairseq_like_state(payload=fractions.Fraction(1, 3)), path)
    monkeypatch.setenv(TRUSTED_ENV, str(path))
    load = guard_loader(torch.load)
    assert load(str(path))["payload"] == fractions.Fraction(1, 3)
    other = tmp_path / "other.pt"
    torch.save(fairseq_like_state(payload=fractions.Fraction(2, 3)), other)
    with pytest.raises(UntrustedCheckpointError):  # trust is per file
        load(str(other))
    with pytest.raises(pickle.UnpicklingError):  # and only for that load: the global allow-list is unchanged
        torch.load(path, weights_only=True)


def test_protection_stays_on_globally():
    """The allow-list is extended, not switched off: plain torch.load still refuses foreign objects."""
    import io
    buffer = io.BytesIO()
    torch.save({"x": fractions.Fraction(1, 2)}, buffer)
    buffer.seek(0)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(buffer)


def test_checkpoint_copies_are_atomic(tmp_path, monkeypatch):
    """fairseq copies checkpoint_last/best from the first file; a crash mid-copy must not truncate them."""
    from fairseq.file_io import PathManager

    src, dst = tmp_path / "checkpoint1.pt", tmp_path / "checkpoint_last.pt"
    src.write_bytes(b"new" * 1000)
    dst.write_bytes(b"old complete checkpoint")
    real_copyfile = __import__("shutil").copyfile

    def crash_midway(a, b):
        with open(b, "wb") as handle:
            handle.write(b"ne")  # a partial write, then the process dies
        raise KeyboardInterrupt

    monkeypatch.setattr("shutil.copyfile", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        PathManager.copy(str(src), str(dst), overwrite=True)
    assert dst.read_bytes() == b"old complete checkpoint"  # the old file is intact
    monkeypatch.setattr("shutil.copyfile", real_copyfile)
    assert PathManager.copy(str(src), str(dst), overwrite=True)
    assert dst.read_bytes() == b"new" * 1000


# ------------------------------------------------------------------ checkpoints written by OFA's own training
# tests/fixtures/ofa_caption_ckpt (see its PROVENANCE.md): OFA's train.py under numpy 1.26, a caption stage-1
# checkpoint selected by CIDEr (numpy.float64 values, pickled as numpy.core.multiarray.scalar) and the loss-selected
# checkpoint it was restored from; both store OFA's relative paths (../../utils/BPE, ../../dataset/...).
OFA_FIXTURE = Path(__file__).resolve().parent / "fixtures" / "ofa_caption_ckpt"
OFA_MANIFEST = json.loads((OFA_FIXTURE / "manifest.json").read_text())
CAPTION_CKPT, PRETRAIN_CKPT = "caption_stage1_best.pt", "ofa_tiny_pretrain_style.pt"
#: numpy 1 beside the venv (pip install --target), kept between runs
NUMPY1_DIR = Path.home() / ".cache" / "ofa-el" / "numpy126"
NUMPY1 = "numpy==1.26.*"


@pytest.fixture(scope="module")
def ofa_checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ofa_ckpt")
    with tarfile.open(OFA_FIXTURE / "checkpoints.tar.xz") as archive:
        archive.extractall(folder, filter="data")
    for name, info in OFA_MANIFEST["checkpoints"].items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == info["sha256"], name
    return {name: folder / name for name in (CAPTION_CKPT, PRETRAIN_CKPT)}


@pytest.fixture(scope="module")
def numpy1_path():
    """A PYTHONPATH with numpy 1.26 first (installed once into NUMPY1_DIR), then the test interpreter's own."""
    if not (NUMPY1_DIR / "numpy" / "__init__.py").is_file():
        proc = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target",
                               str(NUMPY1_DIR), NUMPY1], capture_output=True, text=True)
        assert proc.returncode == 0, f"pip install --target {NUMPY1_DIR} {NUMPY1} failed:\n{proc.stderr[-3000:]}"
    return os.pathsep.join([str(NUMPY1_DIR), *filter(None, [os.environ.get("PYTHONPATH")])])


def pickled_globals(path: Path) -> set:
    """Every ``module.name`` a torch checkpoint's pickle refers to (torch writes protocol 2: GLOBAL opcodes)."""
    with zipfile.ZipFile(path) as archive:
        data = archive.read(next(n for n in archive.namelist() if n.endswith("/data.pkl")))
    return {arg.replace(" ", ".") for op, arg, _ in pickletools.genops(data) if op.name == "GLOBAL"}


def test_ofa_fixture_holds_numpy1_names(ofa_checkpoints):
    """What makes it a test of OFA's files: the CIDEr-selected one names numpy 1's module, the other no numpy."""
    caption, pretrain = (pickled_globals(ofa_checkpoints[name]) for name in (CAPTION_CKPT, PRETRAIN_CKPT))
    assert {"argparse.Namespace", "numpy.core.multiarray.scalar", "numpy.dtype"} <= caption
    assert "argparse.Namespace" in pretrain and not any(name.startswith("numpy") for name in pretrain)


def test_ofa_checkpoints_load_without_trust(ofa_checkpoints, monkeypatch):
    monkeypatch.delenv(TRUSTED_ENV, raising=False)
    caption = checkpoint_utils.load_checkpoint_to_cpu(str(ofa_checkpoints[CAPTION_CKPT]))
    best = caption["extra_state"]["best"]
    assert type(best) is np.float64 and type(caption["extra_state"]["val_loss"]) is np.float64
    assert caption["cfg"]["model"].arch == "ofa_tiny" and caption["cfg"]["task"]["eval_cider"]
    pretrain = checkpoint_utils.load_checkpoint_to_cpu(str(ofa_checkpoints[PRETRAIN_CKPT]))
    assert isinstance(pretrain["cfg"]["model"], argparse.Namespace) and pretrain["cfg"]["model"].arch == "ofa_tiny"
    assert type(pretrain["extra_state"]["best"]) is float


def test_os_system_in_an_ofa_checkpoint_is_refused(ofa_checkpoints, tmp_path, monkeypatch):
    monkeypatch.delenv(TRUSTED_ENV, raising=False)
    state = torch.load(ofa_checkpoints[PRETRAIN_CKPT], weights_only=True)
    state["extra_state"]["hook"] = os.system
    crafted = tmp_path / "crafted.pt"
    torch.save(state, crafted)
    with pytest.raises(UntrustedCheckpointError, match=r"\(posix\.system\)|\(nt\.system\)"):
        checkpoint_utils.load_checkpoint_to_cpu(str(crafted))


NUMPY1_WRITER = """
import sys, numpy, torch
assert numpy.__version__.startswith("1.26"), numpy.__version__
torch.save({"model": {}, "array": numpy.arange(3)}, sys.argv[1])
"""


def test_trust_admits_the_refused_numpy1_names(numpy1_path, tmp_path, monkeypatch):
    """A numpy array pickled under numpy 1 (outside the allow-list): refused by name; trusted, it loads under
    numpy 2, its numpy 1 names admitted as they are written, and for that file only."""
    path = tmp_path / "array_numpy1.pt"
    proc = subprocess.run([sys.executable, "-c", NUMPY1_WRITER, str(path)], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=numpy1_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    monkeypatch.delenv(TRUSTED_ENV, raising=False)
    with pytest.raises(UntrustedCheckpointError, match=r"numpy\.core\.multiarray\._reconstruct") as err:
        checkpoint_utils.load_checkpoint_to_cpu(str(path))
    assert "numpy.ndarray" in str(err.value)
    monkeypatch.setenv(TRUSTED_ENV, str(path))
    load = guard_loader(torch.load)
    assert load(str(path))["array"].tolist() == [0, 1, 2]
    with pytest.raises(pickle.UnpicklingError):  # the global allow-list did not grow
        torch.load(path, weights_only=True)


def test_this_file_passes_under_numpy_1(numpy1_path):
    """The plugin imports under numpy 1.26, and the allow-list, refusal and OFA-checkpoint loading tests above pass
    there too (run again by pytest in that environment)."""
    run_pytest = ("import sys, numpy, pytest; print('numpy', numpy.__version__); "
                  "sys.exit(pytest.main(sys.argv[1:]))")
    proc = subprocess.run([sys.executable, "-c", run_pytest, "-q", "-p", "no:cacheprovider", __file__, "-k",
                           "not numpy_1 and not numpy1 and not restore and not evaluate"],
                          capture_output=True, text=True, cwd=Path(__file__).parent,
                          env=dict(os.environ, PYTHONPATH=numpy1_path))
    assert proc.returncode == 0 and " passed" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "numpy 1.26" in proc.stdout, proc.stdout[-3000:]


def test_restore_ofa_caption_checkpoint_with_resets(ofa_checkpoints, demo_data, tmp_path, monkeypatch):
    """EL finetuning from OFA's CIDEr-selected checkpoint (the caption recipe, --restore-file with the resets, at
    the fixture's size): the weights start from the file's."""
    monkeypatch.delenv(TRUSTED_ENV, raising=False)
    restored = ofa_checkpoints[CAPTION_CKPT]
    env = dict(os.environ, DEMO="1", PYTHON=sys.executable, OMP_NUM_THREADS="1", DATA_DIR=str(demo_data),
               BPE_DIR=str(OFA_FIXTURE / "bpe"), SAVE_DIR=str(tmp_path / "save"))
    proc = subprocess.run(["sh", str(REPO_ROOT / "run_scripts" / "caption" / "train_caption_stage1_el.sh"),
                           *TINY_MODEL, "--patch-image-size", "32", "--batch-size", "4", "--max-update", "2",
                           "--disable-validation",
                           "--restore-file", str(restored), "--reset-optimizer", "--reset-dataloader",
                           "--reset-meters"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-5000:]
    assert f"Loaded checkpoint {restored} (epoch 1 @ 0 updates)" in output, output[-3000:]
    before = torch.load(restored, weights_only=True)["model"]
    after = torch.load(tmp_path / "save" / "checkpoint_last.pt", weights_only=True)["model"]
    assert before.keys() == after.keys()
    name = "encoder.embed_images.conv1.weight"  # two Adam steps at lr 1e-3 move a weight by ~2e-3 at most
    assert 0 < (after[name] - before[name]).abs().max() < 0.01


def test_evaluate_ofa_caption_checkpoint_from_another_directory(ofa_checkpoints, demo_data, tmp_path, monkeypatch,
                                                                capfd):
    """Its stored CIDEr table and data files (OFA's relative paths) are ignored, in one line; the BPE comes from
    --bpe-dir, and without it the error names the flag."""
    from ofa_el.tools import evaluate
    from ofa_el.tools.errors import UserError

    monkeypatch.delenv(TRUSTED_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    path = str(ofa_checkpoints[CAPTION_CKPT])
    tsv = str(demo_data / "caption_test.tsv")
    with pytest.raises(UserError, match=r"trained with --bpe-dir \.\./\.\./utils/BPE, which is not a directory "
                                        r"here: pass --bpe-dir"):
        evaluate.main([tsv, "--path", path, "--cpu"])
    table = evaluate.main([tsv, "--path", path, "--bpe-dir", str(OFA_FIXTURE / "bpe"), "--cpu", "--beam", "2",
                           "--results-path", str(tmp_path / "results")])
    assert {"Bleu_4", "METEOR", "ROUGE_L", "CIDEr"} <= set(table["caption_test"])
    assert len(json.loads((tmp_path / "results" / "caption_test_predict.json").read_text())) == tsv_rows(tsv)
    ignored = [line for line in capfd.readouterr().err.splitlines() if "ignoring its stored" in line]
    assert len(ignored) == 2 and "eval_cider_cached_tokens='../../dataset/caption_data/" in ignored[-1]
