"""What the entry points print: one rule for user errors, and logs without third-party noise.

A bad row, a missing file or a bad option is the user's to fix, and its message already says
what and where: the entry points print ``error: <message>`` and exit with status 2 instead of a
Python traceback. Anything else is a bug and keeps its traceback. ``OFA_EL_TRACEBACK=1`` shows
the traceback of user errors too.

The rule is typed: :class:`UserError` and its family (:class:`OptionError`, :class:`MissingFileError`,
``launch.RecipeError``, ``data.tsv.InvalidRowError``), and the OS's "no such file" family. The option
checks of the criteria, tasks and models raise plain ``ValueError`` with the flag in the message; those
count as the user's only when the plugin raised them itself (its innermost frame is plugin code), so a
``ValueError`` from torch, fairseq or the standard library, or from a bug, keeps its traceback.

Importing fairseq leaves the root logger at DEBUG, so every PNG chunk PIL reads and hydra's
start-up would be logged; :func:`quiet_logs` keeps INFO for everyone else.
"""
from __future__ import annotations

import logging
import os
import sys
import traceback
import warnings
from typing import Callable, TypeVar

PLUGIN_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXIT_USER_ERROR = 2
T = TypeVar("T")


class UserError(Exception):
    """Raised by entry points for a problem the user fixes (its message says what and where)."""


class OptionError(UserError, ValueError):
    """A command-line option that is missing or has a value that cannot work; the message names the flag."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder the command needs is not there; the message names it and how to point at it."""


def _raised_by_plugin(err: BaseException) -> bool:
    """Whether the innermost frame of ``err``'s traceback is this plugin's code (a deliberate check)."""
    frames = traceback.extract_tb(err.__traceback__)
    if not frames:
        return False
    inside = os.path.relpath(os.path.abspath(frames[-1].filename), PLUGIN_DIR)
    parts = inside.split(os.sep)
    # a virtualenv or build folder inside a clone holds other people's code
    return parts[0] not in ("..", ".venv", "build", "tests") and "site-packages" not in parts


def is_user_error(err: BaseException) -> bool:
    """A path that is not there or not readable, or a ValueError the plugin raised on purpose (bad row,
    bad option value), is the user's; a ValueError from deep inside torch or fairseq is not."""
    if isinstance(err, (UserError, FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)):
        return True
    return isinstance(err, ValueError) and _raised_by_plugin(err)


#: Libraries that log at DEBUG/INFO what nobody running a recipe needs to read.
NOISY_LOGGERS = ("PIL", "hydra", "matplotlib", "urllib3", "h5py")


def quiet_logs(level: int = logging.INFO) -> None:
    """Root logger at ``level`` (INFO: fairseq's own lines stay), the noisy libraries at WARNING, and
    warnings about fairseq's own use of hydra and of pin_memory on a CPU (nothing a user can change) hidden."""
    logging.getLogger().setLevel(level)
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r"(?is).*hydra")
    warnings.filterwarnings("ignore", message=r".*'pin_memory' argument is set as true but no accelerator")


def run_cli(main: Callable[[], T]) -> T:
    """Run an entry point's ``main``; a user error becomes ``error: <message>`` and exit status 2."""
    try:
        return main()
    except Exception as err:  # noqa: BLE001  (sorted into user errors and bugs right here)
        if not is_user_error(err) or os.environ.get("OFA_EL_TRACEBACK", "") not in ("", "0"):
            raise
        print(f"error: {err}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_USER_ERROR) from None
