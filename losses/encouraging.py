"""Encouraging Loss modules for plain PyTorch / timm training loops.

Both modules are sums of the project's terms (:mod:`.terms`), so they and the fairseq criterion share
one implementation of the CE and of the bonus.
"""
import torch
from torch import Tensor, nn

from .reduction import check_reduction, reduce, upcast_half
from .terms import (EncouragingBonus, LabelSmoothedCE, Tokens, check_log_end, epsilon_from_uniform_smoothing,
                    per_token_loss)


class EncouragingLoss(nn.Module):
    """CE + ``log(1 - p_target)`` (tangent line past ``log_end``): confident examples keep a gradient."""

    def __init__(self, log_end: float = 0.75, reduction: str = "mean"):
        super().__init__()
        self.log_end = check_log_end(log_end)
        self.reduction = check_reduction(reduction)
        self.terms = [LabelSmoothedCE(0.0), EncouragingBonus(0.0, self.log_end)]

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        tokens = Tokens(torch.log_softmax(upcast_half(logits), dim=-1), target)
        return reduce(per_token_loss(self.terms, tokens), self.reduction)


class LabelSmoothingEncouragingLoss(nn.Module):
    """Drop-in for timm's ``LabelSmoothingCrossEntropy`` with the encouraging bonus added.

    Smoothing follows timm's convention: the target distribution is ``(1 - s)`` on the label plus
    ``s / C`` on every class (label included), for the CE part and the bonus alike, i.e.
    ``(1 - s) [-log p_y + b(p_y)] + s/C sum_c [-log p_c + b(p_c)]``. The fairseq criterion's
    ``--label-smoothing eps`` puts ``eps / (C - 1)`` on every other class instead; the CE part here is
    that CE with ``eps = s (C - 1) / C`` (:func:`.terms.epsilon_from_uniform_smoothing`), the same
    distribution. The bonus uses the uniform form in both places, so it takes ``s`` unchanged.
    """

    def __init__(self, smoothing: float = 0.1, log_end: float = 0.75, reduction: str = "mean"):
        super().__init__()
        if not 0.0 <= smoothing < 1.0:
            raise ValueError(f"smoothing must lie in [0, 1), got {smoothing}")
        self.smoothing = smoothing
        self.log_end = check_log_end(log_end)
        self.reduction = check_reduction(reduction)
        self.bonus = EncouragingBonus(smoothing, self.log_end)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        tokens = Tokens(torch.log_softmax(upcast_half(logits), dim=-1), target)
        ce = LabelSmoothedCE(epsilon_from_uniform_smoothing(self.smoothing, logits.size(-1)))
        return reduce(per_token_loss([ce, self.bonus], tokens), self.reduction)
