"""Margin-aware reshapings of cross-entropy as plain PyTorch modules (no fairseq needed).

``forward(logits, target)`` as timm's losses; ``reduction`` is ``"mean"``, ``"sum"`` or ``"none"``.
"""
from .encouraging import EncouragingLoss, LabelSmoothingEncouragingLoss
from .lgm import LGMLoss
from .poly import Poly1CrossEntropy, Poly1FocalLoss

__all__ = ["EncouragingLoss", "LabelSmoothingEncouragingLoss", "Poly1CrossEntropy", "Poly1FocalLoss", "LGMLoss"]
