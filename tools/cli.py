"""``ofa-el``: one command for the plugin's tools, as fairseq has ``fairseq-train``.

    ofa-el recipes                              # every packaged recipe: name, run script, what it trains
    ofa-el launch refcoco/refcocoplus_el        # run a recipe (one process per visible GPU)
    ofa-el launch refcoco/refcocoplus_el --print-config   # the merged recipe and the exact command
    ofa-el cp refcoco/refcocoplus_el my.yaml    # a self-contained, editable copy
    ofa-el train | evaluate | predict | check-data | cider-table | demo | make-tsv  [their arguments]

Each tool command is ``python -m ofa_el.tools.<name>`` with the same arguments (``--help`` on each).
"""
from __future__ import annotations

import importlib.util
import runpy
import sys
from typing import Dict, List, Optional

from .errors import EXIT_USER_ERROR

#: ``ofa-el <command>`` -> the module it runs as ``python -m``.
TOOL_MODULES: Dict[str, str] = {
    "recipes": "ofa_el.tools.recipes",
    "cp": "ofa_el.tools.cp",
    "train": "ofa_el.tools.train",
    "launch": "ofa_el.tools.launch",
    "evaluate": "ofa_el.tools.evaluate",
    "predict": "ofa_el.tools.predict",
    "check-data": "ofa_el.tools.check_data",
    "cider-table": "ofa_el.tools.cider_table",
    "demo": "ofa_el.tools.demo",
    "make-tsv": "ofa_el.tools.make_tsv",
}


def usage() -> str:
    return (__doc__ or "").strip() + "\n\ncommands: " + ", ".join(TOOL_MODULES)


def run_module(module: str, argv: List[str]) -> int:
    """``python -m module argv...`` in this process: the module sees the same ``sys.argv`` and ``__main__``."""
    if importlib.util.find_spec(module) is None:
        print(f"error: {module} is not part of this installation of ofa_el", file=sys.stderr)
        return EXIT_USER_ERROR
    sys.argv = [module, *argv]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as stop:
        return stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else EXIT_USER_ERROR
    name, rest = argv[0], argv[1:]
    if name not in TOOL_MODULES:
        import difflib

        commands = list(TOOL_MODULES)
        close = difflib.get_close_matches(name, commands, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        print(f"error: unknown command {name!r}{hint}; commands: {', '.join(commands)}", file=sys.stderr)
        return EXIT_USER_ERROR
    return run_module(TOOL_MODULES[name], rest)


def entry_point() -> None:
    """The console script (setup.py ``entry_points``)."""
    sys.exit(main())


if __name__ == "__main__":
    entry_point()
