"""The standalone loss modules against closed forms; the Poly-1 criterion; torch-only import."""
import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from conftest import Task, TinyModel, make_sample
from ofa_el.criterions.adjust_label_smoothed_poly1_cross_entropy import AdjustLabelSmoothedPoly1CrossEntropyCriterion
from ofa_el.losses.terms import EncouragingBonus, LabelSmoothedCE, epsilon_from_uniform_smoothing
from ofa_el.losses.token_loss import token_losses
from ofa_el.losses import EncouragingLoss, LabelSmoothingEncouragingLoss, LGMLoss, Poly1CrossEntropy, Poly1FocalLoss


def bonus(p, log_end):
    return math.log(1 - log_end) - (p - log_end) / (1 - log_end) if p > log_end else math.log(max(1 - p, 1e-5))


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 5, generator=g, dtype=torch.float64) * 2
    logits[0, 2] = 9.0  # p_target near 1, past log_end
    target = torch.tensor([2, 0, 1, 4, 3, 2])
    return logits, target


@pytest.mark.parametrize("log_end", [0.5, 0.75, 1.0])
def test_encouraging_loss_closed_form(batch, log_end):
    logits, target = batch
    expected = []
    for row, y in zip(logits.tolist(), target.tolist()):
        p = math.exp(row[y]) / sum(math.exp(v) for v in row)
        expected.append(-math.log(p) + bonus(p, log_end))
    got = EncouragingLoss(log_end, reduction="none")(logits, target)
    assert got.tolist() == pytest.approx(expected, rel=1e-6)
    assert EncouragingLoss(log_end)(logits, target).item() == pytest.approx(sum(expected) / 6, rel=1e-6)


def test_label_smoothing_el_is_timm_ce_plus_smoothed_bonus(batch):
    logits, target = batch
    s, log_end = 0.1, 0.75
    expected = []
    for row, y in zip(logits.tolist(), target.tolist()):
        z = sum(math.exp(v) for v in row)
        probs = [math.exp(v) / z for v in row]
        ce = (1 - s) * -math.log(probs[y]) + s * sum(-math.log(p) for p in probs) / len(probs)
        el = (1 - s) * bonus(probs[y], log_end) + s / len(probs) * sum(bonus(p, log_end) for p in probs)
        expected.append(ce + el)
    got = LabelSmoothingEncouragingLoss(s, log_end, reduction="none")(logits, target)
    assert got.tolist() == pytest.approx(expected, rel=1e-6)


def test_el_module_equals_the_criterion_math(batch):
    """Without smoothing the module and the fairseq criterion's core compute the same per-token loss."""
    logits, target = batch
    module = EncouragingLoss(0.75, reduction="none")(logits, target)
    core = token_losses(torch.log_softmax(logits, -1), target, [LabelSmoothedCE(0.0), EncouragingBonus(0.0, 0.75)],
                        reduce=False).loss
    assert torch.allclose(module.double(), core, rtol=1e-6)


def test_timm_smoothing_is_the_criterion_ce_with_converted_epsilon(batch):
    """timm's s/C on every class is fairseq's eps/(C-1) on every other class for eps = s (C-1)/C."""
    logits, target = batch
    s = 0.1
    timm_ce = F.cross_entropy(logits, target, reduction="none", label_smoothing=s)
    eps = epsilon_from_uniform_smoothing(s, 5)
    assert eps == pytest.approx(0.08)
    core = token_losses(torch.log_softmax(logits, -1), target, [LabelSmoothedCE(eps)], reduce=False).loss
    assert torch.allclose(core, timm_ce, rtol=1e-12)
    module = LabelSmoothingEncouragingLoss(s, 0.75, reduction="none")(logits, target)
    criterion_el = token_losses(torch.log_softmax(logits, -1), target,
                                [LabelSmoothedCE(eps), EncouragingBonus(s, 0.75)], reduce=False).loss
    assert torch.allclose(module, criterion_el, rtol=1e-12)  # the bonus is smoothed with s as given


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_poly1_closed_form_and_epsilon_zero_is_ce(batch, smoothing):
    logits, target = batch
    poly = Poly1CrossEntropy(epsilon=2.0, label_smoothing=smoothing, reduction="none")(logits, target)
    ce = F.cross_entropy(logits, target, reduction="none", label_smoothing=smoothing)
    probs = logits.softmax(-1)
    p_t = (1 - smoothing) * probs[torch.arange(6), target] + smoothing / 5
    assert torch.allclose(poly.double(), ce + 2.0 * (1 - p_t), rtol=1e-6)
    plain = Poly1CrossEntropy(epsilon=0.0, label_smoothing=smoothing, reduction="none")(logits, target)
    assert torch.allclose(plain.double(), ce, rtol=1e-6)


def test_poly1_focal_gamma_zero_is_bce_plus_epsilon_term():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 3, generator=g, dtype=torch.float64)
    target = torch.tensor([[1.0, 0, 1], [0, 0, 1], [1, 1, 0], [0, 0, 0]], dtype=torch.float64)
    p = torch.sigmoid(logits)
    p_t = p * target + (1 - p) * (1 - target)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    got = Poly1FocalLoss(epsilon=0.5, gamma=0.0, alpha=-1.0, reduction="none")(logits, target)
    assert torch.allclose(got.double(), bce + 0.5 * (1 - p_t), rtol=1e-6)
    alpha = Poly1FocalLoss(epsilon=0.5, gamma=2.0, alpha=0.25, reduction="none")(logits, target)
    alpha_t = 0.25 * target + 0.75 * (1 - target)
    expected = alpha_t * bce * (1 - p_t) ** 2 + 0.5 * (1 - p_t) ** 3  # the poly term is not alpha-weighted
    assert torch.allclose(alpha.double(), expected, rtol=1e-6)
    with pytest.raises(ValueError, match="one- or multi-hot"):
        Poly1FocalLoss()(logits, torch.tensor([0, 1, 2, 0]))


@pytest.mark.parametrize("module", [EncouragingLoss(0.5), LabelSmoothingEncouragingLoss(0.1, 0.75),
                                    Poly1CrossEntropy(1.0, 0.1)])
def test_gradcheck_float64(module):
    logits = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([0, 3, 1, 4])
    assert torch.autograd.gradcheck(lambda x: module(x, target).double(), (logits,))


def test_gradcheck_focal_and_lgm():
    logits = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    target = (torch.rand(3, 4) > 0.5).double()
    assert torch.autograd.gradcheck(lambda x: Poly1FocalLoss()(x, target).double(), (logits,))
    lgm = LGMLoss(3, 2, alpha=0.3, lambda_=0.1, learn_variance=True).double()
    feats = torch.randn(5, 2, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 1, 0])
    assert torch.autograd.gradcheck(lambda f: lgm(f, labels), (feats,))


def test_lgm_margin_raises_the_true_class_loss_and_logits_need_no_labels():
    torch.manual_seed(0)
    feats, labels = torch.randn(8, 4), torch.randint(0, 3, (8,))
    with_margin, without = LGMLoss(3, 4, alpha=0.5, lambda_=0.0), LGMLoss(3, 4, alpha=0.0, lambda_=0.0)
    without.load_state_dict(with_margin.state_dict())
    assert with_margin(feats, labels).item() > without(feats, labels).item()
    with_margin.eval()  # the margin applies in training only
    assert with_margin(feats, labels).item() == pytest.approx(without.eval()(feats, labels).item())
    d = 0.5 * ((feats[:, None, :] - with_margin.means[None]) ** 2).sum(-1)
    assert torch.allclose(with_margin.logits(feats), -d, atol=1e-5)


def test_lgm_separates_gaussian_classes():
    torch.manual_seed(0)
    centres = torch.tensor([[3.0, 0.0], [-3.0, 0.0], [0.0, 3.0]])
    labels = torch.randint(0, 3, (300,))
    feats = centres[labels] + 0.5 * torch.randn(300, 2)
    lgm = LGMLoss(3, 2, alpha=0.1, lambda_=0.1)
    optimiser = torch.optim.Adam(lgm.parameters(), lr=0.1)
    for _ in range(100):
        optimiser.zero_grad()
        lgm(feats, labels).backward()
        optimiser.step()
    accuracy = (lgm.logits(feats).argmax(-1) == labels).float().mean().item()
    assert accuracy > 0.97


def test_poly1_criterion_closed_form():
    model, sample = TinyModel(), make_sample()
    crit = AdjustLabelSmoothedPoly1CrossEntropyCriterion(Task(), sentence_avg=False, label_smoothing=0.1,
                                                         poly_epsilon=2.0, loss_impl="reference")
    loss, _, _ = crit(model, sample)
    fused = AdjustLabelSmoothedPoly1CrossEntropyCriterion(Task(), sentence_avg=False, label_smoothing=0.1,
                                                          poly_epsilon=2.0)(model, sample)[0]
    logits = model(**sample["net_input"])[0].reshape(-1, 16)
    target = sample["target"].reshape(-1)
    keep = target != 1
    lprobs = torch.log_softmax(logits[keep], -1)
    y = target[keep]
    nll = -lprobs[torch.arange(len(y)), y]
    eps_i = 0.1 / 15
    ce = (1 - 0.1 - eps_i) * nll - eps_i * lprobs.sum(-1)
    p_t = (1 - 0.1 - eps_i) * lprobs[torch.arange(len(y)), y].exp() + eps_i
    expected = (ce + 2.0 * (1 - p_t)).sum()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert fused.item() == pytest.approx(expected.item(), rel=1e-5)
    with pytest.raises(ValueError, match="--poly-epsilon"):
        AdjustLabelSmoothedPoly1CrossEntropyCriterion(Task(), sentence_avg=False, label_smoothing=0.1, poly_epsilon=-2)


def test_losses_import_without_fairseq():
    code = ("import sys; sys.modules['fairseq'] = None\n"
            "import torch, ofa_el.losses as L, ofa_el.losses.fused, ofa_el.losses.token_loss\n"
            "print(float(L.EncouragingLoss()(torch.zeros(2, 3), torch.tensor([0, 1]))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert float(out.stdout.strip()) == pytest.approx(math.log(3) + math.log(2 / 3))

