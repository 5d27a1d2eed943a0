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

A training run starts one process per visible GPU (``torch.cuda.device_count()``, which honours
``CUDA_VISIBLE_DEVICES``), one on a CPU or with ``--cpu``; ``NPROC_PER_NODE`` sets the count. Before
any process starts, the data files, the BPE folder, the restore file and the save dir are checked, and
a save dir whose ``checkpoint_last.pt`` was trained with other hyper-parameters stops the launch
(``--resume`` continues it anyway). ``--dry-run`` and ``--print-config`` only print, without checks.

A recipe is a path, or a name under the plugin's configs/ (``refcoco/refcocoplus_el``, or just
``refcocoplus_el`` where the name is unique); ``ofa-el recipes`` lists them. ``extends:`` is looked up
next to the recipe, then among the packaged recipes, so a copied recipe still runs.
"""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any, List, Mapping, Optional

import yaml

from ..flags import flag_given, flag_value
from ..preflight import check_launch
from ..recipes import (RecipeError, derived_update_freq, fairseq_arguments, load_recipe, process_layout,
                       recipe_path)
from .errors import UserError, run_cli

ENTRY_MODULES = {"train": "ofa_el.tools.train", "evaluate": "ofa_el.tools.evaluate"}
#: Recipe flags that train in float16: GPU recipes (OFA's stage 1 uses --fp16, stage 2 --memory-efficient-fp16).
HALF_PRECISION_FLAGS = ("fp16", "memory-efficient-fp16")
#: Tasks whose training images go through OFA's random augmentation (data/augment.py): the start lines say whose.
AUGMENTING_TASKS = ("image_classify",)


def visible_gpus(recipe: Mapping[str, Any], extra: List[str]) -> int:
    """CUDA devices a run can use: ``torch.cuda.device_count()`` (it honours ``CUDA_VISIBLE_DEVICES``), none
    for a CPU run (``--cpu`` given or in the recipe)."""
    if flag_given(extra, "--cpu") or (recipe.get("args") or {}).get("cpu"):
        return 0
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def command(recipe: Mapping[str, Any], env: Mapping[str, str], extra: List[str], where: str = "recipe",
            gpus: Optional[int] = None) -> List[str]:
    """The command that runs ``recipe``; a training run gets one process per GPU (``gpus``: detected when None)."""
    entry = recipe.get("entry", "train")
    if entry not in ENTRY_MODULES:
        raise RecipeError(f"{where}: entry must be one of {sorted(ENTRY_MODULES)}, got {entry!r}")
    recipe = dict(recipe)
    if flag_given(extra, "--cpu"):
        # an explicit --cpu run of a GPU recipe (e.g. to try it on a laptop): the recipe's half precision goes
        recipe["args"] = {name: None if name in HALF_PRECISION_FLAGS else value
                          for name, value in (recipe.get("args") or {}).items()}
    layout = process_layout(env, visible_gpus(recipe, extra) if gpus is None else gpus)
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

    if flag_value(argv, "--train-augmentation") == "none":
        return "image augmentation: none (--train-augmentation none)"
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


def processes_line(layout: Mapping[str, Any], gpus: int, env: Mapping[str, str]) -> str:
    """``processes: 8, one per visible GPU (...)``: how many processes start, and why that many."""
    if "NPROC_PER_NODE" in env:
        why = f"NPROC_PER_NODE={env['NPROC_PER_NODE']}"
    elif gpus:
        why = f"one per visible GPU ({gpus}; CUDA_VISIBLE_DEVICES or NPROC_PER_NODE choose fewer)"
    else:
        why = "no GPU in use (NPROC_PER_NODE starts more)"
    nodes = f" on each of {layout['nnodes']} nodes" if layout["nnodes"] > 1 else ""
    return f"processes: {layout['nproc_per_node']}{nodes}, {why}"


def entry_arguments(cmd: List[str], entry: str) -> List[str]:
    """The arguments ``cmd`` passes to the entry point (after torchrun's own, if any)."""
    return cmd[cmd.index(ENTRY_MODULES[entry]) + 1:]


def print_config(path: Path, recipe: Mapping[str, Any], cmd: List[str], demo: bool) -> None:
    """The recipe as it runs (its extends chain merged, with ``demo`` its demo overrides applied) and the command."""
    print(f"# {path}: extends chain merged{', demo overrides applied' if demo else ''}")
    print(yaml.safe_dump(dict(recipe), sort_keys=False, width=120), end="")
    print("# the command it runs:")
    print("# " + " ".join(shlex.quote(c) for c in cmd))


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", type=Path, help="a recipe YAML (a path, or a name under configs/ such as "
                                                   "caption/stage1_el; `ofa-el recipes` lists them)")
    parser.add_argument("--demo", action="store_true", help="use the recipe's demo overrides (also: DEMO=1)")
    parser.add_argument("--dry-run", action="store_true", help="print the command instead of running it")
    parser.add_argument("--print-config", action="store_true",
                        help="print the merged recipe and the command it runs, then stop")
    parser.add_argument("--resume", action="store_true",
                        help="continue the save dir's checkpoint_last.pt even where it was trained with other "
                             "hyper-parameters than this command's")
    args, extra = parser.parse_known_args(argv)
    demo = args.demo or os.environ.get("DEMO", "0") not in ("", "0")
    try:
        path = recipe_path(args.recipe)
        recipe = load_recipe(path, demo=demo)
        entry = recipe.get("entry", "train")
        gpus = visible_gpus(recipe, extra) if entry == "train" else 0
        cmd = command(recipe, os.environ, extra, where=str(path), gpus=gpus)
        if args.print_config:
            print_config(path, recipe, cmd, demo)
            return 0
        print(environment_line(), flush=True)
        processes = 1
        if entry == "train":
            layout = process_layout(os.environ, gpus)
            processes = layout["nproc_per_node"] * layout["nnodes"]
            print(processes_line(layout, gpus, os.environ), flush=True)
            print(global_batch_line(cmd, processes), flush=True)
            if flag_value(cmd, "--task") in AUGMENTING_TASKS:
                print(augmentation_line(cmd), flush=True)
            check_device(cmd)
        if not args.dry_run:
            check_launch(entry, entry_arguments(cmd, entry), processes=processes, resume=args.resume, demo=demo)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print("+ " + " ".join(shlex.quote(c) for c in cmd), flush=True)
    if args.dry_run:
        return 0
    return subprocess.call(cmd)


if __name__ == "__main__":
    sys.exit(run_cli(main))
