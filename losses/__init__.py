"""The loss math, torch only (no fairseq needed).

* :mod:`.terms`: the per-token loss as a sum of terms (label-smoothed CE, the encouraging bonus,
  Poly-1), each with its reference value and its closed-form fused gradient;
* :mod:`.token_loss` / :mod:`.fused`: the drivers that sum terms over a batch of tokens (weights,
  token dropping, R-Drop, statistics), by autograd or fused from logits; the fairseq criteria use them;
* margin-aware reshapings of cross-entropy as plain PyTorch modules: ``forward(logits, target)`` as
  timm's losses, ``reduction`` is ``"mean"``, ``"sum"`` or ``"none"``.
"""
from .encouraging import EncouragingLoss, LabelSmoothingEncouragingLoss
from .lgm import LGMLoss
from .poly import Poly1CrossEntropy, Poly1FocalLoss
from .terms import EncouragingBonus, LabelSmoothedCE, Poly1, Scaled, Term

__all__ = ["EncouragingLoss", "LabelSmoothingEncouragingLoss", "Poly1CrossEntropy", "Poly1FocalLoss", "LGMLoss",
           "Term", "LabelSmoothedCE", "EncouragingBonus", "Poly1", "Scaled"]
