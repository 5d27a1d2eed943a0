"""Large-margin Gaussian-mixture loss (Wan et al., "Rethinking Feature Distribution for Loss
Functions in Image Classification", CVPR 2018) as a classification head.

Features are modelled as a mixture of Gaussians, one per class, with learnable means and
(identity, or learnable diagonal) covariance. Class scores are negative Mahalanobis
distances ``-d_k`` with ``d_k = 1/2 (x - mu_k)^T S_k^-1 (x - mu_k)`` (minus ``1/2 log|S_k|``
when variances are learnt). In training the true class's distance is enlarged by the margin,
``(1 + alpha) d_y``, and a likelihood term ``lambda_ * d_y`` pulls features to their mean.
``logits(features)`` needs no labels, so inference and validation run without them.
"""
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .reduction import check_reduction, reduce, upcast_half


class LGMLoss(nn.Module):
    def __init__(self, num_classes: int, feat_dim: int, alpha: float = 0.1, lambda_: float = 0.01,
                 learn_variance: bool = False, reduction: str = "mean"):
        super().__init__()
        if alpha < 0:
            raise ValueError(f"alpha (the margin) must be >= 0, got {alpha}")
        if lambda_ < 0:
            raise ValueError(f"lambda_ (the likelihood weight) must be >= 0, got {lambda_}")
        self.alpha, self.lambda_ = alpha, lambda_
        self.reduction = check_reduction(reduction)
        # MSRA init of the means only (the L-GM authors' advice): spread enough for distinct
        # classes, on the scale of features from a ReLU network, so early training is stable.
        self.means = nn.Parameter(torch.empty(num_classes, feat_dim))
        nn.init.kaiming_normal_(self.means, nonlinearity="relu")
        if learn_variance:
            self.log_var = nn.Parameter(torch.zeros(num_classes, feat_dim))
        else:
            self.register_buffer("log_var", torch.zeros(num_classes, feat_dim))

    def distances(self, features: Tensor) -> Tensor:
        """``d_k`` [B, C] (half the Mahalanobis distance, plus half the log-determinant)."""
        diff = upcast_half(features).unsqueeze(1) - self.means.unsqueeze(0)
        inv_var = torch.exp(-self.log_var).unsqueeze(0)
        return 0.5 * (diff.pow(2) * inv_var).sum(-1) + 0.5 * self.log_var.sum(-1).unsqueeze(0)

    def logits(self, features: Tensor) -> Tensor:
        """Class scores for inference: ``-d_k``; no labels, no margin."""
        return -self.distances(features)

    def forward(self, features: Tensor, target: Tensor) -> Tensor:
        d = self.distances(features)
        d_true = d.gather(-1, target.unsqueeze(-1)).squeeze(-1)
        margin_logits = -d
        if self.training and self.alpha > 0:
            margin_logits = margin_logits.scatter(-1, target.unsqueeze(-1), -(1.0 + self.alpha) * d_true.unsqueeze(-1))
        loss = F.cross_entropy(margin_logits, target, reduction="none") + self.lambda_ * d_true
        return reduce(loss, self.reduction)
