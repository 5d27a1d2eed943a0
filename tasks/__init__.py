"""OFA's ``caption``, ``refcoco``, ``vqa_gen``, ``snli_ve`` and ``image_classify`` tasks on one shared base
(ofa_task.py)."""
from . import caption, image_classify, refcoco, snli_ve, vqa_gen  # noqa: F401
