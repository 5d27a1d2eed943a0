"""Stock fairseq 0.12's EMA (``--store-ema``) made usable for OFA models, as OFA's vendored fairseq has it.

Three gaps, all hit by OFA's VQA recipe (``--store-ema --ema-fp32 --ema-decay 0.9999``, restoring
``ofa_large.pt``, which holds no EMA):

* The EMA step multiplies every state entry by the decay, integer buffers included; an OFA model has
  integer buffers (the relative-position bucket tables, BatchNorm's ``num_batches_tracked``) and the
  in-place float multiply of an integer tensor raises. OFA's EMA copies non-floating entries instead; the
  EMA built here lists them as fairseq's ``skip_keys``, which are copied.
* With ``--ema-fp32``, fairseq's fp32 copy of an fp32 model is the model's own tensors, one object for all
  names of a tied weight (``--share-all-embeddings``), which the step then decays once per name; the copy
  is made one tensor per name here (without ``--ema-fp32`` the same happens to the EMA model's tensors:
  refused for a model with tied weights).
* Restoring a checkpoint without an ``ema`` entry, the trainer initialises the EMA from
  ``state["model"]``, which it has already deleted (a ``KeyError``). Here, while the trainer loads a
  checkpoint with ``--store-ema``, a checkpoint without ``ema`` gets its own model weights as ``ema``
  (no copy): the EMA starts from the restored weights, as in OFA.

:func:`install` applies both to fairseq's trainer; the plugin calls it on import (idempotent).
"""
from __future__ import annotations

import contextlib
import functools
from typing import Any, Dict, Iterator, List

import torch

from .errors import OptionError


def non_floating_keys(model: torch.nn.Module) -> set:
    """State entries an average makes no sense for (integer tables, counters): copied, not decayed."""
    return {key for key, value in model.state_dict().items()
            if isinstance(value, torch.Tensor) and not torch.is_floating_point(value)}


def tied_keys(model: torch.nn.Module) -> List[str]:
    """State entries that share storage with an earlier entry (``--share-all-embeddings``)."""
    seen, tied = set(), []
    for key, value in model.state_dict().items():
        if isinstance(value, torch.Tensor) and value.numel():
            pointer = value.data_ptr()
            if pointer in seen:
                tied.append(key)
            seen.add(pointer)
    return tied


def integer_safe(build_ema):
    @functools.wraps(build_ema)
    def build(model, cfg, device):
        ema = build_ema(model, cfg, device)
        ema.skip_keys = set(ema.skip_keys) | non_floating_keys(model)
        tied = tied_keys(ema.get_model())
        if tied and not cfg.ema_fp32:
            raise OptionError(f"--store-ema without --ema-fp32: fairseq's EMA decays a weight once per name it has, "
                              f"and {tied[0]} shares its weight with another entry (tied embeddings); add --ema-fp32")
        if cfg.ema_fp32:  # fairseq's fp32 copy aliases fp32 weights (and tied weights): one tensor per name
            ema.fp32_params = {key: value.clone() for key, value in ema.fp32_params.items()}
        return ema
    return build


def with_weights_as_ema(state: Dict[str, Any]) -> Dict[str, Any]:
    """``state`` with ``extra_state["ema"]`` set to its model weights when it has none."""
    extra_state = state.get("extra_state")
    if isinstance(extra_state, dict) and "ema" not in extra_state and "model" in state:
        extra_state["ema"] = state["model"]
    return state


@contextlib.contextmanager
def ema_seeded_from_weights(checkpoint_utils) -> Iterator[None]:
    load = checkpoint_utils.load_checkpoint_to_cpu
    checkpoint_utils.load_checkpoint_to_cpu = lambda *args, **kwargs: with_weights_as_ema(load(*args, **kwargs))
    try:
        yield
    finally:
        checkpoint_utils.load_checkpoint_to_cpu = load


def seeding_ema_on_restore(load_checkpoint):
    @functools.wraps(load_checkpoint)
    def load(self, *args, **kwargs):
        if not self.cfg.ema.store_ema:
            return load_checkpoint(self, *args, **kwargs)
        from fairseq import checkpoint_utils

        with ema_seeded_from_weights(checkpoint_utils):
            return load_checkpoint(self, *args, **kwargs)
    return load


def install() -> None:
    from fairseq import trainer

    if not hasattr(trainer.build_ema, "__wrapped__"):
        trainer.build_ema = integer_safe(trainer.build_ema)
    if not hasattr(trainer.Trainer.load_checkpoint, "__wrapped__"):
        trainer.Trainer.load_checkpoint = seeding_ema_on_restore(trainer.Trainer.load_checkpoint)


install()
