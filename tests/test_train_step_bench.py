"""benchmarks/train_step_vs_ofa.py: its model flags are the recipes', and bad options stop with an error line.
(The benchmark itself needs OFA's code; its equivalence check and timings run where ``--ofa-dir`` exists.)"""
import sys

import pytest

from conftest import REPO_ROOT
from ofa_el.recipes import load_recipe

SCRIPT = REPO_ROOT / "benchmarks" / "train_step_vs_ofa.py"
RECIPE_FILES = {"caption": "configs/caption/stage1_ce.yaml", "refcoco": "configs/refcoco/refcoco_ce.yaml"}


def bench_module():
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import train_step_vs_ofa
    finally:
        sys.path.remove(str(SCRIPT.parent))
    return train_step_vs_ofa


@pytest.mark.parametrize("recipe", ["caption", "refcoco"])
def test_model_flags_and_image_size_are_the_recipes(recipe):
    flags, image_size = bench_module().RECIPES[recipe]
    args = load_recipe(REPO_ROOT / RECIPE_FILES[recipe])["args"]
    assert args["patch-image-size"] == image_size
    for flag in flags:
        name, _, value = flag[2:].partition("=")
        assert name in args, f"{flag} is not in {RECIPE_FILES[recipe]}"
        assert str(args[name]) == (value or "True"), (flag, args[name])
    # every model flag the recipe sets is in the list (training-only flags aside)
    model_flags = {name for name in args if name.startswith(("encoder-", "decoder-", "freeze-", "scale-", "share-"))}
    assert model_flags <= {flag[2:].partition("=")[0] for flag in flags}


@pytest.mark.parametrize("args, message", [
    (["--ofa-dir", "/nonexistent"], "error: --ofa-dir /nonexistent is not a checkout of OFA's repository"),
    (["--ofa-dir", "/nonexistent", "--dtype", "float16"], "error: --dtype float16 needs --device cuda"),
    (["--ofa-dir", "/nonexistent", "--image-size", "50"], "error: --image-size 50 is not a multiple of 16"),
])
def test_bad_options_stop_with_an_error_line(args, message, capsys):
    try:
        status = bench_module().main(args)
    except SystemExit as stop:  # argparse's own checks
        status = stop.code
    assert status == 2 and capsys.readouterr().err.startswith(message)
