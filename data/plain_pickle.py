"""Unpickling files that should hold plain data only (CIDEr tables, RefCOCO's refs pickles).

A pickle can name any importable callable and have it called while loading, so an untrusted
file must never reach :func:`pickle.load`. :func:`load_plain_pickle` admits the containers,
strings and numbers that pickle encodes without naming a global, plus an explicit allow-list
of globals (a CIDEr table needs ``collections.defaultdict`` and ``float``); anything else is
refused, naming the file, before any of it runs.
"""
from __future__ import annotations

import os
import pickle
from typing import Any, FrozenSet, Tuple

Global = Tuple[str, str]


class RefusedGlobal(pickle.UnpicklingError):
    """A pickle names a global (``module.name``) outside the allow-list."""


class PlainUnpickler(pickle.Unpickler):
    """An unpickler that imports only the ``allowed_globals``: a crafted pickle cannot call anything else."""

    def __init__(self, file, allowed_globals: FrozenSet[Global] = frozenset(), **kwargs):
        super().__init__(file, **kwargs)
        self.allowed_globals = allowed_globals

    def find_class(self, module: str, name: str):
        if (module, name) not in self.allowed_globals:
            raise RefusedGlobal(f"{module}.{name}")
        return super().find_class(module, name)


def load_plain_pickle(path: str, where: str, what: str, holds: str,
                      allowed_globals: FrozenSet[Global] = frozenset(), encoding: str = "latin1") -> Any:
    """The object pickled in ``path``; ``ValueError`` starting with ``where`` for a refused or unreadable file.

    ``what`` names the kind of file and ``holds`` what it may contain, for the messages (``"a CIDEr table
    holds only dicts, tuples, strings and numbers"``). ``encoding`` decodes Python 2 ``str`` objects
    (latin-1 maps every byte, as Python 2 wrote them).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{where}: file not found")
    with open(path, "rb") as handle:
        try:
            return PlainUnpickler(handle, allowed_globals, encoding=encoding).load()
        except RefusedGlobal as refused:
            raise ValueError(f"{where}: refusing to load {str(refused)!r}: a {what} holds only {holds}") from None
        except Exception as err:  # any parse failure of an untrusted file is a bad file, not a crash
            raise ValueError(f"{where}: not a readable {what} pickle ({type(err).__name__}: {err})") from None
