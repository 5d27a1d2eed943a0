"""OFA's ``caption``, ``refcoco`` and ``vqa_gen`` tasks on one shared base (ofa_task.py)."""
from . import caption, refcoco, vqa_gen  # noqa: F401
