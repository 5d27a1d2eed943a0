"""Training entry point used by the launcher: stock ``fairseq-train`` with this plugin loaded.

``python -m ofa_el.tools.train <fairseq-train arguments>`` is ``fairseq-train --user-dir
<plugin> ...``; the launcher runs it directly or under torchrun. Under torchrun without
CUDA, stock fairseq 0.12 crashes (it takes ``rank % torch.cuda.device_count()``) or sizes its
own spawn by the GPU count; here each torchrun process joins an ``env://`` gloo group
instead, so multi-process training runs on CPU too.

OFA's recipes finetune with ``--restore-file <pretrained.pt> --reset-optimizer ...``. Restarted
after a crash, stock fairseq would load the pretrained file again and start over; here a
restart resumes from ``<save-dir>/checkpoint_last.pt`` when there is one (what fairseq's
``--finetune-from-model`` does), and a ``--restore-file`` that does not exist is an error
rather than a silent start from scratch.
"""
from __future__ import annotations

import os
import sys
from typing import List, Optional

from .errors import quiet_logs, run_cli

PLUGIN_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def with_user_dir(argv: List[str]) -> List[str]:
    """Add ``--user-dir <plugin>`` unless given, so the saved config records where the plugin lives."""
    if any(arg == "--user-dir" or arg.startswith("--user-dir=") for arg in argv):
        return argv
    return argv + [f"--user-dir={PLUGIN_DIR}"]


def flag_given(argv: List[str], flag: str) -> bool:
    return any(arg == flag or arg.startswith(flag + "=") for arg in argv)


def with_cpu_torchrun(argv: List[str], env=os.environ) -> List[str]:
    """Under torchrun on a machine without CUDA, join torchrun's env:// group with gloo, one process each."""
    import torch

    world_size = int(env.get("WORLD_SIZE", "1"))
    if world_size <= 1 or torch.cuda.is_available() or flag_given(argv, "--distributed-init-method"):
        return argv
    extra = ["--distributed-init-method=env://", f"--distributed-world-size={world_size}",
             f"--distributed-rank={env['RANK']}", "--distributed-no-spawn", "--device-id=0", "--cpu"]
    if not flag_given(argv, "--distributed-backend"):
        extra.append("--distributed-backend=gloo")
    if not flag_given(argv, "--ddp-backend"):  # torch's DDP wrapper in fairseq 0.12 insists on a CUDA device id
        extra.append("--ddp-backend=legacy_ddp")
    return argv + extra


RESET_FLAGS = ("--reset-optimizer", "--reset-dataloader", "--reset-meters", "--reset-lr-scheduler")
DEFAULT_RESTORE = "checkpoint_last.pt"


def flag_value(argv: List[str], flag: str) -> Optional[str]:
    """The last value given to ``flag`` (``--flag=v`` or ``--flag v``), as argparse would keep it."""
    found = None
    for i, arg in enumerate(argv):
        if arg.startswith(flag + "="):
            found = arg.split("=", 1)[1]
        elif arg == flag and i + 1 < len(argv):
            found = argv[i + 1]
    return found


def _without(argv: List[str], flag: str, takes_value: bool) -> List[str]:
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == flag:
            skip = takes_value
        elif not arg.startswith(flag + "="):
            out.append(arg)
    return out


class MissingRestoreFileError(FileNotFoundError):
    """``--restore-file`` names no file: stock fairseq would train from scratch without a word."""


def resume_or_restore(argv: List[str], log=print) -> List[str]:
    """Resume from ``checkpoint_last.pt`` of the save dir when it exists, instead of restoring the
    pretrained ``--restore-file`` again (and resetting optimizer, schedule and data position)."""
    restore = flag_value(argv, "--restore-file")
    if restore is None or restore == DEFAULT_RESTORE:
        return argv
    last = os.path.join(flag_value(argv, "--save-dir") or "checkpoints", DEFAULT_RESTORE)
    if os.path.isfile(last):
        log(f"ofa_el: {last} exists: resuming from it (--restore-file {restore} and --reset-* "
            "apply to the first launch only)")
        argv = _without(argv, "--restore-file", takes_value=True)
        for flag in RESET_FLAGS:
            argv = _without(argv, flag, takes_value=False)
        return argv
    if not os.path.isfile(restore):
        raise MissingRestoreFileError(f"--restore-file {restore}: no such file (stock fairseq would silently "
                                      "train from scratch); point RESTORE_FILE / --restore-file at the checkpoint")
    return argv


def main(argv: Optional[List[str]] = None) -> None:
    from fairseq_cli import train

    from .. import claim_folder_name, precision

    claim_folder_name()
    quiet_logs()
    argv = with_user_dir(list(sys.argv[1:] if argv is None else argv))
    argv = resume_or_restore(argv, log=lambda message: print(message, file=sys.stderr, flush=True))
    argv = precision.prefer_bf16(argv, log=lambda message: print(message, file=sys.stderr, flush=True))
    sys.argv = [sys.argv[0]] + with_cpu_torchrun(argv)
    with precision.cuda_bfloat16(argv):  # --bf16: bfloat16 on CUDA/CPU, not fairseq's TPU mode
        train.cli_main()


if __name__ == "__main__":
    run_cli(main)
