"""Recipes: the YAML files under configs/ that hold a run's hyper-parameters (the format: ``ofa_el.tools.launch``).

Reading one (its ``extends`` chain merged, its ``demo`` block applied on request), expanding ``${VAR}`` from the
environment or the recipe's ``env:`` defaults, turning it into fairseq flags, the ``--update-freq`` that keeps its
global batch, and listing and copying the packaged recipes. The launcher, ``ofa-el recipes``/``cp`` and the demo
use these; none of them runs anything.
"""
from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

import yaml

from . import PACKAGE_DIR
from .flags import flag_given, flag_value
from .errors import UserError

REPO_ROOT = Path(PACKAGE_DIR)
CONFIGS = REPO_ROOT / "configs"
_VAR = re.compile(r"\$\{(\w+)\}")
RECIPE_KEYS = {"description", "extends", "entry", "env", "data", "global_batch_size", "args", "demo"}


def default_base() -> Path:
    """Where relative defaults point: the repository in a clone (it has setup.py beside the package files),
    the current directory when ``ofa_el`` is installed (a package in site-packages holds no data)."""
    return REPO_ROOT if (REPO_ROOT / "setup.py").is_file() else Path.cwd()


class RecipeError(UserError, ValueError):
    """A recipe file that cannot be used; the message names the file and the problem."""


def is_recipe(path: Path) -> bool:
    """A launcher recipe (not, e.g., a fairseq-hydra config that lives under configs/ too)."""
    try:
        recipe = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(recipe, dict) and bool({"entry", "extends"} & set(recipe)) and set(recipe) <= RECIPE_KEYS


def available_recipes() -> Dict[str, Path]:
    """Every packaged recipe by name (``refcoco/refcocoplus_el``), sorted."""
    return {str(path.relative_to(CONFIGS).with_suffix("")): path
            for path in sorted(CONFIGS.glob("*/*.yaml")) if is_recipe(path)}


def recipe_path(path: Path) -> Path:
    """A recipe file as given, else a packaged recipe of that name (``caption/stage1_el``, ``stage1_el.yaml``,
    ``refcocoplus_el`` when only one folder has it). An unknown name lists the close matches and where it looked."""
    path = Path(path)
    if path.is_file():
        return path
    name = str(path)[:-len(".yaml")] if str(path).endswith(".yaml") else str(path)
    recipes = available_recipes()
    if not path.is_absolute():
        if name in recipes:
            return recipes[name]
        same_stem = [full for full in recipes if full.split("/")[-1] == name]
        if len(same_stem) == 1:
            return recipes[same_stem[0]]
        if same_stem:
            raise RecipeError(f"recipe name {name!r} is in several folders: {', '.join(same_stem)}; give one of them")
    by_name = {**{full.split("/")[-1]: full for full in recipes}, **{full: full for full in recipes}}
    close = sorted({by_name[match] for match in difflib.get_close_matches(name, list(by_name), n=5, cutoff=0.6)})
    suggestion = f"close matches: {', '.join(close)}" if close else "no recipe has a similar name"
    raise RecipeError(f"recipe not found: {path} (looked for the file {path.absolute()} and for a recipe of that name "
                      f"under {CONFIGS}); {suggestion}; `ofa-el recipes` lists them all")


def _extended_path(path: Path, name: str) -> Path:
    """``extends: name`` of the recipe at ``path``: next to it, else the packaged recipe (``folder/name`` or a name
    that only one packaged folder has), so that a recipe copied elsewhere still finds its base."""
    for candidate in (path.parent / name, CONFIGS / name):
        if candidate.is_file():
            return candidate
    packaged = sorted(CONFIGS.glob(f"*/{name}"))
    if len(packaged) == 1:
        return packaged[0]
    if packaged:
        folders = ", ".join(str(p.relative_to(CONFIGS)) for p in packaged)
        raise RecipeError(f"{path}: extends {name}: several packaged recipes have that name ({folders}); "
                          f"write extends: <folder>/{name}")
    raise RecipeError(f"{path}: extends {name}: found neither next to it ({path.parent / name}) nor among the "
                      f"packaged recipes ({CONFIGS}); `ofa-el cp <recipe> <file>` writes a copy with its chain merged")


def _merge(base: Dict[str, Any], override: Mapping[str, Any]) -> Dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(dict(merged[key]), value)
        else:
            merged[key] = value
    return merged


def read_chain(path: Path) -> Dict[str, Any]:
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
        recipe = _merge(read_chain(_extended_path(path, str(recipe.pop("extends")))), recipe)
    return recipe


def load_recipe(path: Path, demo: bool = False) -> Dict[str, Any]:
    """Read a recipe and the recipes it extends, then (with ``demo``) apply its demo overrides."""
    recipe = read_chain(Path(path))
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


def process_layout(env: Mapping[str, str], gpus: int = 0) -> Dict[str, Any]:
    """How many processes to start: one per visible GPU (as torchrun's ``--nproc_per_node=gpu``), one without
    GPUs, or what the torchrun-style variables say.

    ``master_addr``/``master_port`` are None on one node when neither is set: torchrun's standalone
    rendezvous then takes a free port, so two recipes can run side by side on one machine.
    """
    default_procs = max(gpus, 1)
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


RUN_SCRIPTS = REPO_ROOT / "run_scripts"


def run_scripts_by_recipe() -> Dict[str, str]:
    """``recipe name -> run_scripts/<task>/<script>.sh`` for the scripts that launch it (the full path where
    ``ofa_el`` is installed rather than cloned)."""
    scripts: Dict[str, str] = {}
    names = list(available_recipes())
    clone = default_base() == REPO_ROOT
    for script in sorted(RUN_SCRIPTS.glob("*/*.sh")):
        text = script.read_text()
        for name in names:
            if f"{name}.yaml" in text:
                scripts.setdefault(name, str(script.relative_to(REPO_ROOT) if clone else script))
    return scripts


def summary(description: Optional[str]) -> str:
    """A recipe's description up to its first colon or full stop: what it trains, in one line."""
    text = " ".join(str(description or "").split())
    for stop in (": ", ". "):
        if stop in text:
            text = text.split(stop, 1)[0]
    return text.rstrip(".")


def recipe_table() -> List[str]:
    """One line per packaged recipe: name, run script (``-``: launch it by name), one-line description."""
    scripts = run_scripts_by_recipe()
    recipes = available_recipes()
    rows = [(name, scripts.get(name, "-"), summary(read_chain(path).get("description")))
            for name, path in recipes.items()]
    name_width = max(len(row[0]) for row in rows)
    script_width = max(len(row[1]) for row in rows)
    lines = [f"{'recipe':<{name_width}}  {'run script':<{script_width}}  description"]
    lines += [f"{name:<{name_width}}  {script:<{script_width}}  {text}" for name, script, text in rows]
    lines.append(f"\n{len(rows)} recipes in {recipes[rows[0][0]].parents[1]}. Run one: ofa-el launch <recipe> "
                 "[--dry-run | --print-config] [fairseq flags]; an editable copy: ofa-el cp <recipe> <file>")
    return lines


def copy_recipe(name: str, destination: Path, force: bool = False) -> Path:
    """Write recipe ``name`` with its ``extends`` chain merged in (demo block included) to ``destination``."""
    source = recipe_path(Path(name))
    destination = Path(destination)
    if destination.is_dir():
        destination = destination / source.name
    if destination.exists() and not force:
        raise UserError(f"{destination}: exists; choose another file or add --force to overwrite it")
    recipe = read_chain(source)
    header = (f"# {source.name} with its extends chain merged in (ofa-el cp): a self-contained recipe.\n"
              f"# Run it from any folder: ofa-el launch {destination.name} [--print-config]\n")
    destination.write_text(header + yaml.safe_dump(recipe, sort_keys=False, width=120))
    return destination
