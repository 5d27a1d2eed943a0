"""A trained checkpoint made ready for evaluation or prediction: its task rebuilt with this machine's paths, the
model in eval mode, and the generation options both commands take.

A checkpoint stores its training run's task settings: data files, a CIDEr table and ``--eval-args`` that serve
only training and validation (OFA's relative paths, another machine's files), and a BPE folder that may not exist
here. :func:`load_for_inference` switches the first off and replaces the second before the task is built, so the
task is never edited afterwards.
"""
from __future__ import annotations

import argparse
import logging
import os
from typing import Any, Dict, Optional, Tuple

from .preflight import BPE_FILES, check_bpe_dir
from .errors import MissingFileError, UserError

logger = logging.getLogger("ofa_el.inference")

#: Task settings that serve only training or validation, switched off when a checkpoint is evaluated or used for
#: prediction: their stored values (OFA's relative paths, another machine's files) name nothing that generation reads.
TRAINING_ONLY_SETTINGS: Dict[str, Any] = {"data": None, "eval_cider": False, "eval_cider_cached_tokens": None,
                                          "eval_acc": False, "eval_args": "{}"}


def add_generation_options(parser: argparse.ArgumentParser) -> None:
    """Batching, beam and length options with evaluation's defaults (``evaluate`` and ``predict`` take them)."""
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--max-len-a", type=float, default=0)
    parser.add_argument("--max-len-b", type=int, default=None, help="default: 16 for caption, 4 for refcoco")
    parser.add_argument("--min-len", type=int, default=None, help="default: 1 for caption, 4 for refcoco")
    parser.add_argument("--no-repeat-ngram-size", type=int, default=None,
                        help="default: 3 for caption and refcoco, 0 for vqa_gen (OFA's VQA beam search blocks none)")
    parser.add_argument("--unrestricted-decoding", action="store_true",
                        help="refcoco: let the decoder emit any token as a coordinate (OFA's behaviour)")
    parser.add_argument("--cpu", action="store_true", help="run on CPU even if CUDA is available")


def generation_args(args: argparse.Namespace, task_name: str) -> argparse.Namespace:
    """The beam search settings of :func:`add_generation_options`, each unset one at the task's default."""
    box, vqa = task_name == "refcoco", task_name == "vqa_gen"
    options = argparse.Namespace(
        beam=args.beam, max_len_a=args.max_len_a,
        max_len_b=args.max_len_b if args.max_len_b is not None else (4 if box else 200 if vqa else 16),
        min_len=args.min_len if args.min_len is not None else (4 if box else 1),
        no_repeat_ngram_size=args.no_repeat_ngram_size if args.no_repeat_ngram_size is not None else (0 if vqa else 3),
    )
    if vqa:  # OFA's evaluate_vqa_beam.sh: --unnormalized --temperature=1.0; the forced prompt counts in max_len_b
        options.unnormalized, options.temperature = True, 1.0
    return options


def ignore_training_settings(path: str, task_cfg) -> Dict[str, Any]:
    """Overrides for :data:`TRAINING_ONLY_SETTINGS`, logging in one line those the checkpoint had set."""
    stored = {name: task_cfg.get(name) for name, off in TRAINING_ONLY_SETTINGS.items()
              if task_cfg.get(name) not in (None, off)}
    if stored:
        logger.info("%s: ignoring its stored training/validation settings (not needed here): %s", path,
                    ", ".join(f"{name}={value!r}" for name, value in stored.items()))
    return dict(TRAINING_ONLY_SETTINGS)


def bpe_dir_for(bpe_dir: Optional[str], path: str, task_cfg) -> str:
    """``--bpe-dir`` when given, else the folder checkpoint ``path`` was trained with when it exists here; checked
    to hold the BPE files either way."""
    if bpe_dir is not None:
        check_bpe_dir(bpe_dir)
        return bpe_dir
    stored = task_cfg.get("bpe_dir")
    source = f"{path} was trained with --bpe-dir {stored}"
    if not stored or not os.path.isdir(stored):
        raise MissingFileError(f"{source}, which is not a directory here: pass --bpe-dir DIR "
                               f"({', '.join(BPE_FILES)})")
    check_bpe_dir(stored, fix="; pass --bpe-dir DIR", named=source)
    return stored


def apply_overrides(state: Dict[str, Any], overrides: Dict[str, Any]) -> None:
    """What fairseq's ``arg_overrides`` does when it reads the file; done here because the state is read once."""
    from fairseq.dataclass.utils import overwrite_args_by_name

    if state.get("args") is not None:
        for name, value in overrides.items():
            if hasattr(state["args"], name):  # a task's options only: the rest would be unknown to it
                setattr(state["args"], name, value)
    overwrite_args_by_name(state["cfg"], overrides)


def load_for_inference(path: str, state: Dict[str, Any], overrides: Dict[str, Any], bpe_dir: Optional[str] = None,
                       ema: bool = False, use_cuda: bool = False) -> Tuple[Any, Any, Any]:
    """``(model, cfg, task)`` of the checkpoint ``path`` (its ``state`` already read) with the task settings
    ``overrides`` applied before the task is built; ``bpe_dir``: ``--bpe-dir`` (None: the checkpoint's own, see
    :func:`bpe_dir_for`); ``ema``: the checkpoint's EMA weights (``--store-ema``)."""
    from fairseq import checkpoint_utils

    task_cfg = state["cfg"].task
    ignored = ignore_training_settings(path, task_cfg)
    apply_overrides(state, {**ignored, "bpe_dir": bpe_dir_for(bpe_dir, path, task_cfg), **overrides})
    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([path], state=state)
    model = models[0]
    if ema:
        weights = (state.get("extra_state") or {}).get("ema")
        if weights is None:
            raise UserError(f"--ema-eval: {path} holds no EMA weights (train with --store-ema)")
        model.load_state_dict(weights, strict=True)
    return (model.cuda() if use_cuda else model).eval(), cfg, task
