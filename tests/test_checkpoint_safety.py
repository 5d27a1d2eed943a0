"""Weights-only checkpoint loading with a minimal allow-list, and a clear refusal otherwise."""
import argparse
import fractions
import pickle

import numpy as np
import pytest
import torch
from fairseq import checkpoint_utils

import ofa_el  # noqa: F401  (installs the guarded loader)
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
