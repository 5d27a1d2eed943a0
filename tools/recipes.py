"""The packaged recipes: list them, and copy one out as a file that runs from anywhere.

    ofa-el recipes                                   # name, run script, what it trains
    ofa-el cp refcoco/refcocoplus_el my_run.yaml     # its extends chain merged in: edit it, then
    ofa-el launch my_run.yaml                        # ... launch it from any folder
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict, List, Optional

import yaml

from .errors import UserError, run_cli
from .launch import REPO_ROOT, available_recipes, default_base, read_chain, recipe_path

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


def list_main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="ofa-el recipes", description="List the packaged recipes.")
    parser.parse_args(argv)
    print("\n".join(recipe_table()))
    return 0


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


def copy_main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="ofa-el cp", description="Copy a recipe out as a self-contained file.")
    parser.add_argument("recipe", help="a recipe name (ofa-el recipes lists them) or file")
    parser.add_argument("file", type=Path, help="where to write the copy (a folder: keeps the recipe's file name)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing file")
    args = parser.parse_args(argv)
    written = copy_recipe(args.recipe, args.file, force=args.force)
    print(f"{written}: {args.recipe} with its extends chain merged; run it with: ofa-el launch {written}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(list_main))
