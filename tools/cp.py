"""``ofa-el cp <recipe> <file>``: a packaged recipe copied out with its extends chain merged in, to edit and
launch from any folder (``ofa-el launch <file>``)."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import List, Optional

from ..recipes import copy_recipe
from .errors import run_cli


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="ofa-el cp", description="Copy a recipe out as a self-contained file.")
    parser.add_argument("recipe", help="a recipe name (ofa-el recipes lists them) or file")
    parser.add_argument("file", type=Path, help="where to write the copy (a folder: keeps the recipe's file name)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing file")
    args = parser.parse_args(argv)
    written = copy_recipe(args.recipe, args.file, force=args.force)
    print(f"{written}: {args.recipe} with its extends chain merged; run it with: ofa-el launch {written}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
