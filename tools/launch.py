"""The one launcher behind every run_scripts/*.sh: a recipe config in, a fairseq run out.

A recipe (configs/<task>/<name>.yaml) is the single source of its hyper-parameters::

    description: caption stage 1 with Encouraging Loss (OFA's train_caption_stage1_el.sh)
    extends: stage1_ce.yaml          # optional: a base recipe in the same folder, merged first
    entry: train                     # train | evaluate
    env:                             # paths, overridable from the environment; relative
      DATA_DIR: dataset/caption_data # defaults are relative to the repository root (OFA's layout)
    data: [${DATA_DIR}/caption_stage1_train.tsv, ${DATA_DIR}/caption_val.tsv]
    args:                            # fairseq flags: true = bare flag, false/null = left out
      arch: ofa_large
      lr: 1.0e-5
    demo:                            # overrides used with DEMO=1 (small data, CPU-sized model)
      env: {...}
      args: {...}

The launcher expands ``${VAR}`` from the environment (falling back to ``env``), builds the
command line and runs it in one process, or under torchrun when ``NPROC_PER_NODE``/``NNODES``
ask for more (``NODE_RANK``, ``MASTER_ADDR``, ``MASTER_PORT`` as torchrun takes them).
Extra command-line arguments are appended verbatim, so they override the recipe.
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

REPO_ROOT = Path(__file__).resolve().parents[1]
ENTRY_MODULES = {"train": "ofa_el.tools.train", "evaluate": "ofa_el.tools.evaluate"}
_VAR = re.compile(r"\$\{(\w+)\}")


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
    unknown = set(recipe) - {"description", "extends", "entry", "env", "data", "args", "demo"}
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


def expand(value: str, env: Mapping[str, str], defaults: Mapping[str, Any], where: str) -> str:
    def lookup(match: re.Match) -> str:
        name = match.group(1)
        if name in env:
            return env[name]
        if name in defaults:
            default = str(defaults[name])
            return default if os.path.isabs(default) else str(REPO_ROOT / default)
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
    """How many processes to start, from torchrun-style variables (GPU count as OFA's scripts use it)."""
    visible = env.get("CUDA_VISIBLE_DEVICES", "")
    default_procs = len([d for d in visible.split(",") if d.strip()]) or 1
    layout = {
        "nproc_per_node": int(env.get("NPROC_PER_NODE", default_procs)),
        "nnodes": int(env.get("NNODES", 1)),
        "node_rank": int(env.get("NODE_RANK", 0)),
        "master_addr": env.get("MASTER_ADDR", "127.0.0.1"),
        "master_port": int(env.get("MASTER_PORT", 29500)),
    }
    if layout["nproc_per_node"] < 1 or layout["nnodes"] < 1 or not 0 <= layout["node_rank"] < layout["nnodes"]:
        raise RecipeError(f"bad process layout: {layout}")
    return layout


def command(recipe: Mapping[str, Any], env: Mapping[str, str], extra: List[str], where: str = "recipe") -> List[str]:
    entry = recipe.get("entry", "train")
    if entry not in ENTRY_MODULES:
        raise RecipeError(f"{where}: entry must be one of {sorted(ENTRY_MODULES)}, got {entry!r}")
    argv = fairseq_arguments(recipe, env, where) + list(extra)
    layout = process_layout(env)
    if entry == "train" and layout["nproc_per_node"] * layout["nnodes"] > 1:
        return [sys.executable, "-m", "torch.distributed.run",
                f"--nnodes={layout['nnodes']}", f"--node_rank={layout['node_rank']}",
                f"--nproc_per_node={layout['nproc_per_node']}", f"--master_addr={layout['master_addr']}",
                f"--master_port={layout['master_port']}", "-m", ENTRY_MODULES[entry], *argv]
    return [sys.executable, "-m", ENTRY_MODULES[entry], *argv]


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", type=Path, help="a recipe YAML under configs/")
    parser.add_argument("--demo", action="store_true", help="use the recipe's demo overrides (also: DEMO=1)")
    parser.add_argument("--dry-run", action="store_true", help="print the command instead of running it")
    args, extra = parser.parse_known_args(argv)
    demo = args.demo or os.environ.get("DEMO", "0") not in ("", "0")
    try:
        recipe = load_recipe(args.recipe, demo=demo)
        cmd = command(recipe, os.environ, extra, where=str(args.recipe))
    except RecipeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print("+ " + " ".join(shlex.quote(c) for c in cmd), flush=True)
    if args.dry_run:
        return 0
    return subprocess.call(cmd)


if __name__ == "__main__":
    sys.exit(main())
