"""The loss math against closed forms computed independently, token by token, in float64."""
import math

import numpy as np
import pytest
import torch

from ofa_el.losses.terms import EncouragingBonus, LabelSmoothedCE, Poly1, encouraging_bonus, support_mask_from_range
from ofa_el.losses.token_loss import select_tokens, token_losses


def criterion_terms(eps, log_end=None, poly_epsilon=None):
    """The terms a criterion sums: CE, plus the bonus (EL) or the Poly-1 term."""
    terms = [LabelSmoothedCE(eps)]
    if log_end is not None:
        terms.append(EncouragingBonus(eps, log_end))
    if poly_epsilon is not None:
        terms.append(Poly1(poly_epsilon, eps))
    return terms


def loss_of(lprobs, target, eps, log_end=None, poly_epsilon=None, **options):
    return token_losses(lprobs, target, criterion_terms(eps, log_end, poly_epsilon), **options)


def naive_bonus(p: float, log_end) -> float:
    if log_end is not None and log_end < 1.0 and p > log_end:
        return math.log(1 - log_end) - (p - log_end) / (1 - log_end)
    return math.log(max(1 - p, 1e-5))


def naive_token(logits_row, y, eps, log_end, allowed, weight=1.0, poly=None):
    """OFA's per-token formula written out with plain floats over the allowed ids."""
    allowed = list(allowed)
    m = max(logits_row[v] for v in allowed)
    z = sum(math.exp(logits_row[v] - m) for v in allowed)
    lp = {v: logits_row[v] - m - math.log(z) for v in allowed}
    k = len(allowed)
    eps_i = eps / (k - 1)
    nll = -lp[y]
    ce = (1 - eps - eps_i) * nll + eps_i * sum(-lp[v] for v in allowed)
    loss = ce
    if log_end is not None:
        bonus_y = naive_bonus(math.exp(lp[y]), log_end)
        loss += (1 - eps) * bonus_y + eps / k * sum(naive_bonus(math.exp(lp[v]), log_end) for v in allowed)
    if poly is not None:
        p_y = math.exp(lp[y])
        loss += poly * (1 - ((1 - eps - eps_i) * p_y + eps_i))
    return weight * loss, weight * nll, weight * ce


def lprobs_of(logits, support=None):
    masked = logits if support is None else logits.masked_fill(~support, float("-inf"))
    return torch.log_softmax(masked, -1)


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(12, 9, generator=g, dtype=torch.float64) * 3
    logits[0, 5] = 30.0  # a very confident token (p -> 1, past any log_end)
    target = torch.randint(0, 9, (12,), generator=g)
    target[0] = 5
    return logits, target


@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.parametrize("log_end", [None, 0.5, 0.75, 1.0])
@pytest.mark.parametrize("support_kind", ["none", "range", "masks"])
@pytest.mark.parametrize("weighted", [False, True])
def test_matches_naive_formula(batch, eps, log_end, support_kind, weighted):
    logits, target = batch
    n, v = logits.shape
    support, allowed = None, [list(range(v))] * n
    if support_kind == "range":
        support = support_mask_from_range(v, 6, 9)
        target = torch.where(support[target], target, torch.full_like(target, 7))
        allowed = [[0, 1, 2, 3, 6, 7, 8]] * n
    elif support_kind == "masks":
        g = torch.Generator().manual_seed(1)
        support = torch.rand(n, v, generator=g) > 0.4
        support[torch.arange(n), target] = True
        support[:, 0] = True
        allowed = [row.nonzero().flatten().tolist() for row in support]
    weights = torch.linspace(0.5, 1.5, n, dtype=torch.float64) if weighted else None
    out = loss_of(lprobs_of(logits, support), target, eps, log_end=log_end, weights=weights, support=support)
    expected = [naive_token(logits[i].tolist(), int(target[i]), eps, log_end, allowed[i],
                            1.0 if weights is None else float(weights[i])) for i in range(n)]
    assert out.loss.item() == pytest.approx(sum(e[0] for e in expected), rel=1e-10)
    assert out.nll_loss.item() == pytest.approx(sum(e[1] for e in expected), rel=1e-10)
    assert out.sample_size == n


def test_el_is_ce_plus_bonus_exactly(batch):
    logits, target = batch
    lp = lprobs_of(logits)
    ce = loss_of(lp, target, 0.1, reduce=False).loss
    el = loss_of(lp, target, 0.1, log_end=0.75, reduce=False).loss
    p = lp.exp()
    b = encouraging_bonus(p, 0.75)
    bonus = 0.9 * b.gather(-1, target[:, None]).squeeze(-1) + 0.1 / p.size(-1) * b.sum(-1)
    assert torch.equal(el, ce + bonus)


def test_tangent_line_past_log_end():
    p = torch.tensor([0.2, 0.75, 0.9, 0.999999], dtype=torch.float64)
    b = encouraging_bonus(p, 0.75)
    assert b[0].item() == pytest.approx(math.log(0.8))
    assert b[1].item() == pytest.approx(math.log(0.25))  # continuous at log_end
    assert b[2].item() == pytest.approx(math.log(0.25) - 0.15 / 0.25)
    full = encouraging_bonus(p, 1.0)
    assert full[3].item() == pytest.approx(math.log(1e-5))  # clamped


def test_poly1_term_matches_naive(batch):
    logits, target = batch
    out = loss_of(lprobs_of(logits), target, 0.1, poly_epsilon=2.0)
    expected = sum(naive_token(logits[i].tolist(), int(target[i]), 0.1, None, range(9), poly=2.0)[0]
                   for i in range(len(target)))
    assert out.loss.item() == pytest.approx(expected, rel=1e-10)


def test_drop_worst_keeps_lowest_ce_tokens(batch):
    logits, target = batch
    lp = lprobs_of(logits)
    ce = [naive_token(logits[i].tolist(), int(target[i]), 0.1, None, range(9))[2] for i in range(12)]
    out = loss_of(lp, target, 0.1, log_end=0.75, drop_worst_ratio=0.25)
    keep = sorted(np.argsort(ce)[:9].tolist())  # floor(12 * 0.75) = 9 lowest CE (bonus excluded)
    assert out.kept.tolist() == keep
    assert out.sample_size == 9
    expected = sum(naive_token(logits[i].tolist(), int(target[i]), 0.1, 0.75, range(9))[0] for i in keep)
    assert out.loss.item() == pytest.approx(expected, rel=1e-10)


def test_drop_best_really_drops_the_best(batch):
    logits, target = batch
    ce = [naive_token(logits[i].tolist(), int(target[i]), 0.1, None, range(9))[2] for i in range(12)]
    out = loss_of(lprobs_of(logits), target, 0.1, log_end=0.75, drop_best_ratio=0.25)
    assert out.sample_size == 9
    assert out.kept.tolist() == sorted(np.argsort(ce)[3:].tolist())
    unsmoothed = loss_of(lprobs_of(logits), target, 0.0, log_end=0.75, drop_best_ratio=0.25)
    assert 0 not in unsmoothed.kept.tolist()  # without smoothing the confident token is the best: dropped


def test_drop_worst_then_best_on_what_remains():
    ranking = torch.arange(20, dtype=torch.float64).flip(0)  # token i has loss 19 - i
    kept = select_tokens(ranking, drop_worst_ratio=0.1, drop_best_ratio=0.5)
    # worst 2 dropped (tokens 0, 1), then best 9 of the remaining 18 (tokens 11..19)
    assert kept.tolist() == list(range(2, 11))
    assert select_tokens(ranking) is None


def test_rdrop_keeps_pairs_aligned_with_targets(batch):
    logits, target = batch
    g = torch.Generator().manual_seed(3)
    second = logits + 0.3 * torch.randn(logits.shape, generator=g, dtype=torch.float64)
    both = torch.cat([logits, second])
    targets = torch.cat([target, target])
    out = loss_of(lprobs_of(both), targets, 0.1, log_end=0.75, drop_worst_ratio=0.25, rdrop_alpha=0.7)
    ce_first = [naive_token(logits[i].tolist(), int(target[i]), 0.1, None, range(9))[2] for i in range(12)]
    keep = sorted(np.argsort(ce_first)[:9].tolist())
    assert out.kept.tolist() == keep + [i + 12 for i in keep]
    expected = 0.0
    for i in keep:
        expected += naive_token(logits[i].tolist(), int(target[i]), 0.1, 0.75, range(9))[0]
        expected += naive_token(second[i].tolist(), int(target[i]), 0.1, 0.75, range(9))[0]
        p, q = torch.softmax(logits[i], -1), torch.softmax(second[i], -1)
        kl = 0.5 * (float((p * (p.log() - q.log())).sum()) + float((q * (q.log() - p.log())).sum()))
        expected += 0.7 * kl
    assert out.loss.item() == pytest.approx(expected, rel=1e-10)


def test_reduce_false_is_per_token_and_sums_to_reduced(batch):
    logits, target = batch
    lp = lprobs_of(logits)
    full = loss_of(lp, target, 0.1, log_end=0.5, drop_worst_ratio=0.25, reduce=False)
    summed = loss_of(lp, target, 0.1, log_end=0.5, drop_worst_ratio=0.25)
    assert full.loss.shape == (12,)
    dropped = sorted(set(range(12)) - set(full.kept.tolist()))
    assert torch.all(full.loss[dropped] == 0)
    assert full.loss.sum().item() == pytest.approx(summed.loss.item(), rel=1e-12)


@pytest.mark.parametrize("log_end", [None, 0.5, 1.0])
@pytest.mark.parametrize("support_kind", ["none", "range"])
def test_gradcheck_float64(log_end, support_kind):
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(6, 8, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([0, 5, 6, 7, 2, 5])
    support = support_mask_from_range(8, 5, 8) if support_kind == "range" else None
    weights = torch.linspace(0.5, 1.0, 6, dtype=torch.float64)

    def loss_fn(x):
        return loss_of(lprobs_of(x, support), target, 0.1, log_end=log_end, weights=weights,
                            support=support, poly_epsilon=0.5).loss

    assert torch.autograd.gradcheck(loss_fn, (logits,))


def test_gradcheck_rdrop():
    g = torch.Generator().manual_seed(6)
    logits = torch.randn(8, 5, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    assert torch.autograd.gradcheck(
        lambda x: loss_of(lprobs_of(x), target, 0.1, log_end=0.75, rdrop_alpha=1.0).loss, (logits,))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("log_end", [0.75, 1.0])
def test_low_precision_extremes_are_finite(dtype, log_end):
    logits = torch.zeros(4, 50)
    logits[0, 3] = 60.0   # p_target -> 1
    logits[1, 3] = -60.0  # p_target -> 0
    logits[2, 7] = 60.0   # confident on a wrong token
    logits = logits.to(dtype).requires_grad_(True)
    target = torch.tensor([3, 3, 3, 7])
    lprobs = torch.log_softmax(logits.float(), -1)
    out = loss_of(lprobs, target, 0.1, log_end=log_end)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert torch.isfinite(logits.grad.float()).all()
    assert logits.grad.dtype == dtype


def test_el_gradient_does_not_vanish_for_confident_tokens():
    """The point of EL: at p_target ~ 0.99 CE's gradient is tiny, EL's is not."""
    logits = torch.zeros(1, 10, dtype=torch.float64)
    logits[0, 0] = math.log(0.99 * 9 / 0.01)
    target = torch.tensor([0])
    grads = {}
    for name, log_end in (("ce", None), ("el", 0.75)):
        x = logits.clone().requires_grad_(True)
        loss_of(lprobs_of(x), target, 0.0, log_end=log_end).loss.backward()
        grads[name] = x.grad[0, 0].abs().item()
    assert grads["ce"] == pytest.approx(0.01, rel=1e-6)
    # d/dz_y of (p - L)/(L - 1) is -p(1-p)/(1-L) = -0.99*0.01/0.25 on top of CE's -(1-p)
    assert grads["el"] == pytest.approx(0.01 + 0.99 * 0.01 / 0.25, rel=1e-6)
