"""The reference driver: a sum of terms over a flat batch of tokens, by autograd (torch only).

It adds what a batch needs around the per-token terms (:mod:`.terms`): per-token weights,
token selection (drop-worst / drop-best, ranked by the weighted label-smoothed CE before any other
term, as OFA does; the sample size becomes the number of tokens kept), R-Drop's symmetric KL between
two aligned copies, and the statistics a criterion logs. The fused driver (:mod:`.fused`) computes
the same numbers from logits at CE's cost and is tested against this one.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import torch
from torch import Tensor

from .terms import Term, Tokens, check_terms


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


def ranking_of(terms: Sequence[Term], values: Sequence[Tensor], dropping: bool) -> Optional[Tensor]:
    """What token dropping ranks by: the sum of the ranking terms' (weighted) values; None without dropping."""
    if not dropping:
        return None
    ranked = [value for term, value in zip(terms, values) if term.ranks_tokens]
    if not ranked:
        raise ValueError("token dropping ranks tokens by the label-smoothed CE: the terms hold no LabelSmoothedCE")
    total = ranked[0]
    for value in ranked[1:]:
        total = total + value
    return total


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
    term_sums: Dict[str, Tensor] = field(default_factory=dict)  # named terms' weighted sums, e.g. "bonus"
    counts: Dict[str, Tensor] = field(default_factory=dict)  # the terms' statistics, e.g. "past_log_end"

    @property
    def bonus_sum(self) -> Tensor:
        """The encouraging bonus that entered the loss (0 without one)."""
        return self.term_sums.get("bonus", torch.zeros((), device=self.p_target_sum.device))

    @property
    def past_log_end(self) -> Tensor:
        """Kept tokens whose target probability exceeds EL's log_end (0 without a bonus)."""
        return self.counts.get("past_log_end", torch.zeros((), dtype=torch.long, device=self.p_target_sum.device))


def term_statistics(terms: Sequence[Term], kept_values: Sequence[Tensor], kept_p_target: Tensor):
    """``(term_sums, counts)`` over the kept tokens: named terms' sums and every term's counts."""
    sums: Dict[str, Tensor] = {}
    counts: Dict[str, Tensor] = {}
    for term, value in zip(terms, kept_values):
        if term.name is not None:
            total = value.detach().sum()
            sums[term.name] = sums[term.name] + total if term.name in sums else total
        for key, count in term.statistics(kept_p_target).items():
            counts[key] = counts[key] + count if key in counts else count
    return sums, counts


def token_losses(
    lprobs: Tensor,
    target: Tensor,
    terms: Sequence[Term],
    *,
    weights: Optional[Tensor] = None,
    support: Optional[Tensor] = None,
    drop_worst_ratio: float = 0.0,
    drop_best_ratio: float = 0.0,
    rdrop_alpha: Optional[float] = None,
    reduce: bool = True,
) -> TokenLossOutput:
    """The sum of ``terms`` over a flat batch of tokens (label-smoothed CE: ``[LabelSmoothedCE(eps)]``; EL: plus
    ``EncouragingBonus(eps, log_end)``).

    Args:
        lprobs: [N, V] log-probabilities, -inf outside ``support`` (padding already removed).
        target: [N] target ids.
        terms: the per-token terms (:mod:`.terms`), summed.
        weights: optional [N] per-token weights (e.g. a sample's confidence), multiplying every term.
        support: optional boolean [V] or [N, V]: the constrained set the softmax ran over.
        drop_worst_ratio / drop_best_ratio: active ratios (the caller applies ``--*-after``).
        rdrop_alpha: R-Drop weight; when set, the tokens are two aligned copies [a; b].
        reduce: sum (True) or per-token values aligned with the input (False).
    """
    terms = check_terms(terms)
    paired = rdrop_alpha is not None
    if paired and lprobs.size(0) % 2:
        raise ValueError(f"R-Drop needs an even number of tokens (two copies), got {lprobs.size(0)}")
    tokens = Tokens(lprobs, target, support)
    values: List[Tensor] = [term.value(tokens) for term in terms]
    nll = -tokens.lp_target
    if weights is not None:
        values = [value * weights for value in values]
        nll = nll * weights
    n_correct = (lprobs.argmax(-1) == target).sum()
    ranking = ranking_of(terms, values, drop_worst_ratio > 0.0 or drop_best_ratio > 0.0)
    kept = None if ranking is None else select_tokens(ranking.detach(), drop_worst_ratio, drop_best_ratio, paired)

    def keep(t: Optional[Tensor]) -> Optional[Tensor]:
        if t is None or kept is None:
            return t
        return t.index_select(0, kept)

    k_values = [keep(value) for value in values]
    k_nll, k_weights, k_lprobs = keep(nll), keep(weights), keep(lprobs)
    k_support = support if support is None or support.dim() == 1 else keep(support)
    per_token = k_values[0]
    for value in k_values[1:]:
        per_token = per_token + value
    with torch.no_grad():
        p_target = keep(tokens.lp_target).exp()
    if paired:
        half = k_lprobs.size(0) // 2
        support_a = k_support if k_support is None or k_support.dim() == 1 else k_support[:half]
        kl = rdrop_kl(k_lprobs[:half], k_lprobs[half:], support_a)
        if k_weights is not None:
            kl = kl * k_weights[:half]
        share = 0.5 * rdrop_alpha * kl  # each copy carries half of the pair's KL
        per_token = per_token + torch.cat([share, share])
    term_sums, counts = term_statistics(terms, k_values, p_target)
    stats = dict(sample_size=int(p_target.numel()), kept=kept, n_correct=n_correct, p_target_sum=p_target.sum(),
                 term_sums=term_sums, counts=counts)
    if reduce:
        return TokenLossOutput(loss=per_token.sum(), nll_loss=k_nll.sum(), **stats)
    if kept is None:
        return TokenLossOutput(loss=per_token, nll_loss=k_nll, **stats)
    full_loss = per_token.new_zeros(target.size(0)).index_copy(0, kept, per_token)
    full_nll = k_nll.new_zeros(target.size(0)).index_copy(0, kept, k_nll)
    return TokenLossOutput(loss=full_loss, nll_loss=full_nll, **stats)
