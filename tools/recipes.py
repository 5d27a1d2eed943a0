"""``ofa-el recipes``: every packaged recipe, with the run script that launches it and what it trains.

    ofa-el recipes                                   # name, run script, what it trains
    ofa-el cp refcoco/refcocoplus_el my_run.yaml     # its extends chain merged in: edit it, then
    ofa-el launch my_run.yaml                        # ... launch it from any folder
"""
from __future__ import annotations

import argparse
from typing import List, Optional

from ..recipes import recipe_table
from .errors import run_cli


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="ofa-el recipes", description="List the packaged recipes.")
    parser.parse_args(argv)
    print("\n".join(recipe_table()))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
