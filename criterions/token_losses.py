"""Token-level loss math for label-smoothed cross-entropy and Encouraging Loss (torch only).

This is the one place in the project where the formulas live; the fairseq criteria,
the standalone ``ofa_el.losses`` modules and the fused kernels are checked against it.
For a token with target ``y``, log-probabilities ``l`` over a support of ``K`` entries
(the vocabulary, or a constrained subset) and label smoothing ``eps``:

* label-smoothed CE (fairseq / OFA):
  ``ce = (1 - eps - eps/(K-1)) * (-l_y) + eps/(K-1) * sum_v(-l_v)``
* encouraging bonus ``b(p) = log(max(1 - p, 1e-5))``, replaced past ``p = log_end`` by
  its tangent line, and smoothed like the CE: ``el = (1 - eps) * b(p_y) + eps/K * sum_v b(p_v)``
* token loss = weight * (ce + el); EL rewards confident tokens (b < 0) instead of
  letting their gradient vanish.

Token selection (drop-worst / drop-best) ranks tokens by the weighted label-smoothed CE,
before the bonus is added, as OFA does; the sample size becomes the number of tokens kept.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

BONUS_FLOOR = 1e-5


def encouraging_bonus(probs: Tensor, log_end: float = 1.0, floor: float = BONUS_FLOOR) -> Tensor:
    """The EL bonus ``log(1 - p)`` (clamped at ``floor``), linear past ``p = log_end`` when ``log_end < 1``.

    The tangent line keeps a bounded, constant gradient ``-1/(1 - log_end)`` for very
    confident predictions: a conservative bonus that does not blow up as ``p -> 1``.
    """
    bonus = torch.log(torch.clamp(1.0 - probs, min=floor))
    if log_end < 1.0:
        tangent = (probs - log_end) / (log_end - 1.0) + math.log(1.0 - log_end)
        bonus = torch.where(probs > log_end, tangent, bonus)
    return bonus


def support_mask_from_range(vocab_size: int, start: int, end: int, device=None) -> Tensor:
    """Boolean [V] mask of a ``--constraint-range start,end``: the 4 specials plus ``[start, end)``."""
    mask = torch.zeros(vocab_size, dtype=torch.bool, device=device)
    mask[:4] = True
    mask[start:end] = True
    return mask


def support_sizes(support: Optional[Tensor], num_tokens: int, vocab_size: int, like: Tensor) -> Tensor:
    """Per-token support size ``K`` (in ``like``'s dtype) for a [V] or [N, V] boolean support, or the vocabulary."""
    if support is None:
        return torch.full((num_tokens,), float(vocab_size), dtype=like.dtype, device=like.device)
    sizes = support.sum(-1).to(like.dtype)
    return sizes.expand(num_tokens) if support.dim() == 1 else sizes


def label_smoothed_ce(lprobs: Tensor, target: Tensor, epsilon: float, support: Optional[Tensor] = None):
    """Per-token label-smoothed CE and NLL; ``lprobs`` [N, V] is -inf (or anything) outside ``support``."""
    nll = -lprobs.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    if epsilon == 0.0:
        return nll, nll
    in_support = lprobs if support is None else lprobs.masked_fill(~support, 0.0)
    smooth = -in_support.sum(-1)
    k = support_sizes(support, lprobs.size(0), lprobs.size(-1), lprobs)
    eps_i = epsilon / (k - 1.0)
    return (1.0 - epsilon - eps_i) * nll + eps_i * smooth, nll


def smoothed_bonus(lprobs: Tensor, target: Tensor, epsilon: float, log_end: float,
                   support: Optional[Tensor] = None) -> Tensor:
    """Per-token EL bonus smoothed like the CE: ``(1-eps) * b(p_y) + eps/K * sum_v b(p_v)``."""
    probs = lprobs.exp()
    bonus = encouraging_bonus(probs, log_end)
    target_bonus = bonus.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    if epsilon == 0.0:
        return target_bonus
    if support is not None:
        bonus = bonus.masked_fill(~support, 0.0)
    k = support_sizes(support, lprobs.size(0), lprobs.size(-1), lprobs)
    return (1.0 - epsilon) * target_bonus + (epsilon / k) * bonus.sum(-1)


def select_tokens(ranking: Tensor, drop_worst_ratio: float = 0.0, drop_best_ratio: float = 0.0,
                  paired: bool = False) -> Optional[Tensor]:
    """Indices (ascending) of the tokens kept after dropping the worst, then the best, by ``ranking``.

    ``floor(n * (1 - ratio))`` tokens are kept at each stage. With ``paired`` (R-Drop) the
    first half ranks and both halves keep the same positions, so the two copies stay aligned.
    Returns None when nothing is dropped (no sort is done at all then).
    """
    if drop_worst_ratio <= 0.0 and drop_best_ratio <= 0.0:
        return None
    half = ranking.size(0) // 2 if paired else ranking.size(0)
    kept = torch.arange(half, device=ranking.device)
    scores = ranking[:half]
    for ratio, largest in ((drop_worst_ratio, False), (drop_best_ratio, True)):
        if ratio > 0.0:
            keep = int(kept.numel() * (1.0 - ratio))
            chosen = torch.topk(scores, keep, largest=largest, sorted=False).indices
            kept, scores = kept[chosen], scores[chosen]
    kept = kept.sort().values
    return torch.cat([kept, kept + half]) if paired else kept


def poly1_term(lprobs: Tensor, target: Tensor, epsilon: float, support: Optional[Tensor] = None) -> Tensor:
    """Per-token Poly-1 term ``1 - <q, p>`` against the label distribution ``q`` the CE uses.

    With fairseq's smoothing ``q_y = 1 - eps`` and ``q_v = eps/(K-1)`` elsewhere, so
    ``<q, p> = (1 - eps - eps/(K-1)) p_y + eps/(K-1)`` (the probabilities sum to 1 on the support).
    """
    p_target = lprobs.gather(-1, target.unsqueeze(-1)).squeeze(-1).exp()
    if epsilon == 0.0:
        return 1.0 - p_target
    k = support_sizes(support, lprobs.size(0), lprobs.size(-1), lprobs)
    eps_i = epsilon / (k - 1.0)
    return 1.0 - ((1.0 - epsilon - eps_i) * p_target + eps_i)


def rdrop_kl(lprobs_a: Tensor, lprobs_b: Tensor, support: Optional[Tensor] = None) -> Tensor:
    """Per-pair symmetric KL ``(KL(p||q) + KL(q||p)) / 2 = 1/2 sum_v (p_v - q_v)(log p_v - log q_v)``."""
    terms = (lprobs_a.exp() - lprobs_b.exp()) * (lprobs_a - lprobs_b)
    if support is not None:
        terms = terms.masked_fill(~support, 0.0)
    return 0.5 * terms.sum(-1)


@dataclass
class TokenLossOutput:
    """What a criterion needs from one batch of tokens. Statistics are detached sums over kept tokens."""

    loss: Tensor  # scalar sum, or [N] per token (0 for dropped tokens) when not reduced
    nll_loss: Tensor  # same shape as ``loss``
    sample_size: int  # number of tokens kept
    kept: Optional[Tensor]  # indices of kept tokens; None = all
    n_correct: Tensor  # argmax == target over all input tokens (before dropping)
    p_target_sum: Tensor
    bonus_sum: Tensor
    past_log_end: Tensor  # kept tokens whose target probability exceeds log_end


def token_losses(
    lprobs: Tensor,
    target: Tensor,
    epsilon: float,
    *,
    log_end: Optional[float] = None,
    weights: Optional[Tensor] = None,
    support: Optional[Tensor] = None,
    drop_worst_ratio: float = 0.0,
    drop_best_ratio: float = 0.0,
    rdrop_alpha: Optional[float] = None,
    poly_epsilon: Optional[float] = None,
    reduce: bool = True,
) -> TokenLossOutput:
    """Label-smoothed CE (``log_end=None``) or Encouraging Loss over a flat batch of tokens.

    Args:
        lprobs: [N, V] log-probabilities, -inf outside ``support`` (padding already removed).
        target: [N] target ids.
        epsilon: label smoothing.
        log_end: EL's ``log_end`` in (0, 1]; None switches the bonus off (plain CE).
        weights: optional [N] per-token weights (e.g. a sample's confidence).
        support: optional boolean [V] or [N, V]: the constrained set the softmax ran over.
        drop_worst_ratio / drop_best_ratio: active ratios (the caller applies ``--*-after``).
        rdrop_alpha: R-Drop weight; when set, the tokens are two aligned copies [a; b].
        poly_epsilon: Poly-1 coefficient; when set, ``poly_epsilon * (1 - <q, p>)`` is added.
        reduce: sum (True) or per-token values aligned with the input (False).
    """
    paired = rdrop_alpha is not None
    if paired and lprobs.size(0) % 2:
        raise ValueError(f"R-Drop needs an even number of tokens (two copies), got {lprobs.size(0)}")
    ce, nll = label_smoothed_ce(lprobs, target, epsilon, support)
    if weights is not None:
        ce, nll = ce * weights, nll * weights
    n_correct = (lprobs.argmax(-1) == target).sum()
    kept = select_tokens(ce.detach(), drop_worst_ratio, drop_best_ratio, paired)

    def keep(t: Optional[Tensor]) -> Optional[Tensor]:
        if t is None or kept is None:
            return t
        return t.index_select(0, kept)

    k_lprobs, k_target, k_ce, k_nll = keep(lprobs), keep(target), keep(ce), keep(nll)
    k_weights = keep(weights)
    k_support = support if support is None or support.dim() == 1 else keep(support)
    per_token = k_ce
    with torch.no_grad():
        p_target = k_lprobs.gather(-1, k_target.unsqueeze(-1)).squeeze(-1).exp()
    bonus_sum = torch.zeros((), device=lprobs.device)
    if log_end is not None:
        bonus = smoothed_bonus(k_lprobs, k_target, epsilon, log_end, k_support)
        if k_weights is not None:
            bonus = bonus * k_weights
        per_token = per_token + bonus
        bonus_sum = bonus.detach().sum()
    if poly_epsilon is not None:
        poly = poly_epsilon * poly1_term(k_lprobs, k_target, epsilon, k_support)
        per_token = per_token + (poly * k_weights if k_weights is not None else poly)
    if paired:
        half = k_lprobs.size(0) // 2
        support_a = k_support if k_support is None or k_support.dim() == 1 else k_support[:half]
        kl = rdrop_kl(k_lprobs[:half], k_lprobs[half:], support_a)
        if k_weights is not None:
            kl = kl * k_weights[:half]
        share = 0.5 * rdrop_alpha * kl  # each copy carries half of the pair's KL
        per_token = per_token + torch.cat([share, share])
    threshold = 1.0 if log_end is None else log_end
    stats = dict(
        sample_size=int(k_target.numel()),
        kept=kept,
        n_correct=n_correct,
        p_target_sum=p_target.sum(),
        bonus_sum=bonus_sum,
        past_log_end=(p_target > threshold).sum(),
    )
    if reduce:
        return TokenLossOutput(loss=per_token.sum(), nll_loss=k_nll.sum(), **stats)
    if kept is None:
        return TokenLossOutput(loss=per_token, nll_loss=k_nll, **stats)
    full_loss = per_token.new_zeros(target.size(0)).index_copy(0, kept, per_token)
    full_nll = k_nll.new_zeros(target.size(0)).index_copy(0, kept, k_nll)
    return TokenLossOutput(loss=full_loss, nll_loss=full_nll, **stats)
