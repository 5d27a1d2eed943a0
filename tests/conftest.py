"""Shared test helpers: the repository root and an environment for fairseq subprocesses."""
import os
import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_SPECS = REPO_ROOT.parent / "shared" / "specs"

torch.set_num_threads(1)


def venv_bin(name: str) -> str:
    """A console script of the interpreter running the tests (fairseq-train, ...)."""
    return str(Path(sys.executable).parent / name)


@pytest.fixture
def subprocess_env():
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONUNBUFFERED"] = "1"
    return env
