"""Running a command with its output in a log, and showing the end of that log when it fails.

The demo runs each recipe's run script as a user would, and the end-to-end tests do the same: both want the
script's whole output (stdout and stderr interleaved, as on a terminal) and, when it fails, the last lines of it
rather than a bare exit status.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import List, Mapping, Optional

from . import PACKAGE_DIR

RUN_SCRIPTS = Path(PACKAGE_DIR) / "run_scripts"
#: Lines of a failed command's log shown with its error.
TAIL_LINES = 40


class CommandFailed(RuntimeError):
    """A command exited with a non-zero status; the message holds the end of its log."""


def tail(text: str, lines: int = TAIL_LINES) -> str:
    return "".join(text.splitlines(keepends=True)[-lines:])


def run_logged(cmd: List[str], env: Mapping[str, str], log: Optional[Path] = None, cwd: Optional[Path] = None,
               timeout: Optional[float] = None) -> str:
    """Run ``cmd`` with ``env`` (the whole environment), stdout and stderr together into ``log`` (kept in memory
    when None); its output, or :class:`CommandFailed` with the log's end."""
    if log is None:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=dict(env),
                              cwd=cwd, timeout=timeout)
        output, code = proc.stdout, proc.returncode
    else:
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "w") as handle:
            code = subprocess.run(cmd, stdout=handle, stderr=subprocess.STDOUT, env=dict(env), cwd=cwd,
                                  timeout=timeout).returncode
        output = log.read_text()
    if code != 0:
        where = f"the end of {log}" if log is not None else "the end of its output"
        raise CommandFailed(f"{' '.join(cmd)} failed (exit {code}); {where}:\n{tail(output)}")
    return output


def run_demo_script(script: str, env: Mapping[str, str], *args: str, log: Optional[Path] = None,
                    cwd: Optional[Path] = None, timeout: Optional[float] = None) -> str:
    """``run_scripts/<script>`` in demo mode (``DEMO=1``, this Python), ``env`` added to the current environment."""
    full_env = dict(os.environ, DEMO="1", PYTHON=sys.executable, PYTHONUNBUFFERED="1", **env)
    return run_logged(["sh", str(RUN_SCRIPTS / script), *args], full_env, log=log, cwd=cwd, timeout=timeout)
