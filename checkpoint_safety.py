"""Safe checkpoint loading for stock fairseq on torch >= 2.6.

torch >= 2.6 unpickles with ``weights_only=True`` by default, which refuses the
``argparse.Namespace`` that fairseq (and OFA) checkpoints carry, so resume,
``--restore-file`` and ``fairseq-generate --path`` all fail. Instead of turning the
protection off, this module allow-lists the handful of plain types a fairseq
checkpoint holds (numpy scalars under both numpy 1's and numpy 2's module names, since
OFA's checkpoints were written under numpy 1) and wraps fairseq's loader so that any other pickled object is
refused with an error naming the file, the types, and the explicit opt-in for a file
the user trusts (``OFA_EL_TRUSTED_CHECKPOINTS``, a ``os.pathsep``-separated list), which admits exactly the names
that file was refused for.

It also makes every checkpoint file fairseq writes atomic: fairseq saves the first file
through a temp file and a rename, but then *copies* it to ``checkpoint_last.pt`` /
``checkpoint_best.pt``; a kill during that copy left a truncated checkpoint. Copies now go
to a temp file that is renamed into place.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import pickle
import shutil
from typing import Any, Callable, List, Tuple, Union

import numpy as np
import torch

from .errors import UserError

logger = logging.getLogger(__name__)

TRUSTED_ENV = "OFA_EL_TRUSTED_CHECKPOINTS"


#: numpy's module for its scalar reconstructor, by major version. torch's weights-only unpickler matches the name
#: written in the pickle as text, and numpy 2 renamed the module: a checkpoint written under numpy 1 (OFA's
#: environment) names ``numpy.core.multiarray.scalar``, one written under numpy 2 ``numpy._core.multiarray.scalar``.
NUMPY_MULTIARRAY_NAMES = ("numpy.core.multiarray", "numpy._core.multiarray")

SafeGlobal = Union[Any, Tuple[Any, str]]


def _numpy_checkpoint_globals() -> List[SafeGlobal]:
    """numpy scalars appear in checkpoints as metric values (OFA keeps validation CIDEr as a ``numpy.float64``):
    ``scalar(dtype, bytes)`` rebuilds them, under both module names, and the dtype classes rebuild its dtype."""
    own = NUMPY_MULTIARRAY_NAMES[1] if int(np.__version__.split(".")[0]) >= 2 else NUMPY_MULTIARRAY_NAMES[0]
    scalar = importlib.import_module(own).scalar
    dtype_classes = [type(np.dtype(t)) for t in (np.float64, np.float32, np.int64, np.int32, np.bool_)]
    return [*((scalar, f"{module}.scalar") for module in NUMPY_MULTIARRAY_NAMES), np.dtype, *dtype_classes]


#: Everything beyond torch's own weights-only set that a fairseq / OFA checkpoint holds: a class or function, or a
#: ``(object, "pickled.name")`` pair for an object that checkpoints name in more than one way.
CHECKPOINT_SAFE_GLOBALS: List[SafeGlobal] = [argparse.Namespace] + _numpy_checkpoint_globals()


def global_name(entry: SafeGlobal) -> str:
    """The name under which a pickle refers to an allow-list entry (as torch derives it)."""
    if isinstance(entry, tuple):
        return entry[1]
    return f"{entry.__module__}.{entry.__qualname__}"


class UntrustedCheckpointError(UserError, pickle.UnpicklingError):
    """A checkpoint holds pickled objects outside the allow-list (the message says how to trust it)."""


def _supports_weights_only_allow_list() -> bool:
    """torch >= 2.5: ``add_safe_globals`` with ``(object, name)`` pairs and ``get_unsafe_globals_in_checkpoint``
    (before 2.6, ``torch.load`` unpickles everything by default anyway)."""
    return hasattr(torch.serialization, "get_unsafe_globals_in_checkpoint")


def trusted_paths() -> List[str]:
    raw = os.environ.get(TRUSTED_ENV, "")
    return [os.path.realpath(p) for p in raw.split(os.pathsep) if p]


def foreign_globals(path: str) -> List[str]:
    """Names of the pickled globals in ``path`` that weights-only loading refuses."""
    allowed = {global_name(entry) for entry in CHECKPOINT_SAFE_GLOBALS}
    found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    return [name for name in found if name not in allowed]


def _resolve(name: str) -> Any:
    module, _, attr = name.rpartition(".")
    obj = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def guard_loader(load_fn: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a ``load(path, ...)`` function: refuse foreign objects clearly, honour trust."""

    def guarded(path: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return load_fn(path, *args, **kwargs)
        except pickle.UnpicklingError as err:
            if isinstance(err, UntrustedCheckpointError):
                raise
            local = path
            names = foreign_globals(local) if os.path.isfile(local) else []
            if names and os.path.realpath(local) in trusted_paths():
                logger.warning("loading trusted checkpoint %s with extra pickled types: %s", local, ", ".join(names))
                # each under the name the file uses: numpy 2 resolves numpy.core.* to objects named numpy._core.*
                with torch.serialization.safe_globals([(_resolve(n), n) for n in names]):
                    return load_fn(path, *args, **kwargs)
            what = ", ".join(names) if names else str(err).splitlines()[0]
            raise UntrustedCheckpointError(
                f"refusing to load checkpoint {path}: it holds pickled objects outside the allow-list "
                f"of fairseq checkpoint types ({what}). Loading them could run arbitrary code. If you "
                f"trust this file, list it in the environment variable {TRUSTED_ENV} "
                f"(e.g. {TRUSTED_ENV}={os.path.realpath(local)}) and run again."
            ) from err

    guarded.__wrapped__ = load_fn  # type: ignore[attr-defined]
    guarded.__doc__ = load_fn.__doc__
    return guarded


def atomic_copy(copy_fn: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap ``PathManager.copy``: local copies land in ``dst.tmp`` first, then are renamed over ``dst``."""

    def copy(src_path: str, dst_path: str, overwrite: bool = False) -> bool:
        if "://" in str(dst_path):  # remote storage: leave it to its own manager
            return copy_fn(src_path, dst_path, overwrite)
        if os.path.exists(dst_path) and not overwrite:
            return False
        tmp = f"{dst_path}.tmp"
        shutil.copyfile(src_path, tmp)
        os.replace(tmp, dst_path)
        return True

    copy.__wrapped__ = copy_fn  # type: ignore[attr-defined]
    return staticmethod(copy)


def install() -> None:
    """Allow-list checkpoint types, guard fairseq's loader, make its checkpoint copies atomic (idempotent)."""
    from fairseq import checkpoint_utils
    from fairseq.file_io import PathManager

    if not hasattr(PathManager.copy, "__wrapped__"):
        PathManager.copy = atomic_copy(PathManager.copy)
    if not _supports_weights_only_allow_list():
        return  # torch < 2.4 loads full pickles anyway; nothing to fix
    torch.serialization.add_safe_globals(CHECKPOINT_SAFE_GLOBALS)
    if not hasattr(checkpoint_utils.load_checkpoint_to_cpu, "__wrapped__"):
        checkpoint_utils.load_checkpoint_to_cpu = guard_loader(checkpoint_utils.load_checkpoint_to_cpu)


install()
