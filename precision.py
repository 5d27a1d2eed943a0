"""``--bf16`` for the training entry point: bfloat16 on CUDA GPUs (and on CPU), not fairseq 0.12's TPU mode.

fairseq 0.12 already trains ``--bf16`` as mixed precision: the Trainer casts the model and each batch to
bfloat16, and its half-precision optimizer (``FP16Optimizer``) keeps float32 master weights and, for
bfloat16, no loss scaler. Only its argument parsing stands in the way: ``--bf16`` sets ``--tpu``, and the
Trainer then asks for an XLA device. :func:`cuda_bfloat16` undoes that implication while fairseq-train
parses its arguments (unless ``--tpu`` is given), and refuses a GPU without native bfloat16 arithmetic
(compute capability below 8.0, e.g. V100, T4) with the fix in the message, rather than letting it emulate
bfloat16 slowly. bfloat16 has float32's exponent range, so EL's larger gradients need no loss scaling;
the fused EL still accumulates in float32 (losses/fused.py).

The recipes keep OFA's ``--fp16``; ``--bf16`` on the command line replaces it (:func:`prefer_bf16`).
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Callable, Iterator, List

from .errors import UserError

logger = logging.getLogger(__name__)

BF16_FLAGS = ("--bf16", "--memory-efficient-bf16")
FP16_FLAGS = ("--fp16", "--memory-efficient-fp16")
#: Native bfloat16 matrix arithmetic starts with Ampere (compute capability 8.0).
BF16_MIN_CAPABILITY = (8, 0)


def _given(argv: List[str], flag: str) -> bool:
    return any(arg == flag or arg.startswith(flag + "=") for arg in argv)


def prefer_bf16(argv: List[str], log: Callable[[str], None] = logger.info) -> List[str]:
    """With ``--bf16`` (or ``--memory-efficient-bf16``) given, drop a recipe's ``--fp16`` flags: fairseq cannot
    combine them, and the one added on the command line is the one asked for. A recipe's memory-efficient
    fp16 optimizer becomes the memory-efficient bf16 one."""
    dropped = [arg for arg in argv if arg in FP16_FLAGS]
    if not dropped or not any(_given(argv, flag) for flag in BF16_FLAGS):
        return argv
    kept = [arg for arg in argv if arg not in FP16_FLAGS]
    if "--memory-efficient-fp16" in dropped and not _given(kept, "--memory-efficient-bf16"):
        kept.append("--memory-efficient-bf16")
    log(f"ofa_el: --bf16 given: the recipe's {' '.join(dropped)} dropped, training in bfloat16")
    return kept


def check_bf16_device(cuda_devices: int, capability: Callable[[int], tuple], name: Callable[[int], str]) -> None:
    """Refuse bfloat16 on a GPU without native bfloat16 arithmetic (every visible device is checked)."""
    for index in range(cuda_devices):
        major, minor = capability(index)
        if (major, minor) < BF16_MIN_CAPABILITY:
            raise UserError(
                f"--bf16: GPU {index} ({name(index)}, compute capability {major}.{minor}) has no native bfloat16 "
                f"arithmetic (it needs {BF16_MIN_CAPABILITY[0]}.{BF16_MIN_CAPABILITY[1]} or newer: A100, H100, "
                "RTX 30xx and later); train with the recipe's --fp16 instead (drop --bf16)")


def use_bf16_off_tpu(args) -> None:
    """fairseq's parsed arguments: ``--bf16`` without its ``--tpu`` implication, checked against the GPUs."""
    import torch

    if not getattr(args, "bf16", False):
        return
    args.tpu = False
    if torch.cuda.is_available() and not getattr(args, "cpu", False):
        check_bf16_device(torch.cuda.device_count(), torch.cuda.get_device_capability, torch.cuda.get_device_name)
        logger.info("ofa_el: --bf16: bfloat16 on CUDA, float32 master weights, no loss scaling")
    else:
        logger.info("ofa_el: --bf16: bfloat16 on CPU, float32 master weights, no loss scaling")


@contextmanager
def cuda_bfloat16(argv: List[str]) -> Iterator[None]:
    """While fairseq-train runs inside this block, ``--bf16`` means bfloat16 on the GPUs (or CPU) instead of a
    TPU: fairseq's parser is wrapped to undo the implication, unless ``--tpu`` is in ``argv``."""
    from fairseq import options

    if _given(argv, "--tpu"):
        yield
        return
    parse = options.parse_args_and_arch

    def parse_without_tpu(*args, **kwargs):
        parsed = parse(*args, **kwargs)
        use_bf16_off_tpu(parsed[0] if isinstance(parsed, tuple) else parsed)
        return parsed

    options.parse_args_and_arch = parse_without_tpu
    try:
        yield
    finally:
        options.parse_args_and_arch = parse
