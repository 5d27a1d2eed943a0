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

What stock fairseq-train reports as a traceback (no arguments, an unknown ``--arch``, no ``--batch-size``)
or only after the model is built (a data file or BPE folder that is not there) is checked first and
reported as one ``error:`` line.
"""
from __future__ import annotations

import os
import sys
from typing import List, Optional

from ..flags import DEFAULT_RESTORE, flag_given, flag_value, with_user_dir, without_flag
from .errors import MissingFileError, OptionError, quiet_logs, run_cli


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


class MissingRestoreFileError(MissingFileError):
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
        argv = without_flag(argv, "--restore-file", takes_value=True)
        for flag in RESET_FLAGS:
            argv = without_flag(argv, flag, takes_value=False)
        return argv
    if not os.path.isfile(restore):
        raise MissingRestoreFileError(f"--restore-file {restore}: no such file (stock fairseq would silently "
                                      "train from scratch); point RESTORE_FILE / --restore-file at the checkpoint")
    return argv


USAGE = ("python -m ofa_el.tools.train TRAIN.tsv,VALID.tsv --task caption --arch ofa_large --batch-size 8 "
         "--bpe-dir BPE ... (fairseq-train's flags), or a recipe, which sets them all: ofa-el launch "
         "caption/stage1_el (`ofa-el recipes` lists them)")


def _registered(registry: dict, flag: str, name: Optional[str]) -> None:
    """``name`` is in fairseq's ``registry``, else an error listing this plugin's choices and close matches."""
    import difflib

    if name in registry:
        return
    plugin = (__package__ or __name__).split(".")[0]  # "__main__" under python -m
    own = sorted(key for key, value in registry.items() if getattr(value, "__module__", "").startswith(plugin + "."))
    close = difflib.get_close_matches(str(name), list(registry), n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise OptionError(f"{flag} {name}: unknown{hint}; this plugin's: {', '.join(own)}")


def parse_quietly(parse):
    """Run an argparse ``parse``; its error becomes one OptionError line instead of fairseq's page-long usage."""
    import contextlib
    import io

    printed = io.StringIO()
    try:
        with contextlib.redirect_stderr(printed):
            return parse()
    except SystemExit as stop:
        if stop.code in (0, None):
            raise
        reason = printed.getvalue().strip().splitlines()[-1].split(" error: ", 1)[-1]
        raise OptionError(f"{reason}: {USAGE}") from None


def check_arguments(argv: List[str]) -> None:
    """What fairseq-train would report as a bare traceback, or only after the model is built."""
    if "-h" in argv or "--help" in argv:
        return
    if not argv:
        raise OptionError(f"no arguments: {USAGE}")
    for flag in ("--task", "--arch"):
        if not flag_given(argv, flag):
            raise OptionError(f"{flag}: required: {USAGE}")
    if not any(flag_given(argv, flag) for flag in ("--batch-size", "--max-sentences", "--max-tokens")):
        raise OptionError("--batch-size: required: OFA's datasets batch a fixed number of rows per process "
                          "(OFA's recipes: 8 for caption stage 1, 4 for RefCOCO)")
    from fairseq import options
    from fairseq.models import ARCH_MODEL_REGISTRY
    from fairseq.tasks import TASK_REGISTRY

    _registered(TASK_REGISTRY, "--task", flag_value(argv, "--task"))
    _registered(ARCH_MODEL_REGISTRY, "--arch", flag_value(argv, "--arch"))
    args = parse_quietly(lambda: options.parse_args_and_arch(options.get_training_parser(), input_args=argv))
    from ..preflight import check_bpe_dir, check_data_files

    if getattr(args, "data", None):
        check_data_files(args.data)
    if hasattr(args, "bpe_dir"):
        check_bpe_dir(args.bpe_dir)


def main(argv: Optional[List[str]] = None) -> None:
    from fairseq_cli import train

    from .. import claim_folder_name, precision

    claim_folder_name()
    quiet_logs()
    argv = list(sys.argv[1:] if argv is None else argv)
    argv = precision.prefer_bf16(argv, log=lambda message: print(message, file=sys.stderr, flush=True))
    check_arguments(argv)  # after prefer_bf16: fairseq's parser refuses --fp16 beside --bf16
    argv = with_user_dir(argv)
    argv = resume_or_restore(argv, log=lambda message: print(message, file=sys.stderr, flush=True))
    sys.argv = [sys.argv[0]] + with_cpu_torchrun(argv)
    with precision.cuda_bfloat16(argv):  # --bf16: bfloat16 on CUDA/CPU, not fairseq's TPU mode
        train.cli_main()


if __name__ == "__main__":
    run_cli(main)
