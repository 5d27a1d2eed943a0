"""Encouraging Loss modules for plain PyTorch / timm training loops.

The bonus comes from the project's one implementation (``criterions/token_losses.py``), so
these modules and the fairseq criterion compute the same thing.
"""
import torch
from torch import Tensor, nn

from ..criterions.token_losses import encouraging_bonus, smoothed_bonus
from .reduction import check_reduction, reduce, upcast_half


def _check_log_end(log_end: float) -> float:
    if not 0.0 < log_end <= 1.0:
        raise ValueError(f"log_end must lie in (0, 1], got {log_end}")
    return log_end


class EncouragingLoss(nn.Module):
    """CE + ``log(1 - p_target)`` (tangent line past ``log_end``): confident examples keep a gradient."""

    def __init__(self, log_end: float = 0.75, reduction: str = "mean"):
        super().__init__()
        self.log_end = _check_log_end(log_end)
        self.reduction = check_reduction(reduction)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        lprobs = torch.log_softmax(upcast_half(logits), dim=-1)
        lp_target = lprobs.gather(-1, target.unsqueeze(-1)).squeeze(-1)
        return reduce(-lp_target + encouraging_bonus(lp_target.exp(), self.log_end), self.reduction)


class LabelSmoothingEncouragingLoss(nn.Module):
    """Drop-in for timm's ``LabelSmoothingCrossEntropy`` with the encouraging bonus added.

    Smoothing follows timm's convention: the target distribution is ``(1 - s)`` on the label plus
    ``s / C`` on every class (label included), for the CE part and the bonus alike, i.e.
    ``(1 - s) [-log p_y + b(p_y)] + s/C sum_c [-log p_c + b(p_c)]``. (The fairseq criterion uses
    fairseq's ``s / (C - 1)`` over the other classes for its CE part.)
    """

    def __init__(self, smoothing: float = 0.1, log_end: float = 0.75, reduction: str = "mean"):
        super().__init__()
        if not 0.0 <= smoothing < 1.0:
            raise ValueError(f"smoothing must lie in [0, 1), got {smoothing}")
        self.smoothing = smoothing
        self.log_end = _check_log_end(log_end)
        self.reduction = check_reduction(reduction)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        lprobs = torch.log_softmax(upcast_half(logits), dim=-1)
        nll = -lprobs.gather(-1, target.unsqueeze(-1)).squeeze(-1)
        ce = (1.0 - self.smoothing) * nll - self.smoothing * lprobs.mean(dim=-1)
        bonus = smoothed_bonus(lprobs, target, self.smoothing, self.log_end)
        return reduce(ce + bonus, self.reduction)
