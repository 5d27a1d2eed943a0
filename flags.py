"""Reading and editing a fairseq command line as a list of strings, as argparse would read it.

The launcher, the training entry point and the pre-launch checks look at a few flags of a command they pass on
untouched (``--batch-size``, ``--save-dir``, ``--restore-file`` ...): these helpers read a flag given as
``--flag value`` or ``--flag=value`` without building fairseq's whole parser.
"""
from __future__ import annotations

from typing import List, Optional

from . import PACKAGE_DIR, claim_folder_name

#: fairseq's default ``--restore-file``: the save dir's last checkpoint, which a restarted run resumes from.
DEFAULT_RESTORE = "checkpoint_last.pt"


def flag_given(argv: List[str], flag: str) -> bool:
    return any(arg == flag or arg.startswith(flag + "=") for arg in argv)


def flag_value(argv: List[str], flag: str) -> Optional[str]:
    """The last value given to ``flag`` (``--flag=v`` or ``--flag v``), as argparse would keep it."""
    found = None
    for i, arg in enumerate(argv):
        if arg.startswith(flag + "="):
            found = arg.split("=", 1)[1]
        elif arg == flag and i + 1 < len(argv):
            found = argv[i + 1]
    return found


def without_flag(argv: List[str], flag: str, takes_value: bool) -> List[str]:
    """``argv`` with every occurrence of ``flag`` (and its value, when it ``takes_value``) left out."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == flag:
            skip = takes_value
        elif not arg.startswith(flag + "="):
            out.append(arg)
    return out


def with_user_dir(argv: List[str]) -> List[str]:
    """Add ``--user-dir <plugin>`` unless given, so the saved config records where the plugin lives; and let fairseq,
    which imports a user-dir by its folder name, find this loaded package under it (a clone in ``/tmp/tmp.Ab3x``)."""
    claim_folder_name()
    if flag_given(argv, "--user-dir"):
        return argv
    return argv + [f"--user-dir={PACKAGE_DIR}"]
