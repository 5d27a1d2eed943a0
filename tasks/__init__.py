"""OFA's ``caption`` and ``refcoco`` tasks on one shared base (ofa_task.py)."""
from . import caption, refcoco  # noqa: F401
