"""The per-token loss as a sum of terms: the one home of the loss math (torch only).

For a token with target ``y``, log-probabilities ``l`` (``p = exp(l)``) over a support of ``K``
entries (the vocabulary, or a constrained subset) and label smoothing ``eps``:

* :class:`LabelSmoothedCE`, fairseq's / OFA's convention (``eps/(K-1)`` on every *other* entry):
  ``(1 - eps - eps/(K-1)) * (-l_y) + eps/(K-1) * sum_v (-l_v)``
* :class:`EncouragingBonus`, ``b(p) = log(max(1 - p, 1e-5))``, replaced past ``p = log_end`` by its
  tangent line, smoothed as ``(1 - eps) * b(p_y) + eps/K * sum_v b(p_v)``
* :class:`Poly1`, ``poly_epsilon * (1 - <q, p>)`` against the label distribution ``q`` the CE uses.

Smoothing conventions. fairseq puts ``eps/(K-1)`` on every entry but the target; timm and
``F.cross_entropy(label_smoothing=s)`` put ``s/K`` on every entry, the target included. They are the
same target distribution when ``eps = s (K-1)/K`` (:func:`epsilon_from_uniform_smoothing`). The
bonus's smoothing, ``(1 - eps)`` on the target plus ``eps/K`` everywhere, is the uniform form.

Each term gives its per-token value from log-probabilities (:meth:`Term.value`: the reference,
differentiated by autograd) and, when it can, its value and logit gradient in closed form for one
chunk of the fused path (:meth:`Term.closed_form`). Every term here is a function of the softmax
``p``, so its gradient has the softmax-Jacobian form ``dT/dz_j = h_j - p_j H`` with
``h_v = (dT/dp_v) p_v`` and ``H = sum_v h_v``; a :class:`ClosedForm` describes ``h`` (a constant on
the support, values at a few indices, a dense scaled buffer) and ``H``. A term without a closed
form is differentiated by the fused path with chunked autograd. Adding a term is one class here
(or anywhere) and its tests; the drivers loop over terms and never name one.
"""
from __future__ import annotations

import dataclasses
import math
from functools import cached_property
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from ..errors import OptionError

BONUS_FLOOR = 1e-5

#: A per-row quantity of a chunk: a [n, 1] tensor, or a Python number for every row.
RowValue = Union[Tensor, float]


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


def bonus_slope(probs: Tensor, log_end: float) -> Tensor:
    """``b'(p) * p`` (elementwise), what the softmax Jacobian multiplies for the bonus: ``-p/(1-p)`` on the log,
    ``-p/(1-log_end)`` on the tangent, 0 where ``1 - p`` is clamped (the clamp has no gradient)."""
    slope = torch.where(1.0 - probs >= BONUS_FLOOR, -probs / (1.0 - probs).clamp(min=BONUS_FLOOR),
                        torch.zeros_like(probs))
    if log_end < 1.0:
        slope = torch.where(probs > log_end, -probs / (1.0 - log_end), slope)
    return slope


def epsilon_from_uniform_smoothing(smoothing: float, num_classes: int) -> float:
    """timm's smoothing ``s`` (``s/C`` on every class, the label included) as fairseq's ``eps`` (``eps/(C-1)``
    on every other class): both give the label ``1 - s + s/C`` when ``eps = s (C-1)/C``."""
    return smoothing * (num_classes - 1) / num_classes


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


def check_log_end(log_end: float, name: str = "log_end") -> float:
    """The bonus's tangent point lies in (0, 1] (1 keeps the full log); ``name`` is what the caller calls it
    (``--log-end`` for the criterion), so that the one check of this range speaks in the caller's terms."""
    if not 0.0 < log_end <= 1.0:
        raise OptionError(f"{name}: must lie in (0, 1], got {log_end}")
    return log_end


def _check_epsilon(epsilon: float) -> None:
    if not 0.0 <= epsilon < 1.0:
        raise ValueError(f"label smoothing epsilon must lie in [0, 1), got {epsilon}")


class Tokens:
    """A flat batch of scored tokens, as the reference path's terms see it (autograd flows through)."""

    def __init__(self, lprobs: Tensor, target: Tensor, support: Optional[Tensor] = None):
        """``lprobs`` [N, V] (-inf outside ``support``), ``target`` [N], ``support`` None, [V] or [N, V] bool."""
        self.lprobs, self.target, self.support = lprobs, target, support

    @cached_property
    def probs(self) -> Tensor:
        return self.lprobs.exp()

    @cached_property
    def lp_target(self) -> Tensor:
        return self.lprobs.gather(-1, self.target.unsqueeze(-1)).squeeze(-1)

    @cached_property
    def support_size(self) -> Tensor:
        return support_sizes(self.support, self.lprobs.size(0), self.lprobs.size(-1), self.lprobs)

    def on_support(self, values: Tensor) -> Tensor:
        """``values`` [N, V] with the entries outside the support set to 0 (so a row sum is over the support)."""
        return values if self.support is None else values.masked_fill(~self.support, 0.0)


@dataclasses.dataclass
class Chunk:
    """A few rows of the fused pass, as a term's closed form sees them. Read-only for terms.

    Shapes: ``probs`` [n, V] (0 outside the support); every per-row quantity is [n, 1].
    """

    probs: Tensor
    target: Tensor
    support: Optional[Tensor]  # None, [V] or [n, V] bool
    support_size: Tensor
    lp_target: Tensor
    p_target: Tensor
    top: Tensor  # index of the row's largest probability
    p_top: Tensor
    log_sum: Optional[Tensor]  # sum_v l_v over the support, when a term sets ``needs_log_sum``
    needs_gradient: bool  # False: only values are wanted (validation), terms may skip gradient work

    def rows(self, value: float) -> Tensor:
        """A Python number as a [n, 1] tensor."""
        return torch.full_like(self.p_target, value)


@dataclasses.dataclass
class ClosedForm:
    """One term's value on a chunk and, when asked for, its logit gradient ``h - p H`` with
    ``h = on_support * 1_S + sum(values at indices) + dense_scale * dense``.

    ``dense`` is a [n, V] buffer the term hands over: the driver may overwrite it.
    """

    value: Tensor  # [n, 1]
    jacobian_sum: RowValue = 0.0  # H = sum_v h_v
    on_support: RowValue = 0.0
    at: Sequence[Tuple[Tensor, Tensor]] = ()  # (index [n, 1], h added there [n, 1])
    dense: Optional[Tensor] = None
    dense_scale: RowValue = 1.0

    def scaled(self, weight: float) -> "ClosedForm":
        """The closed form of ``weight`` times the term (value and gradient are linear in the term)."""
        return ClosedForm(value=self.value * weight, jacobian_sum=self.jacobian_sum * weight,
                          on_support=self.on_support * weight, at=[(index, h * weight) for index, h in self.at],
                          dense=self.dense, dense_scale=self.dense_scale * weight)


class Term:
    """One additive part of the per-token loss.

    Subclasses implement :meth:`value`; :meth:`closed_form` is optional (without it the fused
    path falls back to chunked autograd on :meth:`value`). Class attributes:
    ``name`` logs the term's sum over kept tokens as ``<name>_sum``; ``ranks_tokens`` makes it part
    of the ranking for token dropping; ``needs_log_sum`` asks the fused pass for ``Chunk.log_sum``.
    """

    name: Optional[str] = None
    ranks_tokens: bool = False
    needs_log_sum: bool = False

    def value(self, tokens: Tokens) -> Tensor:
        """Per-token value [N]; differentiable (the reference path backpropagates through it)."""
        raise NotImplementedError

    def closed_form(self, chunk: Chunk) -> Optional[ClosedForm]:
        """Value and gradient parts on a chunk of the fused pass; None: use chunked autograd on :meth:`value`."""
        return None

    def statistics(self, p_target: Tensor) -> Dict[str, Tensor]:
        """Per-token counts to log (summed over kept tokens), from the target probabilities [N] (detached)."""
        return {}

    def scaled(self, weight: float) -> "Term":
        """``weight`` times this term (the identity for weight 1)."""
        return self if weight == 1.0 else Scaled(self, float(weight))


@dataclasses.dataclass(frozen=True)
class Scaled(Term):
    """``weight * term``. Weight 0 computes nothing (the loss is exactly the other terms'), but the term's
    statistics are still counted: they describe the model, not the loss."""

    term: Term
    weight: float

    @property
    def name(self) -> Optional[str]:  # type: ignore[override]
        return self.term.name

    @property
    def ranks_tokens(self) -> bool:  # type: ignore[override]
        return self.term.ranks_tokens

    @property
    def needs_log_sum(self) -> bool:  # type: ignore[override]
        return self.weight != 0.0 and self.term.needs_log_sum

    def value(self, tokens: Tokens) -> Tensor:
        if self.weight == 0.0:
            return tokens.lprobs.new_zeros(tokens.target.shape)
        return self.term.value(tokens) * self.weight

    def closed_form(self, chunk: Chunk) -> Optional[ClosedForm]:
        if self.weight == 0.0:
            return ClosedForm(value=torch.zeros_like(chunk.p_target))
        inner = self.term.closed_form(chunk)
        return None if inner is None else inner.scaled(self.weight)

    def statistics(self, p_target: Tensor) -> Dict[str, Tensor]:
        return self.term.statistics(p_target)


def label_weights(epsilon: float, support_size: Tensor) -> Tuple[Tensor, Tensor]:
    """fairseq's label distribution on a support of ``K``: ``(q_target, q_other)`` = ``(1 - eps - eps/(K-1),
    eps/(K-1))``. A support of one entry (a constrained step with a single allowed token, e.g. eos after a
    complete answer) has no other entry: ``q_target = 1`` there, so the token's loss and gradient are 0 (OFA
    divides by ``K - 1 + 1e-6`` and multiplies the resulting huge weight by zeros to the same effect)."""
    others = support_size - 1.0
    eps_i = torch.where(others > 0, epsilon / others.clamp(min=1.0), torch.zeros_like(others))
    return torch.where(others > 0, 1.0 - epsilon - eps_i, torch.ones_like(others)), eps_i


@dataclasses.dataclass(frozen=True)
class LabelSmoothedCE(Term):
    """fairseq's label-smoothed CE: ``(1 - eps - eps/(K-1))`` on the target, ``eps/(K-1)`` on every other entry.

    Its gradient is ``p - q`` (``h = -q``, ``H = -1``). Token dropping ranks tokens by it (OFA's rule).
    """

    epsilon: float = 0.0
    ranks_tokens = True

    def __post_init__(self):
        _check_epsilon(self.epsilon)

    @property
    def needs_log_sum(self) -> bool:  # type: ignore[override]
        return self.epsilon > 0.0

    def value(self, tokens: Tokens) -> Tensor:
        nll = -tokens.lp_target
        if self.epsilon == 0.0:
            return nll
        smooth = -tokens.on_support(tokens.lprobs).sum(-1)
        on_target, eps_i = label_weights(self.epsilon, tokens.support_size)
        return on_target * nll + eps_i * smooth

    def closed_form(self, chunk: Chunk) -> ClosedForm:
        nll = -chunk.lp_target
        if self.epsilon == 0.0:
            return ClosedForm(value=nll, jacobian_sum=-1.0, at=[(chunk.target, chunk.rows(-1.0))])
        on_target, eps_i = label_weights(self.epsilon, chunk.support_size)
        return ClosedForm(value=on_target * nll - eps_i * chunk.log_sum, jacobian_sum=-1.0, on_support=-eps_i,
                          at=[(chunk.target, -on_target)])


@dataclasses.dataclass(frozen=True)
class EncouragingBonus(Term):
    """The Encouraging Loss bonus, smoothed: ``(1 - eps) b(p_y) + eps/K sum_v b(p_v)`` (see module docstring).

    Gradient: ``h = (1 - eps) s(p_y) e_y + eps/K s(p)`` with ``s = bonus_slope``. For ``log_end >= 0.5``
    only the row's argmax can be on the tangent (only one probability can exceed 1/2), so every other
    entry is on the plain log: ``s = -p/(1-p)`` and ``sum log(1-p) = log prod (1-p)``. The argmax is then
    handled as a per-row scalar, and the row costs one division and a product instead of logs and
    branches per entry.
    """

    epsilon: float = 0.0
    log_end: float = 1.0
    name = "bonus"

    def __post_init__(self):
        _check_epsilon(self.epsilon)
        check_log_end(self.log_end)

    def value(self, tokens: Tokens) -> Tensor:
        bonus = encouraging_bonus(tokens.probs, self.log_end)
        target_bonus = bonus.gather(-1, tokens.target.unsqueeze(-1)).squeeze(-1)
        if self.epsilon == 0.0:
            return target_bonus
        return (1.0 - self.epsilon) * target_bonus + (self.epsilon / tokens.support_size) * tokens.on_support(
            bonus).sum(-1)

    def statistics(self, p_target: Tensor) -> Dict[str, Tensor]:
        return {"past_log_end": (p_target > self.log_end).sum()}

    def closed_form(self, chunk: Chunk) -> ClosedForm:
        eps, log_end = self.epsilon, self.log_end
        value = (1.0 - eps) * encouraging_bonus(chunk.p_target, log_end)
        if not chunk.needs_gradient and eps == 0.0:
            return ClosedForm(value=value)
        target_h = (1.0 - eps) * bonus_slope(chunk.p_target, log_end)
        if eps == 0.0:
            return ClosedForm(value=value, jacobian_sum=target_h, at=[(chunk.target, target_h)])
        share = eps / chunk.support_size  # eps/K
        if log_end >= 0.5:
            return self._argmax_apart(chunk, value, target_h, share)
        # p = 0 outside the support, where b(0) = 0 and s(0) = 0: no masking needed.
        value = value + share * encouraging_bonus(chunk.probs, log_end).sum(-1, keepdim=True)
        if not chunk.needs_gradient:
            return ClosedForm(value=value)
        slopes = bonus_slope(chunk.probs, log_end)
        return ClosedForm(value=value, jacobian_sum=target_h + share * slopes.sum(-1, keepdim=True),
                          at=[(chunk.target, target_h)], dense=slopes, dense_scale=share)

    def _argmax_apart(self, chunk: Chunk, value: Tensor, target_h: Tensor, share: Tensor) -> ClosedForm:
        """The ``log_end >= 0.5`` form: every entry but the argmax on the log branch, the argmax exact.

        ``sum log(1-p) = log prod(1-p)``: no entry but the argmax exceeds 1/2 and their sum is below 1,
        so the product stays above 1/4 (no underflow) and costs no log per entry; its rounding (~V ulps
        relative) is scaled by eps/K, far below 1e-6. Entries outside the support have p = 0: factor 1.
        """
        one_minus = torch.rsub(chunk.probs, 1.0).scatter_(-1, chunk.top, 1.0)
        log_sum = torch.log(one_minus.prod(-1, keepdim=True)) + encouraging_bonus(chunk.p_top, self.log_end)
        value = value + share * log_sum
        if not chunk.needs_gradient:
            return ClosedForm(value=value)
        ratio = torch.div(chunk.probs, one_minus, out=one_minus).scatter_(-1, chunk.top, 0.0)  # -slope
        top_slope = bonus_slope(chunk.p_top, self.log_end)
        return ClosedForm(
            value=value,
            jacobian_sum=target_h + share * (top_slope - ratio.sum(-1, keepdim=True)),
            at=[(chunk.target, target_h), (chunk.top, share * top_slope)],
            dense=ratio, dense_scale=-share)


@dataclasses.dataclass(frozen=True)
class Poly1(Term):
    """Poly-1: ``poly_epsilon * (1 - <q, p>)`` for the CE's label distribution ``q`` (fairseq smoothing ``epsilon``):
    ``<q, p> = (1 - eps - eps/(K-1)) p_y + eps/(K-1)`` as the probabilities sum to 1 on the support.
    Only ``p_y`` varies: ``h = -poly_epsilon (1 - eps - eps/(K-1)) p_y`` at the target."""

    poly_epsilon: float = 1.0
    epsilon: float = 0.0

    def __post_init__(self):
        _check_epsilon(self.epsilon)

    def _label_weights(self, support_size: Tensor) -> Tuple[Tensor, Union[Tensor, float]]:
        if self.epsilon == 0.0:
            return torch.ones_like(support_size), 0.0
        return label_weights(self.epsilon, support_size)

    def value(self, tokens: Tokens) -> Tensor:
        on_target, eps_i = self._label_weights(tokens.support_size)
        p_target = tokens.lp_target.exp()
        if self.epsilon == 0.0:
            return self.poly_epsilon * (1.0 - p_target)
        return self.poly_epsilon * (1.0 - (on_target * p_target + eps_i))

    def closed_form(self, chunk: Chunk) -> ClosedForm:
        on_target, eps_i = self._label_weights(chunk.support_size)
        value = self.poly_epsilon * (1.0 - (on_target * chunk.p_target + eps_i))
        target_h = -self.poly_epsilon * on_target * chunk.p_target
        return ClosedForm(value=value, jacobian_sum=target_h, at=[(chunk.target, target_h)])


def check_terms(terms: Sequence[Term]) -> List[Term]:
    """The terms as a list, with a clear error for anything else (e.g. a stale ``epsilon`` argument)."""
    if isinstance(terms, Term):
        terms = [terms]
    if isinstance(terms, (int, float)) or not all(isinstance(term, Term) for term in terms) or not terms:
        raise TypeError(f"expected a non-empty sequence of loss terms (ofa_el.losses.terms.Term), got {terms!r}")
    return list(terms)


def per_token_loss(terms: Sequence[Term], tokens: Tokens) -> Tensor:
    """The sum of the terms' per-token values [N] (reference path)."""
    values = [term.value(tokens) for term in check_terms(terms)]
    total = values[0]
    for value in values[1:]:
        total = total + value
    return total
