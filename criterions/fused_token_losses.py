"""Fused label-smoothed CE / Encouraging Loss: the same numbers as :mod:`token_losses`, at CE's cost.

The reference implementation materialises log-probabilities, probabilities, the bonus, its
tangent line, a ``where`` and their gradients: about 7 logit-sized buffers. Here the logits
are read chunk by chunk (float32 accumulation for half-precision logits), and a single pass
produces the per-token statistics (CE for token selection, NLL, bonus, p_target, hits) and,
when a gradient is wanted, the gradient itself, written once into one logit-sized buffer.
Backward only scales that buffer in place by the upstream gradient, the token weights and
the kept-token mask (token selection happens after the statistics are known).

Gradient (one token, support S of size K, p = softmax over S, smoothing eps,
eps_i = eps/(K-1), a = 1 - eps - eps_i):

* CE ``a(-log p_y) + eps_i sum_v(-log p_v)`` has ``dCE/dz = p - q`` with ``q = a e_y + eps_i 1_S``.
* A term ``sum_v c_v f(p_v)`` has ``d/dz_j = h_j - p_j H`` with ``h_v = c_v f'(p_v) p_v``,
  ``H = sum_v h_v`` (softmax Jacobian ``dp_v/dz_j = p_v(delta_vj - p_j)``).
  - EL bonus: ``c = (1-eps) e_y + eps/K 1_S``; ``f'(p) p = -p/(1-p)`` up to log_end, ``-p/(1-log_end)``
    past it, 0 where ``1-p`` is clamped at 1e-5 (the reference's clamp).
  - Poly-1 ``poly (1 - a p_y - eps_i)``: ``h_y = -poly * a * p_y``.
* Only the row's largest probability can exceed 1/2, so for ``log_end >= 0.5`` every entry
  but the argmax is on the plain log branch: ``-p/(1-p) = 1 - 1/(1-p)``. The argmax and the
  target are handled exactly as per-token scalars; the rest of the row needs one reciprocal
  and one log per entry. (``log_end < 0.5`` takes the general, slower per-entry path.)
"""
from typing import Optional

import torch
from torch import Tensor

from .token_losses import BONUS_FLOOR, TokenLossOutput, encouraging_bonus, select_tokens, token_losses

#: Elements of one chunk of logits (rows * V); chunks keep the temporaries small. On CPU a chunk
#: fits in cache; on a GPU each chunk costs ~20 kernel launches, so chunks are much larger there.
CHUNK_ELEMENTS = 1 << 21
GPU_CHUNK_ELEMENTS = 1 << 25


def compute_dtype(logits: Tensor) -> torch.dtype:
    """Half-precision logits are accumulated in float32; float64 stays float64."""
    return torch.float64 if logits.dtype == torch.float64 else torch.float32


def bonus_slope(p: Tensor, log_end: float) -> Tensor:
    """``b'(p) * p`` (elementwise), what the softmax Jacobian multiplies for the bonus."""
    slope = torch.where(1.0 - p >= BONUS_FLOOR, -p / (1.0 - p).clamp(min=BONUS_FLOOR), torch.zeros_like(p))
    if log_end < 1.0:
        slope = torch.where(p > log_end, -p / (1.0 - log_end), slope)
    return slope


class _FusedTokenLoss(torch.autograd.Function):
    """Returns the precomputed per-token losses; backward scales the precomputed gradient in place."""

    @staticmethod
    def forward(ctx, logits, per_token, grad_buffer, row_scale):
        ctx.save_for_backward(grad_buffer, row_scale)
        ctx.used = False
        return per_token.clone()

    @staticmethod
    def backward(ctx, grad_out):
        grad_buffer, row_scale = ctx.saved_tensors
        if ctx.used:
            raise RuntimeError("the fused loss's gradient buffer is consumed by the first backward; "
                               "use --loss-impl reference to backpropagate twice (retain_graph)")
        ctx.used = True
        scale = torch.zeros(grad_buffer.size(0), dtype=row_scale.dtype, device=row_scale.device)
        rows, per_row = row_scale[0].long(), row_scale[1]
        scale.index_copy_(0, rows, per_row * grad_out.to(per_row.dtype))
        grad_buffer.mul_(scale.to(grad_buffer.dtype).unsqueeze(-1))
        return grad_buffer, None, None, None


class _ChunkStatistics:
    """Per-token results of one pass over the logits."""

    def __init__(self, n: int, like: Tensor):
        zeros = lambda: torch.zeros(n, dtype=like.dtype, device=like.device)  # noqa: E731
        self.ce, self.nll, self.bonus, self.poly, self.p_target = zeros(), zeros(), zeros(), zeros(), zeros()
        self.hits = torch.zeros(n, dtype=torch.bool, device=like.device)


def _support_rows(support: Optional[Tensor], start: int, end: int) -> Optional[Tensor]:
    return support if support is None or support.dim() == 1 else support[start:end]


def _one_pass(logits: Tensor, rows: Tensor, target: Tensor, epsilon: float, log_end: Optional[float],
              poly_epsilon: Optional[float], support: Optional[Tensor], grad: Optional[Tensor]) -> _ChunkStatistics:
    """Statistics of every scored token and, if ``grad`` is given, the unscaled gradient rows."""
    n, vocab = rows.numel(), logits.size(-1)
    dtype = compute_dtype(logits)
    stats = _ChunkStatistics(n, torch.empty(0, dtype=dtype, device=logits.device))
    chunk = CHUNK_ELEMENTS if logits.device.type == "cpu" else GPU_CHUNK_ELEMENTS
    step = max(1, chunk // max(vocab, 1))
    fast_bonus = log_end is not None and log_end >= 0.5
    for start in range(0, n, step):
        end = min(start + step, n)
        idx = rows[start:end]
        sup = _support_rows(support, start, end)
        y = target[start:end].unsqueeze(-1)
        z = logits.index_select(0, idx).to(dtype)
        if sup is not None:
            z.masked_fill_(~sup, float("-inf"))
        lse = torch.logsumexp(z, dim=-1, keepdim=True)
        lprobs = z.sub_(lse)
        k = torch.full_like(lse, float(vocab)) if sup is None else sup.sum(-1, keepdim=True).to(dtype).expand_as(lse)
        eps_i = epsilon / (k - 1.0)
        a = 1.0 - epsilon - eps_i
        lp_y = lprobs.gather(-1, y)
        top_lp, top = lprobs.max(-1, keepdim=True)
        nll = -lp_y
        ce = nll
        if epsilon > 0:
            finite = lprobs if sup is None else lprobs.masked_fill(~sup, 0.0)
            ce = a * nll - eps_i * finite.sum(-1, keepdim=True)
        p = lprobs.exp_()  # lprobs is not needed any more
        p_y, p_top = lp_y.exp(), top_lp.exp()
        h_y = torch.zeros_like(p_y)  # target-only terms of h (beyond the smoothing share)
        bonus = torch.zeros_like(p_y)
        smoothing_h_sum = torch.zeros_like(p_y)
        recip = None
        if log_end is not None:
            b_y = encouraging_bonus(p_y, log_end)
            s_y = bonus_slope(p_y, log_end)
            h_y = h_y + (1.0 - epsilon) * s_y
            bonus = (1.0 - epsilon) * b_y
            if epsilon > 0 and fast_bonus:
                # every entry but the argmax is on the log branch; the argmax is added exactly.
                # sum(log(1-p)) = log(prod(1-p)): no entry but the argmax exceeds 1/2 and their sum is
                # below 1, so the product stays above 1/4 (no underflow), and a product costs no log
                # per entry. Its rounding (~V ulps relative) is scaled by eps/K, far below 1e-6.
                t = torch.rsub(p, 1.0).scatter_(-1, top, 1.0)
                log_sum = torch.log(t.prod(-1, keepdim=True)) + encouraging_bonus(p_top, log_end)
                ratio = torch.div(p, t, out=t).scatter_(-1, top, 0.0)  # p/(1-p) = -slope, argmax excluded
                slope_sum = bonus_slope(p_top, log_end) - ratio.sum(-1, keepdim=True)
                bonus = bonus + (epsilon / k) * log_sum
                smoothing_h_sum = (epsilon / k) * slope_sum
                recip = ratio
            elif epsilon > 0:
                every = encouraging_bonus(p, log_end)
                slopes = bonus_slope(p, log_end)
                if sup is not None:
                    every, slopes = every.masked_fill(~sup, 0.0), slopes.masked_fill(~sup, 0.0)
                bonus = bonus + (epsilon / k) * every.sum(-1, keepdim=True)
                smoothing_h_sum = (epsilon / k) * slopes.sum(-1, keepdim=True)
                recip = slopes  # reused below as the per-entry smoothing slopes
        if poly_epsilon is not None:
            h_y = h_y - poly_epsilon * a * p_y
            stats.poly[start:end] = (poly_epsilon * (1.0 - (a * p_y + eps_i))).squeeze(-1)
        stats.ce[start:end], stats.nll[start:end] = ce.squeeze(-1), nll.squeeze(-1)
        stats.bonus[start:end], stats.p_target[start:end] = bonus.squeeze(-1), p_y.squeeze(-1)
        stats.hits[start:end] = (top == y).squeeze(-1)
        if grad is None:
            continue
        total_h = smoothing_h_sum + h_y
        if recip is not None and fast_bonus:
            # g = p (1 - H) - (eps/K) p/(1-p) - q  for every entry but the argmax
            g = recip.mul_(-epsilon / k).addcmul_(p, 1.0 - total_h)
            g_top = p_top * (1.0 - total_h) + (epsilon / k) * bonus_slope(p_top, log_end)
            g.scatter_(-1, top, g_top)
        elif recip is not None:  # general path: recip holds every entry's slope
            g = recip.mul_(epsilon / k).addcmul_(p, 1.0 - total_h)
        else:
            g = p.mul_(1.0 - total_h)
        if epsilon > 0:
            g.sub_(eps_i if sup is None else eps_i * sup.to(dtype))
        g.scatter_add_(-1, y, h_y - a)
        grad.index_copy_(0, idx, g.to(grad.dtype))
    return stats


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
    want_grad = torch.is_grad_enabled() and logits.requires_grad
    grad = None
    if want_grad:
        covers_all = rows.numel() == logits.size(0)
        grad = torch.empty_like(logits) if covers_all else torch.zeros_like(logits)
    with torch.no_grad():
        stats = _one_pass(logits.detach(), rows, target, epsilon, log_end, poly_epsilon, support, grad)
        w = weights.to(stats.ce.dtype) if weights is not None else torch.ones_like(stats.ce)
        ce = stats.ce * w
        kept = select_tokens(ce, drop_worst_ratio, drop_best_ratio)
        keep = torch.ones_like(ce)
        if kept is not None:
            keep = torch.zeros_like(keep).index_fill_(0, kept, 1.0)
        per_token = (ce + (stats.bonus + stats.poly) * w) * keep
        nll = stats.nll * w * keep
    if want_grad:
        loss = _FusedTokenLoss.apply(logits, per_token, grad, torch.stack([rows.to(w.dtype), w * keep]))
    else:
        loss = per_token
    kept_mask = keep.bool()
    kept_p = stats.p_target[kept_mask]
    threshold = 1.0 if log_end is None else log_end
    return TokenLossOutput(
        loss=loss.sum() if reduce else loss,
        nll_loss=nll.sum() if reduce else nll,
        sample_size=int(kept_mask.sum().item()),
        kept=kept,
        n_correct=stats.hits.sum(),
        p_target_sum=kept_p.sum(),
        bonus_sum=(stats.bonus * w)[kept_mask].sum(),
        past_log_end=(kept_p > threshold).sum(),
    )
