"""What the entry points print: one rule for user errors, and logs without third-party noise.

A bad row, a missing file or a bad option is the user's to fix, and its message already says
what and where: the entry points print ``error: <message>`` and exit with status 2 instead of a
Python traceback. The rule is the type: :class:`~ofa_el.errors.UserError` and its family
(``OptionError``, ``MissingFileError``, ``InvalidDataError``, ``data.tsv.InvalidRowError``,
``recipes.RecipeError``). Any other exception, a ``ValueError`` or an OS "no such file" error the
plugin did not check for included, is a bug and keeps its traceback. ``OFA_EL_TRACEBACK=1`` shows the
traceback of user errors too.

Importing fairseq leaves the root logger at DEBUG, so every PNG chunk PIL reads and hydra's
start-up would be logged; :func:`quiet_logs` keeps INFO for everyone else.
"""
from __future__ import annotations

import logging
import os
import sys
import warnings
from typing import Callable, TypeVar

from ..errors import InvalidDataError, MissingFileError, OptionError, UserError

__all__ = ["EXIT_USER_ERROR", "InvalidDataError", "MissingFileError", "OptionError", "UserError", "is_user_error",
           "quiet_logs", "run_cli"]

EXIT_USER_ERROR = 2
T = TypeVar("T")


def is_user_error(err: BaseException) -> bool:
    """Whether ``err`` is one of the typed user errors (printed as one line); anything else is a bug."""
    return isinstance(err, UserError)


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
