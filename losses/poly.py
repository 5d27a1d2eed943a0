"""Poly-1 losses (Leng et al., PolyLoss): raise the first polynomial coefficient of CE / focal loss."""
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .reduction import check_reduction, reduce, upcast_half
from .terms import LabelSmoothedCE, Poly1, Tokens, epsilon_from_uniform_smoothing, per_token_loss


class Poly1CrossEntropy(nn.Module):
    """``CE + epsilon * (1 - p_t)``; with label smoothing ``p_t = <q, p>`` for the smoothed labels ``q``
    (``(1 - s)`` on the label plus ``s / C`` everywhere, as ``F.cross_entropy(label_smoothing=s)``).

    Built from the project's terms with fairseq's ``eps = s (C - 1) / C``, the same ``q``
    (:func:`.terms.epsilon_from_uniform_smoothing`)."""

    def __init__(self, epsilon: float = 1.0, label_smoothing: float = 0.0, reduction: str = "mean"):
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must lie in [0, 1), got {label_smoothing}")
        self.epsilon = epsilon
        self.label_smoothing = label_smoothing
        self.reduction = check_reduction(reduction)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        tokens = Tokens(torch.log_softmax(upcast_half(logits), dim=-1), target)
        eps = epsilon_from_uniform_smoothing(self.label_smoothing, logits.size(-1))
        return reduce(per_token_loss([LabelSmoothedCE(eps), Poly1(self.epsilon, eps)], tokens), self.reduction)


class Poly1FocalLoss(nn.Module):
    """Sigmoid focal loss + ``epsilon * (1 - p_t)^(gamma + 1)`` for multi-label (one- or multi-hot) targets.

    Focal loss and ``alpha`` follow torchvision's ``sigmoid_focal_loss`` (``alpha < 0`` switches the
    class weighting off); the poly term is not alpha-weighted. Reduced over all elements.
    """

    def __init__(self, epsilon: float = 1.0, gamma: float = 2.0, alpha: float = 0.25, reduction: str = "mean"):
        super().__init__()
        self.epsilon, self.gamma, self.alpha = epsilon, gamma, alpha
        self.reduction = check_reduction(reduction)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        logits, target = upcast_half(logits), upcast_half(target.to(logits.dtype))
        if logits.shape != target.shape:
            raise ValueError(f"targets must be one- or multi-hot with the logits' shape {tuple(logits.shape)}, "
                             f"got {tuple(target.shape)}")
        p = torch.sigmoid(logits)
        ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        p_t = p * target + (1.0 - p) * (1.0 - target)
        focal = ce * (1.0 - p_t) ** self.gamma
        if self.alpha >= 0:
            focal = focal * (self.alpha * target + (1.0 - self.alpha) * (1.0 - target))
        return reduce(focal + self.epsilon * (1.0 - p_t) ** (self.gamma + 1.0), self.reduction)
