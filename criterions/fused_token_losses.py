"""Fused label-smoothed CE / Encouraging Loss: the same numbers as :mod:`token_losses`, at CE's cost.

The reference implementation materialises log-probabilities, probabilities, the bonus, its
tangent line, a ``where`` and their gradients: about 7 logit-sized buffers. Here the logits
are read chunk by chunk (float32 accumulation whatever their dtype), only per-token
statistics and the log-sum-exp are kept, and backward writes the gradient once, chunk by
chunk, from a closed form.

Gradient (one token, support S of size K, p = softmax over S, smoothing eps,
eps_i = eps/(K-1), a = 1 - eps - eps_i):

* CE ``a(-log p_y) + eps_i sum_v(-log p_v)`` has ``dCE/dz = p - q`` with ``q = a e_y + eps_i 1_S``
  (since a + K eps_i = 1).
* Any term ``sum_v c_v f(p_v)`` has ``d/dz_j = h_j - p_j sum_v h_v`` with ``h_v = c_v f'(p_v) p_v``
  (softmax Jacobian ``dp_v/dz_j = p_v(delta_vj - p_j)``).
  - EL bonus: ``c = (1-eps) e_y + eps/K 1_S``, ``f'(p) p = -p/(1-p)`` below log_end (0 where
    1-p is clamped at 1e-5, as the reference's clamp), ``-p/(1-log_end)`` past it.
  - Poly-1 ``poly (1 - a p_y - eps_i)``: ``h_y = -poly * a * p_y``.
* So ``dL/dz = w * (p (1 - H) - q + h)`` with ``H = sum_v h_v``, and 0 for dropped tokens.

R-Drop needs both copies' full distributions for its KL, so with ``rdrop_alpha`` the reference
path is used.
"""
import math
from typing import Optional, Tuple

import torch
from torch import Tensor

from .token_losses import BONUS_FLOOR, TokenLossOutput, encouraging_bonus, select_tokens, token_losses

#: Elements of one float32 chunk of logits (rows * V); small enough to stay in cache-friendly sizes.
CHUNK_ELEMENTS = 1 << 21


def _chunks(num_rows: int, vocab: int):
    step = max(1, CHUNK_ELEMENTS // max(vocab, 1))
    for start in range(0, num_rows, step):
        yield start, min(start + step, num_rows)


def _support_rows(support: Optional[Tensor], start: int, end: int) -> Optional[Tensor]:
    if support is None or support.dim() == 1:
        return support
    return support[start:end]


def compute_dtype(logits: Tensor) -> torch.dtype:
    """Half-precision logits are accumulated in float32; float64 stays float64."""
    return torch.float64 if logits.dtype == torch.float64 else torch.float32


def _chunk_log_probs(logits: Tensor, rows: Tensor, support: Optional[Tensor], lse: Optional[Tensor] = None):
    """Log-probabilities of the selected rows in the compute dtype (outside the support: -inf)."""
    z = logits.index_select(0, rows).to(compute_dtype(logits))
    if support is not None:
        z = z.masked_fill(~support, float("-inf"))
    if lse is None:
        lse = torch.logsumexp(z, dim=-1)
    return z.sub_(lse.unsqueeze(-1)), lse


def _bonus_slope(p: Tensor, log_end: float) -> Tensor:
    """``b'(p) * p``: what the softmax Jacobian multiplies for the bonus."""
    slope = torch.where(1.0 - p >= BONUS_FLOOR, -p / (1.0 - p).clamp(min=BONUS_FLOOR), torch.zeros_like(p))
    if log_end < 1.0:
        slope = torch.where(p > log_end, -p / (1.0 - log_end), slope)
    return slope


def _column(value, rows: int, like: Tensor) -> Tensor:
    """A per-token coefficient (float, [1], [rows] or [rows, 1]) as a [rows, 1] column."""
    return torch.as_tensor(value, dtype=like.dtype, device=like.device).reshape(-1, 1).expand(rows, 1).contiguous()


class _FusedTokenLoss(torch.autograd.Function):
    """Per-token loss values computed beforehand; backward recomputes p chunk-wise from the saved lse."""

    @staticmethod
    def forward(ctx, logits, per_token, rows, target, lse, weights, support, keep, epsilon, log_end, poly_epsilon):
        ctx.save_for_backward(logits, rows, target, lse, weights, support, keep)
        ctx.options = (epsilon, log_end, poly_epsilon)
        return per_token.clone()

    @staticmethod
    def backward(ctx, grad_out):
        logits, rows, target, lse, weights, support, keep = ctx.saved_tensors
        epsilon, log_end, poly_epsilon = ctx.options
        grad = torch.zeros_like(logits)
        dtype = compute_dtype(logits)
        scale = grad_out.to(dtype) * keep.to(dtype)
        if weights is not None:
            scale = scale * weights.to(dtype)
        vocab = logits.size(-1)
        for start, end in _chunks(rows.numel(), vocab):
            sup = _support_rows(support, start, end)
            lprobs, _ = _chunk_log_probs(logits, rows[start:end], sup, lse[start:end])
            p = lprobs.exp_()
            y = target[start:end].unsqueeze(-1)
            k = float(vocab) if sup is None else sup.sum(-1, keepdim=True).to(dtype)
            eps_i = epsilon / (k - 1.0) if epsilon > 0 else 0.0
            a = 1.0 - epsilon - eps_i
            h = torch.zeros_like(p)
            if log_end is not None:
                slope = _bonus_slope(p, log_end)
                if epsilon > 0:
                    h = slope * (epsilon / k)
                    if sup is not None:
                        h = h.masked_fill(~sup, 0.0)
                h.scatter_add_(-1, y, (1.0 - epsilon) * slope.gather(-1, y))
            a_y = _column(a, y.size(0), p)
            if poly_epsilon is not None:
                h.scatter_add_(-1, y, -poly_epsilon * a_y * p.gather(-1, y))
            total_h = h.sum(-1, keepdim=True)
            g = p.mul_(1.0 - total_h).add_(h)
            if epsilon > 0:
                smoothing = eps_i if sup is None else eps_i * sup.to(dtype)
                g.sub_(smoothing)
            g.scatter_add_(-1, y, -a_y)
            g.mul_(scale[start:end].unsqueeze(-1))
            grad.index_copy_(0, rows[start:end], g.to(grad.dtype))
        return grad, None, None, None, None, None, None, None, None, None, None


def _token_statistics(logits: Tensor, rows: Tensor, target: Tensor, epsilon: float, log_end: Optional[float],
                      poly_epsilon: Optional[float], support: Optional[Tensor]):
    """One pass over the logits: lse, CE, NLL, bonus, Poly-1 term, p_target and argmax hits per token."""
    n, vocab = rows.numel(), logits.size(-1)
    device, dtype = logits.device, compute_dtype(logits)
    out = {name: torch.zeros(n, device=device, dtype=dtype) for name in ("lse", "ce", "nll", "bonus", "poly", "p_target")}
    hits = torch.zeros(n, dtype=torch.bool, device=device)
    for start, end in _chunks(n, vocab):
        sup = _support_rows(support, start, end)
        lprobs, lse = _chunk_log_probs(logits, rows[start:end], sup)
        y = target[start:end].unsqueeze(-1)
        target_lprob = lprobs.gather(-1, y).squeeze(-1)
        k = float(vocab) if sup is None else sup.sum(-1).to(dtype)
        eps_i = epsilon / (k - 1.0) if epsilon > 0 else 0.0
        nll = -target_lprob
        ce = nll
        if epsilon > 0:
            in_support = lprobs if sup is None else lprobs.masked_fill(~sup, 0.0)
            ce = (1.0 - epsilon - eps_i) * nll - eps_i * in_support.sum(-1)
        p_target = target_lprob.exp()
        hits[start:end] = lprobs.argmax(-1) == target[start:end]  # over the support, as the reference
        if log_end is not None:
            bonus = encouraging_bonus(lprobs.exp_(), log_end)  # lprobs is not needed after this
            target_bonus = bonus.gather(-1, y).squeeze(-1)
            if epsilon > 0:
                if sup is not None:
                    bonus = bonus.masked_fill(~sup, 0.0)
                out["bonus"][start:end] = (1.0 - epsilon) * target_bonus + (epsilon / k) * bonus.sum(-1)
            else:
                out["bonus"][start:end] = target_bonus
        if poly_epsilon is not None:
            out["poly"][start:end] = poly_epsilon * (1.0 - ((1.0 - epsilon - eps_i) * p_target + eps_i))
        out["lse"][start:end], out["ce"][start:end], out["nll"][start:end] = lse, ce, nll
        out["p_target"][start:end] = p_target
    return out, hits


def fused_token_losses(
    logits: Tensor,
    target: Tensor,
    epsilon: float,
    *,
    rows: Optional[Tensor] = None,
    log_end: Optional[float] = None,
    weights: Optional[Tensor] = None,
    support: Optional[Tensor] = None,
    drop_worst_ratio: float = 0.0,
    drop_best_ratio: float = 0.0,
    rdrop_alpha: Optional[float] = None,
    poly_epsilon: Optional[float] = None,
    reduce: bool = True,
) -> TokenLossOutput:
    """:func:`token_losses` on LOGITS, fused. ``rows`` picks the scored rows of ``logits`` (default: all),
    so a [B*T, V] view of the model output can be passed without copying the scored rows out."""
    if rows is None:
        rows = torch.arange(logits.size(0), device=logits.device)
    if rdrop_alpha is not None:  # the KL needs both copies' distributions: use the reference path
        z = logits.index_select(0, rows).to(compute_dtype(logits))
        if support is not None:
            z = z.masked_fill(~support, float("-inf"))
        return token_losses(torch.log_softmax(z, -1), target, epsilon, log_end=log_end, weights=weights,
                            support=support, drop_worst_ratio=drop_worst_ratio, drop_best_ratio=drop_best_ratio,
                            rdrop_alpha=rdrop_alpha, poly_epsilon=poly_epsilon, reduce=reduce)
    with torch.no_grad():
        stats, hits = _token_statistics(logits, rows, target, epsilon, log_end, poly_epsilon, support)
        w = weights.to(stats["ce"].dtype) if weights is not None else None
        ce = stats["ce"] * w if w is not None else stats["ce"]
        kept = select_tokens(ce, drop_worst_ratio, drop_best_ratio)
        keep = torch.ones_like(ce, dtype=torch.bool)
        if kept is not None:
            keep = torch.zeros_like(keep).index_fill_(0, kept, True)
        per_token = ce + stats["bonus"] * w + stats["poly"] * w if w is not None else ce + stats["bonus"] + stats["poly"]
        per_token = per_token * keep
        nll = (stats["nll"] * w if w is not None else stats["nll"]) * keep
    loss = _FusedTokenLoss.apply(logits, per_token, rows, target, stats["lse"], weights, support, keep, epsilon,
                                 log_end, poly_epsilon)
    kept_p = stats["p_target"][keep]
    threshold = 1.0 if log_end is None else log_end
    bonus = stats["bonus"] * w if w is not None else stats["bonus"]
    return TokenLossOutput(
        loss=loss.sum() if reduce else loss,
        nll_loss=nll.sum() if reduce else nll,
        sample_size=int(keep.sum().item()),
        kept=kept,
        n_correct=hits.sum(),
        p_target_sum=kept_p.sum(),
        bonus_sum=bonus[keep].sum(),
        past_log_end=(kept_p > threshold).sum(),
    )
