"""Unpickling data files that users download (OFA's CIDEr tables, answer lists) without running their code.

A pickle can name any importable callable and call it while loading. These files hold plain data
(dicts, tuples, strings, numbers), which pickle writes with opcodes of its own; the few globals a
format really needs (``collections.defaultdict`` in a CIDEr table) are allow-listed by the caller,
and every other global is refused before it is imported.
"""
from __future__ import annotations

import os
import pickle
from typing import AbstractSet, Any, Tuple

from ..errors import InvalidDataError, MissingFileError

Global = Tuple[str, str]


class RefusedGlobal(pickle.UnpicklingError):
    """A pickle names a global outside the allow-list; the message is ``module.name``."""


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that imports only the ``(module, name)`` globals in ``allowed``."""

    def __init__(self, file, allowed: AbstractSet[Global], **options):
        super().__init__(file, **options)
        self.allowed = allowed

    def find_class(self, module: str, name: str):
        if (module, name) not in self.allowed:
            raise RefusedGlobal(f"{module}.{name}")
        return super().find_class(module, name)


def load_restricted_pickle(path: str, option: str, kind: str, allowed: AbstractSet[Global] = frozenset(),
                           holds: str = "dicts, lists, tuples, strings and numbers") -> Any:
    """The object pickled in ``path``; a refused global or an unreadable file is an
    :class:`~ofa_el.errors.InvalidDataError`.

    ``option`` (the flag the path came from) and ``kind`` (of file, e.g. "CIDEr table") make the
    messages: ``--opt path: refusing to load 'os.system': a CIDEr table holds only ...``. Files
    written by Python 2 load too (``latin1``, as OFA reads them).
    """
    if not os.path.isfile(path):
        raise MissingFileError(f"{option}: file not found: {path}")
    with open(path, "rb") as handle:
        try:
            return RestrictedUnpickler(handle, allowed, encoding="latin1").load()
        except RefusedGlobal as refused:
            article = "an" if kind[:1].lower() in "aeiou" else "a"
            raise InvalidDataError(f"{option} {path}: refusing to load {str(refused)!r}: {article} {kind} holds only "
                                   f"{holds}") from None
        except Exception as err:  # any parse failure of an untrusted file is a bad file, not a crash
            raise InvalidDataError(f"{option} {path}: not a readable {kind} pickle "
                                   f"({type(err).__name__}: {err})") from None
