"""Training entry point used by the launcher: stock ``fairseq-train`` with this plugin loaded.

``python -m ofa_el.tools.train <fairseq-train arguments>`` is ``fairseq-train --user-dir
<plugin> ...``; the launcher runs it directly or under torchrun. Under torchrun without
CUDA, stock fairseq 0.12 crashes (it takes ``rank % torch.cuda.device_count()``) or sizes its
own spawn by the GPU count; here each torchrun process joins an ``env://`` gloo group
instead, so multi-process training runs on CPU too.
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


def _given(argv: List[str], flag: str) -> bool:
    return any(arg == flag or arg.startswith(flag + "=") for arg in argv)


def with_cpu_torchrun(argv: List[str], env=os.environ) -> List[str]:
    """Under torchrun on a machine without CUDA, join torchrun's env:// group with gloo, one process each."""
    import torch

    world_size = int(env.get("WORLD_SIZE", "1"))
    if world_size <= 1 or torch.cuda.is_available() or _given(argv, "--distributed-init-method"):
        return argv
    extra = ["--distributed-init-method=env://", f"--distributed-world-size={world_size}",
             f"--distributed-rank={env['RANK']}", "--distributed-no-spawn", "--device-id=0", "--cpu"]
    if not _given(argv, "--distributed-backend"):
        extra.append("--distributed-backend=gloo")
    if not _given(argv, "--ddp-backend"):  # torch's DDP wrapper in fairseq 0.12 insists on a CUDA device id
        extra.append("--ddp-backend=legacy_ddp")
    return argv + extra


def main(argv: Optional[List[str]] = None) -> None:
    from fairseq_cli import train

    argv = with_user_dir(list(sys.argv[1:] if argv is None else argv))
    sys.argv = [sys.argv[0]] + with_cpu_torchrun(argv)
    train.cli_main()


if __name__ == "__main__":
    main()
