"""Shared test helpers: paths, the demo data set, an environment for fairseq subprocesses, a tiny model and a
batch for criteria."""
import os
from collections import defaultdict
import sys
from pathlib import Path

import pytest
import torch
from fairseq.data import Dictionary

from ofa_el.script_runner import CommandFailed, run_demo_script
from ofa_el.synthetic.demo_set import make_demo_data
from ofa_el.tools.errors import run_cli

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_SPECS = REPO_ROOT.parent / "shared" / "specs"

torch.set_num_threads(1)

# Stock fairseq imports ``--user-dir`` as ``import <folder name>``: a checkout in a folder whose name holds a dot
# (``mktemp -d``) cannot be a user-dir for plain fairseq-train (the plugin's own entry points handle it).
needs_importable_folder = pytest.mark.skipif(
    "." in REPO_ROOT.name,
    reason=f"plain fairseq-train cannot import --user-dir {REPO_ROOT}: its folder name has a dot (rename the folder)")


#: A one-layer, width-32 OFA model: the size end-to-end tests train the recipes at (append run-length flags).
TINY_MODEL = ["--encoder-layers", "1", "--decoder-layers", "1", "--encoder-embed-dim", "32",
              "--decoder-embed-dim", "32", "--encoder-ffn-embed-dim", "64", "--decoder-ffn-embed-dim", "64",
              "--encoder-attention-heads", "2", "--decoder-attention-heads", "2"]


def run_script(script, env, *args, timeout=600):
    """A run_scripts/*.sh in demo mode (DEMO=1) with ``env`` added; its output, failing the test with its end."""
    try:
        return run_demo_script(script, {"OMP_NUM_THREADS": "1", **env}, *args, timeout=timeout)
    except CommandFailed as err:
        pytest.fail(str(err), pytrace=False)


#: The options of the one demo data set the tests share (``make_demo_data``'s keyword arguments): every file the
#: recipes read, at the smallest sizes the tests train and validate on. An odd number of validation rows (caption
#: and RefCOCO) splits unevenly over 2 workers; 8 caption images (40 rows) and 16 RefCOCO rows split into equal
#: blocks of whole batches of 4 per worker. 64 px images: at 32 px the 30 half-precision updates of
#: test_scale_and_faults learn too little to show it (p_target x2.8, where it asks for x3).
DEMO_DATA_OPTIONS = dict(seed=2, image_size=64, train_images=8, val_images=5, test_images=3, refcoco_train_images=16,
                         refcoco_eval_images=5, vqa_train_images=6, vqa_eval_images=3, snli_ve_rows=(24, 9, 9),
                         classify_rows=(24, 8, 8))


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory) -> Path:
    """The demo data set every test reads, written once per run (``DEMO_DATA_OPTIONS``). Read-only: a test that
    changes files copies them first."""
    out = tmp_path_factory.mktemp("demo_data")
    make_demo_data(str(out), **DEMO_DATA_OPTIONS)
    return out


def tsv_rows(path: Path) -> int:
    """How many rows a TSV file holds."""
    with open(path, encoding="utf-8") as handle:
        return sum(1 for _ in handle)


def run_command(capsys, main, *argv):
    """A command's ``main`` as ``python -m`` runs it (through run_cli): its exit status, stdout lines and stderr."""
    try:
        status = run_cli(lambda: main(list(argv)))
    except SystemExit as stop:
        status = stop.code
    out, err = capsys.readouterr()
    return status, out.splitlines(), err


def venv_bin(name: str) -> str:
    """A console script of the interpreter running the tests (fairseq-train, ...)."""
    return str(Path(sys.executable).parent / name)


@pytest.fixture
def subprocess_env():
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONUNBUFFERED"] = "1"
    return env


# ---------------------------------------------------------------- a tiny model, task and batch for criteria
VOCAB = 16
PAD, EOS = 1, 2


class Task:
    """Just what a criterion reads from a task: the target dictionary."""

    def __init__(self):
        self.target_dictionary = Dictionary()
        for i in range(VOCAB - len(self.target_dictionary)):
            self.target_dictionary.add_symbol(f"w{i}")


class TinyModel(torch.nn.Module):
    """Logits from the previous token; dropout makes the two R-Drop copies differ in training."""

    def __init__(self, dropout=0.0):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.embed = torch.nn.Parameter(torch.randn(VOCAB, 8, generator=g))
        self.out = torch.nn.Parameter(torch.randn(8, VOCAB, generator=g))
        self.dropout = torch.nn.Dropout(dropout)

    def forward(self, src_tokens, src_lengths, prev_output_tokens):
        return self.dropout(self.embed[prev_output_tokens]) @ self.out, {}

    def get_targets(self, sample, net_output):
        return sample["target"]


def make_sample(conf=None, masks=None):
    target = torch.tensor([[5, 6, 7, 8, EOS, PAD], [9, 10, EOS, PAD, PAD, PAD], [11, 12, 13, 14, 15, EOS]])
    prev = torch.cat([torch.full((3, 1), EOS), target[:, :-1]], 1).masked_fill(target == PAD, PAD)
    sample = {
        "id": torch.arange(3),
        "net_input": {"src_tokens": prev, "src_lengths": torch.tensor([6, 6, 6]), "prev_output_tokens": prev},
        "target": target,
        "ntokens": int(target.ne(PAD).sum()),
        "nsentences": 3,
    }
    if conf is not None:
        sample["conf"] = conf
    if masks is not None:
        sample["constraint_masks"] = masks
    return sample


# ---------------------------------------------------------------- CIDEr tables in OFA's format
def naive_ofa_table(corpus):
    """OFA's ``-words.p`` object for ``corpus`` (one list of references per image), counted without pycocoevalcap."""
    frequency = defaultdict(float)
    for references in corpus:
        ngrams = set()
        for reference in references:
            words = reference.split()
            ngrams |= {tuple(words[i:i + n]) for n in range(1, 5) for i in range(len(words) - n + 1)}
        for ngram in ngrams:
            frequency[ngram] += 1
    return {"document_frequency": frequency, "ref_len": len(corpus)}
