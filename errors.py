"""The errors that are the user's to fix: a bad option, a missing file, bad content in a data file.

Each message already says what is wrong and where (the flag, the file, the row), so the entry points
print it as one ``error: <message>`` line (``tools/errors.py``). Everything else, a ``ValueError``
from a bug included, is not one of these and keeps its traceback: the rule is the type, never where
the error was raised.

The classes also derive from the builtin they refine (``ValueError``, ``FileNotFoundError``), so a
caller catching the builtin catches them too. They live at the package root because the core
(criteria, tasks, datasets, model) raises them and must not depend on the command-line tools.
"""
from __future__ import annotations


class UserError(Exception):
    """A problem the user fixes; the message says what and where."""


class OptionError(UserError, ValueError):
    """A command-line option (or API argument) that is missing or has a value that cannot work; the
    message names it (``--log-end: must lie in (0, 1], got 0``)."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder that is not there; the message names it and the option or variable that set it."""


class InvalidDataError(UserError, ValueError):
    """Content of the user's data (a TSV field, an annotation file, a pickled table) that cannot be used.

    A row parser raises it with only the reason; the dataset that knows the file and row turns it into
    :class:`~ofa_el.data.tsv.InvalidRowError`. Elsewhere the message names the file itself.
    """
