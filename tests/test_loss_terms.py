"""Adding a term: a class with a per-token value gets both paths (reference by autograd, fused by chunked
autograd); a closed form makes the fused path exact without autograd. Also the Scaled weight and term checks."""
import itertools
import math

import pytest
import torch

from ofa_el.losses import fused as fused_module
from ofa_el.losses.fused import fused_token_losses
from ofa_el.losses.terms import (
    ClosedForm,
    EncouragingBonus,
    LabelSmoothedCE,
    Poly1,
    Term,
    Tokens,
    support_mask_from_range,
)
from ofa_el.losses.token_loss import token_losses

N, V = 13, 9


class Focal(Term):
    """Focal loss ``-(1 - p_y)^gamma log p_y`` with no closed form: the fused path differentiates it by autograd."""

    def __init__(self, gamma: float = 2.0):
        self.gamma = gamma

    def value(self, tokens: Tokens) -> torch.Tensor:
        return -(1.0 - tokens.lp_target.exp()) ** self.gamma * tokens.lp_target


class FocalClosedForm(Focal):
    """The same focal term with its closed form: a function of ``p_y`` only, so ``h`` sits at the target:
    ``h_y = p_y dT/dp_y = gamma (1-p_y)^(gamma-1) p_y log p_y - (1-p_y)^gamma``."""

    name = "focal"

    def closed_form(self, chunk):
        p, lp = chunk.p_target, chunk.lp_target
        h = self.gamma * (1.0 - p) ** (self.gamma - 1.0) * p * lp - (1.0 - p) ** self.gamma
        return ClosedForm(value=-(1.0 - p) ** self.gamma * lp, jacobian_sum=h, at=[(chunk.target, h)])

    def statistics(self, p_target):
        return {"hard": (p_target < 0.1).sum()}


class ConfidencePenalty(Term):
    """``beta * sum_v p_v log p_v`` (negative entropy, Pereyra et al.), with a dense closed form:
    ``h_v = beta p_v (log p_v + 1)``, ``0 log 0 = 0`` outside the support."""

    def __init__(self, beta: float):
        self.beta = beta

    def value(self, tokens: Tokens) -> torch.Tensor:
        return self.beta * (tokens.probs * tokens.on_support(tokens.lprobs)).sum(-1)

    def closed_form(self, chunk):
        plogp = torch.xlogy(chunk.probs, chunk.probs)
        dense = plogp + chunk.probs
        return ClosedForm(value=self.beta * plogp.sum(-1, keepdim=True),
                          jacobian_sum=self.beta * dense.sum(-1, keepdim=True), dense=dense, dense_scale=self.beta)


def make_case(support_kind, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(N, V, generator=g, dtype=torch.float64) * 3
    target = torch.randint(0, V, (N,), generator=g)
    logits[0, target[0]] = 30.0  # a confident token
    support = None
    if support_kind == "range":
        support = support_mask_from_range(V, 5, 9)
        target = torch.where(support[target], target, torch.full_like(target, 6))
    elif support_kind == "masks":
        support = torch.rand(N, V, generator=g) > 0.3
        support[torch.arange(N), target] = True
    weights = torch.rand(N, generator=g, dtype=torch.float64) + 0.5
    return logits, target, support, weights


def both_paths(terms, logits, target, support, upstream=None, **options):
    """(reference, fused) outputs and logit gradients, in float64."""
    a, b = logits.clone().requires_grad_(True), logits.clone().requires_grad_(True)
    z = a if support is None else a.masked_fill(~support, float("-inf"))
    ref = token_losses(torch.log_softmax(z, -1), target, terms, support=support, **options)
    fused = fused_token_losses(b, target, terms, support=support, **options)
    upstream = torch.tensor(1.0, dtype=torch.float64) if upstream is None else upstream
    (ref.loss * upstream).sum().backward()
    (fused.loss * upstream).sum().backward()
    return ref, fused, a.grad, b.grad


def assert_paths_agree(ref, fused, ref_grad, fused_grad):
    assert torch.allclose(fused.loss, ref.loss, rtol=1e-9, atol=1e-9)
    assert torch.allclose(fused.nll_loss, ref.nll_loss, rtol=1e-9, atol=1e-9)
    assert torch.allclose(fused_grad, ref_grad, rtol=1e-9, atol=1e-9)
    assert fused.sample_size == ref.sample_size
    assert (fused.kept is None and ref.kept is None) or torch.equal(fused.kept, ref.kept)
    assert set(fused.term_sums) == set(ref.term_sums) and set(fused.counts) == set(ref.counts)
    for key in ref.term_sums:
        assert torch.allclose(fused.term_sums[key], ref.term_sums[key], rtol=1e-9), key
    for key in ref.counts:
        assert torch.equal(fused.counts[key], ref.counts[key]), key


SETTINGS = list(itertools.product(["none", "range", "masks"], [False, True], [(0.0, 0.0), (0.2, 0.1)], [True, False]))
#: the focal term alone (no dropping: that ranks by the CE), or beside closed-form terms
FALLBACK_CASES = [(*case, True) for case in SETTINGS] + [(*case, False) for case in SETTINGS if case[2] == (0.0, 0.0)]


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(fused_module, "CHUNK_ELEMENTS", 4 * V)  # several chunks, the last one shorter


@pytest.mark.parametrize("support_kind, weighted, drops, reduce, with_ce", FALLBACK_CASES)
def test_a_term_without_closed_form_gets_the_fused_path_by_chunked_autograd(support_kind, weighted, drops, reduce,
                                                                            with_ce, small_chunks):
    logits, target, support, weights = make_case(support_kind)
    terms = [Focal(2.0)]
    if with_ce:
        terms = [LabelSmoothedCE(0.1), Focal(2.0), EncouragingBonus(0.1, 0.75)]  # closed forms and a fallback
    assert Focal().closed_form(None) is None  # the fallback really is what runs
    upstream = None if reduce else torch.linspace(-1.0, 2.0, N, dtype=torch.float64)
    options = dict(weights=weights if weighted else None, drop_worst_ratio=drops[0], drop_best_ratio=drops[1],
                   reduce=reduce)
    ref, fused, ref_grad, fused_grad = both_paths(terms, logits, target, support, upstream, **options)
    assert_paths_agree(ref, fused, ref_grad, fused_grad)
    without = [t for t in terms if not isinstance(t, Focal)] or [LabelSmoothedCE(0.0)]
    ref_without = both_paths(without, logits, target, support, upstream, **options)
    assert not torch.allclose(ref_grad, ref_without[2])  # the focal term does move the gradient


def test_the_focal_values_are_the_formula():
    logits, target, _, _ = make_case("none")
    p = torch.softmax(logits, -1)[torch.arange(N), target]
    out = fused_token_losses(logits, target, [Focal(2.0)], reduce=False)
    assert torch.allclose(out.loss, -(1 - p) ** 2 * p.log(), rtol=1e-12)


@pytest.mark.parametrize("support_kind, weighted, drops, reduce", SETTINGS)
def test_a_term_with_a_closed_form_agrees_with_autograd(support_kind, weighted, drops, reduce, small_chunks):
    logits, target, support, weights = make_case(support_kind, seed=1)
    upstream = None if reduce else torch.linspace(-1.0, 2.0, N, dtype=torch.float64)
    options = dict(weights=weights if weighted else None, drop_worst_ratio=drops[0], drop_best_ratio=drops[1],
                   reduce=reduce)
    for terms in ([LabelSmoothedCE(0.1), FocalClosedForm(2.0)],
                  [LabelSmoothedCE(0.0), ConfidencePenalty(0.3)],  # one dense part, a Python scale
                  [LabelSmoothedCE(0.1), EncouragingBonus(0.1, 0.3), ConfidencePenalty(-0.2), Poly1(0.5, 0.1)],
                  [LabelSmoothedCE(0.1), EncouragingBonus(0.1, 0.75).scaled(0.5), FocalClosedForm(1.5).scaled(2.0)]):
        ref, fused, ref_grad, fused_grad = both_paths(terms, logits, target, support, upstream, **options)
        assert_paths_agree(ref, fused, ref_grad, fused_grad)
    assert "focal" in fused.term_sums and "hard" in fused.counts  # a term's own statistics are reported
    closed = both_paths([LabelSmoothedCE(0.1), FocalClosedForm(1.5).scaled(2.0)], logits, target, support, upstream,
                        **options)
    fallback = both_paths([LabelSmoothedCE(0.1), Focal(1.5).scaled(2.0)], logits, target, support, upstream,
                          **options)
    assert torch.allclose(fallback[1].loss, closed[1].loss, rtol=1e-9, atol=1e-9)
    assert torch.allclose(fallback[3], closed[3], rtol=1e-9, atol=1e-9)  # closed form == chunked autograd


def test_fused_values_without_gradient_match_for_every_kind_of_term():
    logits, target, support, _ = make_case("masks", seed=2)
    terms = [LabelSmoothedCE(0.1), EncouragingBonus(0.1, 0.5), Focal(2.0), ConfidencePenalty(0.2)]
    with torch.no_grad():
        fused = fused_token_losses(logits, target, terms, support=support, reduce=False)
    ref = token_losses(torch.log_softmax(logits.masked_fill(~support, float("-inf")), -1), target, terms,
                       support=support, reduce=False)
    assert torch.allclose(fused.loss, ref.loss, rtol=1e-9, atol=1e-12)


def test_scaled_weight_zero_is_exactly_the_other_terms():
    logits, target, support, weights = make_case("range")
    ce = [LabelSmoothedCE(0.1)]
    for impl in ("reference", "fused"):
        results = []
        for terms in (ce, ce + [EncouragingBonus(0.1, 0.75).scaled(0.0)]):
            ref, fused, ref_grad, fused_grad = both_paths(terms, logits, target, support, weights=weights,
                                                          drop_worst_ratio=0.2)
            results.append((ref, ref_grad) if impl == "reference" else (fused, fused_grad))
        (plain, plain_grad), (zero, zero_grad) = results
        assert torch.equal(plain.loss, zero.loss) and torch.equal(plain_grad, zero_grad)
        assert zero.bonus_sum.item() == 0.0
        assert zero.past_log_end.item() == int((torch.softmax(logits.masked_fill(~support, float("-inf")), -1)[
            zero.kept, target[zero.kept]] > 0.75).sum())  # the statistic describes the model, still counted
    bonus = EncouragingBonus(0.1, 0.75)
    assert bonus.scaled(1.0) is bonus
    tokens = Tokens(torch.log_softmax(logits, -1), target)
    assert torch.allclose(bonus.scaled(-2.5).value(tokens), -2.5 * bonus.value(tokens), rtol=1e-15)


def test_terms_are_checked():
    logits, target, _, _ = make_case("none")
    lprobs = torch.log_softmax(logits, -1)
    with pytest.raises(TypeError, match="sequence of loss terms"):
        token_losses(lprobs, target, 0.1)  # the old (lprobs, target, epsilon) call
    with pytest.raises(TypeError, match="sequence of loss terms"):
        fused_token_losses(logits, target, [])
    with pytest.raises(ValueError, match="ranks tokens by the label-smoothed CE"):
        token_losses(lprobs, target, [Focal()], drop_worst_ratio=0.2)
    with pytest.raises(ValueError, match="log_end"):
        EncouragingBonus(0.1, 0.0)
    with pytest.raises(ValueError, match="epsilon"):
        LabelSmoothedCE(1.0)


def test_the_bonus_form_for_high_log_end_is_the_general_one():
    """log_end >= 0.5 takes the product form (every entry but the argmax on the log branch); it equals the
    per-entry form, which log_end < 0.5 uses, wherever both apply."""
    logits, target, _, _ = make_case("none", seed=4)
    logits[1, 2] = logits[1].max() + math.log(3.0)  # a second row with an argmax past 1/2
    grads = []
    for log_end in (0.5, 0.4999999999):
        x = logits.clone().requires_grad_(True)
        fused_token_losses(x, target, [LabelSmoothedCE(0.1), EncouragingBonus(0.1, log_end)]).loss.backward()
        grads.append(x.grad)
    assert torch.allclose(grads[0], grads[1], atol=1e-8)
