"""Training entry point used by the launcher: stock ``fairseq-train`` with this plugin loaded.

``python -m ofa_el.tools.train <fairseq-train arguments>`` is ``fairseq-train --user-dir
<plugin> ...``; the launcher runs it directly or under torchrun.
"""
from __future__ import annotations

import os
import sys
from typing import List, Optional


PLUGIN_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def with_user_dir(argv: List[str]) -> List[str]:
    """Add ``--user-dir <plugin>`` unless given, so the saved config records where the plugin lives."""
    if any(arg == "--user-dir" or arg.startswith("--user-dir=") for arg in argv):
        return argv
    return argv + [f"--user-dir={PLUGIN_DIR}"]


def main(argv: Optional[List[str]] = None) -> None:
    from fairseq_cli import train

    sys.argv = [sys.argv[0]] + with_user_dir(list(sys.argv[1:] if argv is None else argv))
    train.cli_main()


if __name__ == "__main__":
    main()
