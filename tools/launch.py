"""The one launcher behind every run_scripts/*.sh: a recipe config in, a fairseq run out.

A recipe (configs/<task>/<name>.yaml) is the single source of its hyper-parameters::

    description: caption stage 1 with Encouraging Loss (OFA's train_caption_stage1_el.sh)
    extends: stage1_ce.yaml          # optional: a base recipe in the same folder, merged first
    entry: train                     # train | evaluate
    env:                             # paths, overridable from the environment; a default may
      DATA_DIR: dataset/caption_data # use other variables (dataset/${SET}_data)
    data: [${DATA_DIR}/caption_stage1_train.tsv, ${DATA_DIR}/caption_val.tsv]
    global_batch_size: 128           # OFA's samples per update (GPUs x batch x update-freq)
    args:                            # fairseq flags: true = bare flag, false/null = left out
      arch: ofa_large
      lr: 1.0e-5
    demo:                            # overrides used with DEMO=1 (small data, CPU-sized model)
      env: {...}
      args: {...}

The launcher expands ``${VAR}`` from the environment (falling back to ``env``), builds the
command line and runs it in one process, or under torchrun when ``NPROC_PER_NODE``/``NNODES``
ask for more (``NODE_RANK``, ``MASTER_ADDR``, ``MASTER_PORT`` as torchrun takes them; on one node
without ``MASTER_ADDR``/``MASTER_PORT``, torchrun's standalone rendezvous picks a free port).
Extra command-line arguments are appended verbatim, so they override the recipe.

Relative defaults under ``env:`` resolve against the repository when the launcher runs from a
clone (which holds setup.py), and against the current directory when ``ofa_el`` is installed
(site-packages holds no data). Values taken from the environment are used as given.

With ``global_batch_size``, ``--update-freq`` is derived from the number of processes so that
every update sees the recipe's number of samples, unless ``--update-freq`` is passed.
"""
from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

import yaml

from .errors import run_cli
from .train import flag_given, flag_value

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIGS = REPO_ROOT / "configs"
ENTRY_MODULES = {"train": "ofa_el.tools.train", "evaluate": "ofa_el.tools.evaluate"}
_VAR = re.compile(r"\$\{(\w+)\}")
#: Recipe flags that train in float16: GPU recipes (OFA's stage 1 uses --fp16, stage 2 --memory-efficient-fp16).
HALF_PRECISION_FLAGS = ("fp16", "memory-efficient-fp16")
#: Tasks whose training images go through OFA's random augmentation (data/augment.py): the start lines say whose.
AUGMENTING_TASKS = ("image_classify",)
RECIPE_KEYS = {"description", "extends", "entry", "env", "data", "global_batch_size", "args", "demo"}


def default_base() -> Path:
    """Where relative defaults point: the repository in a clone (it has setup.py beside the package files),
    the current directory when ``ofa_el`` is installed (a package in site-packages holds no data)."""
    return REPO_ROOT if (REPO_ROOT / "setup.py").is_file() else Path.cwd()


def recipe_path(path: Path) -> Path:
    """A recipe file as given, else the same name under the plugin's configs/ (``caption/stage1_el.yaml``)."""
    path = Path(path)
    if path.is_file() or path.is_absolute():
        return path
    packaged = CONFIGS / path
    return packaged if packaged.is_file() else path


class RecipeError(ValueError):
    """A recipe file that cannot be used; the message names the file and the problem."""


def _merge(base: Dict[str, Any], override: Mapping[str, Any]) -> Dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(dict(merged[key]), value)
        else:
            merged[key] = value
    return merged


def _read_chain(path: Path) -> Dict[str, Any]:
    """A recipe merged over the recipes it extends (demo blocks merge the same way)."""
    if not path.is_file():
        raise RecipeError(f"recipe not found: {path}")
    try:
        recipe = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise RecipeError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(recipe, dict):
        raise RecipeError(f"{path}: a recipe must be a mapping")
    unknown = set(recipe) - RECIPE_KEYS
    if unknown:
        raise RecipeError(f"{path}: unknown keys {sorted(unknown)}")
    if "extends" in recipe:
        recipe = _merge(_read_chain(path.parent / recipe.pop("extends")), recipe)
    return recipe


def load_recipe(path: Path, demo: bool = False) -> Dict[str, Any]:
    """Read a recipe and the recipes it extends, then (with ``demo``) apply its demo overrides."""
    recipe = _read_chain(Path(path))
    overrides = recipe.pop("demo", None) or {}
    return _merge(recipe, overrides) if demo else recipe


def expand(value: str, env: Mapping[str, str], defaults: Mapping[str, Any], where: str,
           _seen: tuple = ()) -> str:
    """``${NAME}`` from the environment as given, else from ``defaults`` (expanded in turn; a relative
    result is taken relative to :func:`default_base`)."""
    def lookup(match: re.Match) -> str:
        name = match.group(1)
        if name in env:
            return env[name]
        if name in _seen:
            raise RecipeError(f"{where}: ${{{name}}} refers to itself through {' -> '.join(_seen + (name,))}")
        if name in defaults:
            default = expand(str(defaults[name]), env, defaults, where, _seen + (name,))
            return default if os.path.isabs(default) else str(default_base() / default)
        raise RecipeError(f"{where}: ${{{name}}} is neither set in the environment nor given under env:")

    return _VAR.sub(lookup, value)


def fairseq_arguments(recipe: Mapping[str, Any], env: Mapping[str, str], where: str = "recipe") -> List[str]:
    """The recipe as a fairseq command line (positional data first, then ``--flag value`` pairs)."""
    defaults = dict(recipe.get("env") or {})
    argv: List[str] = []
    data = recipe.get("data")
    if data:
        paths = data if isinstance(data, list) else [data]
        argv.append(",".join(expand(str(p), env, defaults, where) for p in paths))
    for name, value in (recipe.get("args") or {}).items():
        flag = f"--{name}"
        if value is None or value is False:
            continue
        if value is True:
            argv.append(flag)
        else:
            argv.append(f"{flag}={expand(str(value), env, defaults, where)}")
    return argv


def process_layout(env: Mapping[str, str]) -> Dict[str, Any]:
    """How many processes to start, from torchrun-style variables (GPU count as OFA's scripts use it).

    ``master_addr``/``master_port`` are None on one node when neither is set: torchrun's standalone
    rendezvous then takes a free port, so two recipes can run side by side on one machine.
    """
    visible = env.get("CUDA_VISIBLE_DEVICES", "")
    default_procs = len([d for d in visible.split(",") if d.strip()]) or 1
    try:
        layout = {
            "nproc_per_node": int(env.get("NPROC_PER_NODE", default_procs)),
            "nnodes": int(env.get("NNODES", 1)),
            "node_rank": int(env.get("NODE_RANK", 0)),
        }
    except ValueError as err:
        raise RecipeError(f"NPROC_PER_NODE, NNODES and NODE_RANK must be integers ({err})") from None
    if layout["nproc_per_node"] < 1 or layout["nnodes"] < 1 or not 0 <= layout["node_rank"] < layout["nnodes"]:
        raise RecipeError(f"bad process layout: {layout}")
    standalone = layout["nnodes"] == 1 and "MASTER_ADDR" not in env and "MASTER_PORT" not in env
    layout["master_addr"] = None if standalone else env.get("MASTER_ADDR", "127.0.0.1")
    layout["master_port"] = None if standalone else int(env.get("MASTER_PORT", 29500))
    return layout


def derived_update_freq(recipe: Mapping[str, Any], extra: List[str], processes: int) -> Optional[int]:
    """``--update-freq`` that keeps the recipe's ``global_batch_size`` with ``processes`` processes.

    None when the recipe states no global batch or the user passes ``--update-freq``. A global
    batch that the processes cannot share evenly is an error that says which values would fit.
    """
    global_batch = recipe.get("global_batch_size")
    if not global_batch or flag_given(extra, "--update-freq"):
        return None
    batch = flag_value(extra, "--batch-size") or (recipe.get("args") or {}).get("batch-size")
    try:
        per_update = int(batch) * processes
    except (TypeError, ValueError):
        raise RecipeError(f"global_batch_size {global_batch} needs an integer --batch-size, got {batch!r}") from None
    if per_update < 1 or global_batch % per_update:
        raise RecipeError(
            f"the recipe's global batch of {global_batch} samples cannot be split into {processes} process(es) x "
            f"--batch-size {batch}: choose a --batch-size and process count whose product divides {global_batch}, "
            f"or pass --update-freq yourself (the global batch then changes)")
    return global_batch // per_update


def command(recipe: Mapping[str, Any], env: Mapping[str, str], extra: List[str], where: str = "recipe") -> List[str]:
    entry = recipe.get("entry", "train")
    if entry not in ENTRY_MODULES:
        raise RecipeError(f"{where}: entry must be one of {sorted(ENTRY_MODULES)}, got {entry!r}")
    recipe = dict(recipe)
    if flag_given(extra, "--cpu"):
        # an explicit --cpu run of a GPU recipe (e.g. to try it on a laptop): the recipe's half precision goes
        recipe["args"] = {name: None if name in HALF_PRECISION_FLAGS else value
                          for name, value in (recipe.get("args") or {}).items()}
    layout = process_layout(env)
    processes = layout["nproc_per_node"] * layout["nnodes"]
    update_freq = derived_update_freq(recipe, extra, processes) if entry == "train" else None
    if update_freq is not None:
        recipe["args"] = dict(recipe.get("args") or {}, **{"update-freq": update_freq})
    argv = fairseq_arguments(recipe, env, where) + list(extra)
    if entry == "train" and processes > 1:
        rendezvous = (["--standalone"] if layout["master_addr"] is None else
                      [f"--master_addr={layout['master_addr']}", f"--master_port={layout['master_port']}"])
        return [sys.executable, "-m", "torch.distributed.run",
                f"--nnodes={layout['nnodes']}", f"--node_rank={layout['node_rank']}",
                f"--nproc_per_node={layout['nproc_per_node']}", *rendezvous, "-m", ENTRY_MODULES[entry], *argv]
    return [sys.executable, "-m", ENTRY_MODULES[entry], *argv]


def global_batch_line(argv: List[str], processes: int) -> str:
    """``global batch: P process(es) x batch B x update-freq U = N samples per update``."""
    batch = flag_value(argv, "--batch-size")
    update_freq = flag_value(argv, "--update-freq") or "1"
    try:
        total = f" = {int(batch) * processes * int(update_freq)} samples per update"
    except (TypeError, ValueError):
        total = ""
    return f"global batch: {processes} process(es) x batch {batch} x update-freq {update_freq}{total}"


def environment_line() -> str:
    """One line on what will run: this Python, torch (CUDA or not, devices), fairseq, where ofa_el comes from."""
    import importlib.metadata
    import importlib.util

    import torch

    fairseq_version = "not installed"
    for dist in ("fairseq", "ve-fairseq"):
        try:
            fairseq_version = importlib.metadata.version(dist)
            break
        except importlib.metadata.PackageNotFoundError:
            continue
    spec = importlib.util.find_spec("ofa_el")
    origin = os.path.dirname(spec.origin) if spec and spec.origin else "not importable"
    cuda = torch.cuda.is_available()
    devices = f"{torch.cuda.device_count()} CUDA device(s)" if cuda else "CUDA not available"
    return (f"ofa_el: python {sys.executable} ({sys.version.split()[0]}), torch {torch.__version__} ({devices}), "
            f"fairseq {fairseq_version}, ofa_el from {origin}")


def augmentation_line(argv: List[str]) -> str:
    """Which implementation of OFA's training augmentation the run will use (timm's, or ofa_el's on PIL)."""
    from ..data.augment import describe_augmentation_backend

    backend = flag_value(argv, "--augmentation-backend") or "auto"
    return f"image augmentation ({backend}): " + (describe_augmentation_backend() if backend == "auto" else backend)


def check_device(argv: List[str]) -> None:
    """Half precision is for a CUDA GPU (fairseq 0.12's ``--fp16`` optimizer needs one; ``--memory-efficient-fp16``
    would crawl on a CPU): say so before anything starts, unless ``--cpu`` asks for the CPU explicitly."""
    import torch

    half = [f"--{name}" for name in HALF_PRECISION_FLAGS if flag_given(argv, f"--{name}")]
    if not half or torch.cuda.is_available() or (flag_given(argv, "--cpu") and "--fp16" not in half):
        return
    raise RecipeError(
        f"this recipe trains with {half[0]}, which needs a CUDA GPU, and {sys.executable} (torch "
        f"{torch.__version__}) sees none. Fixes: DEMO=1 runs the CPU-sized demo recipe; PYTHON=/path/to/python "
        "picks a Python with a CUDA build of torch (the scripts otherwise take the active virtualenv/conda "
        "environment, then the repository's .venv); --cpu runs this recipe on the CPU without half precision")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", type=Path, help="a recipe YAML (a path, or a name under configs/ such as "
                                                   "caption/stage1_el.yaml)")
    parser.add_argument("--demo", action="store_true", help="use the recipe's demo overrides (also: DEMO=1)")
    parser.add_argument("--dry-run", action="store_true", help="print the command instead of running it")
    args, extra = parser.parse_known_args(argv)
    demo = args.demo or os.environ.get("DEMO", "0") not in ("", "0")
    path = recipe_path(args.recipe)
    try:
        recipe = load_recipe(path, demo=demo)
        cmd = command(recipe, os.environ, extra, where=str(path))
        print(environment_line(), flush=True)
        if recipe.get("entry", "train") == "train":
            layout = process_layout(os.environ)
            print(global_batch_line(cmd, layout["nproc_per_node"] * layout["nnodes"]), flush=True)
            if flag_value(cmd, "--task") in AUGMENTING_TASKS:
                print(augmentation_line(cmd), flush=True)
            check_device(cmd)
    except RecipeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print("+ " + " ".join(shlex.quote(c) for c in cmd), flush=True)
    if args.dry_run:
        return 0
    return subprocess.call(cmd)


if __name__ == "__main__":
    sys.exit(run_cli(main))
