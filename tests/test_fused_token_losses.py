"""The fused CE / EL equals the reference autograd implementation: values, gradients, statistics."""
import itertools
import math

import pytest
import torch

from conftest import PAD, Task, TinyModel, make_sample
from ofa_el.criterions.adjust_label_smoothed_encouraging_loss import AdjustLabelSmoothedEncouragingLossCriterion
from ofa_el.losses.fused import fused_token_losses, row_max
from ofa_el.losses.terms import EncouragingBonus, LabelSmoothedCE, Poly1, support_mask_from_range
from ofa_el.losses.token_loss import token_losses

N, V = 17, 11
#: CUDA runs too where a GPU is present (the device checks); CI has none.
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def make_case(support_kind, weighted, dtype=torch.float64, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(N, V, generator=g, dtype=torch.float64) * 3
    logits[0, 3] = 40.0  # p_target -> 1: past log_end, bonus clamped
    target = torch.randint(0, V, (N,), generator=g)
    target[0] = 3
    support = None
    if support_kind == "range":
        support = support_mask_from_range(V, 5, 11)
        target = torch.where(support[target], target, torch.full_like(target, 7))
        target[0] = 7
        logits[0, 7] = 40.0
    elif support_kind == "masks":
        support = torch.rand(N, V, generator=g) > 0.3
        support[torch.arange(N), target] = True
    weights = torch.rand(N, generator=g, dtype=torch.float64) + 0.5 if weighted else None
    move = (lambda t: None if t is None else t.to(device))  # noqa: E731
    return logits.to(dtype).to(device), move(target), move(support), move(weights)


def criterion_terms(eps, log_end=None, poly_epsilon=None, bonus_weight=1.0):
    """The terms a criterion sums: CE, plus the (weighted) bonus for EL, or the Poly-1 term."""
    terms = [LabelSmoothedCE(eps)]
    if log_end is not None:
        terms.append(EncouragingBonus(eps, log_end).scaled(bonus_weight))
    if poly_epsilon is not None:
        terms.append(Poly1(poly_epsilon, eps))
    return terms


def reference(logits, target, eps, support, log_end=None, poly_epsilon=None, bonus_weight=1.0, **kwargs):
    z = logits.double() if support is None else logits.double().masked_fill(~support, float("-inf"))
    return token_losses(torch.log_softmax(z, -1), target, criterion_terms(eps, log_end, poly_epsilon, bonus_weight),
                        support=support, **kwargs)


def fused_losses(logits, target, eps, log_end=None, poly_epsilon=None, bonus_weight=1.0, **kwargs):
    return fused_token_losses(logits, target, criterion_terms(eps, log_end, poly_epsilon, bonus_weight), **kwargs)


#: (log_end, bonus weight): the weight is what --bonus-weight/--bonus-start-after/--bonus-schedule set per update.
BONUSES = [(None, 1.0), (0.3, 1.0), (0.3, 0.4), (0.5, 1.0), (0.5, 0.0), (0.75, 1.0), (0.75, 2.5), (1.0, 1.0),
           (1.0, 0.6)]
CASES = list(itertools.product([0.0, 0.1], BONUSES, ["none", "range", "masks"], [False, True],
                               [(0.0, 0.0), (0.2, 0.1)], [None, 0.7], [True, False]))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("eps, bonus, support_kind, weighted, drops, poly, reduce", CASES)
def test_fused_equals_reference_float64(eps, bonus, support_kind, weighted, drops, poly, reduce, device):
    logits, target, support, weights = make_case(support_kind, weighted, device=device)
    a, b = logits.clone().requires_grad_(True), logits.clone().requires_grad_(True)
    options = dict(log_end=bonus[0], bonus_weight=bonus[1], weights=weights, drop_worst_ratio=drops[0],
                   drop_best_ratio=drops[1], poly_epsilon=poly, reduce=reduce)
    ref = reference(a, target, eps, support, **options)
    fused = fused_losses(b, target, eps, support=support, **options)
    upstream = torch.linspace(-1.0, 2.0, N, dtype=torch.float64) if not reduce else torch.tensor(1.0)
    upstream = upstream.to(device)
    (ref.loss * upstream).sum().backward()
    (fused.loss * upstream).sum().backward()
    assert torch.allclose(fused.loss, ref.loss, rtol=1e-6, atol=1e-6)
    assert torch.allclose(fused.nll_loss, ref.nll_loss, rtol=1e-6, atol=1e-6)
    assert torch.allclose(b.grad, a.grad, rtol=1e-6, atol=1e-6)
    assert fused.sample_size == ref.sample_size
    assert (fused.kept is None and ref.kept is None) or torch.equal(fused.kept, ref.kept)
    for stat in ("n_correct", "p_target_sum", "bonus_sum", "past_log_end"):
        assert torch.allclose(getattr(fused, stat).double(), getattr(ref, stat).double(), atol=1e-9), stat


@pytest.mark.parametrize("vocab", [11, 511, 512, 513, 800, 8192, 59457])
def test_row_max_is_the_first_maximum(vocab):
    """The blocked maximum equals amax and argmax (the first index) for ties, -inf masks and a short last block."""
    g = torch.Generator().manual_seed(vocab)
    z = torch.randn(9, vocab, generator=g, dtype=torch.float64)
    z[1] = 0.5  # every entry ties
    z[2] = float("-inf")
    z[2, [vocab // 3, vocab - 1]] = 1.0  # masked row, tie between two blocks
    z[3, vocab - 1] = 50.0  # the maximum in the last (short) block
    z[4, [0, vocab - 1]] = 50.0
    for dtype in (torch.float64, torch.float32):
        value, index = row_max(z.to(dtype))
        assert torch.equal(value.squeeze(-1), z.to(dtype).amax(-1))
        assert torch.equal(index.squeeze(-1), z.to(dtype).argmax(-1))


def test_rows_select_from_a_larger_logit_matrix_without_copying():
    logits, target, _, _ = make_case("none", False)
    padded = torch.cat([torch.zeros(5, V, dtype=logits.dtype), logits]).requires_grad_(True)
    direct = logits.clone().requires_grad_(True)
    rows = torch.arange(5, 5 + N)
    fused_losses(padded, target, 0.1, rows=rows, log_end=0.75).loss.backward()
    fused_losses(direct, target, 0.1, log_end=0.75).loss.backward()
    assert torch.equal(padded.grad[:5], torch.zeros(5, V, dtype=logits.dtype))  # unscored rows: no gradient
    assert torch.allclose(padded.grad[5:], direct.grad)


def test_rdrop_falls_back_to_the_reference():
    logits, target, _, _ = make_case("none", False)
    both, targets = torch.cat([logits, logits + 0.1]), torch.cat([target, target])
    fused = fused_losses(both, targets, 0.1, log_end=0.75, rdrop_alpha=1.0, drop_worst_ratio=0.2)
    ref = reference(both, targets, 0.1, None, log_end=0.75, rdrop_alpha=1.0, drop_worst_ratio=0.2)
    assert fused.loss.item() == pytest.approx(ref.loss.item(), rel=1e-9)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("log_end", [0.75, 1.0])
def test_half_precision_logits_accumulate_in_float32(dtype, log_end, device):
    logits, target, support, _ = make_case("range", False, device=device)
    half = logits.to(dtype).requires_grad_(True)
    fused = fused_losses(half, target, 0.1, log_end=log_end, support=support)
    fused.loss.backward()
    exact = logits.to(dtype).double().requires_grad_(True)  # the same rounded inputs, in float64
    ref = reference(exact, target, 0.1, support, log_end=log_end)
    ref.loss.backward()
    assert half.grad.dtype == dtype and torch.isfinite(half.grad.float()).all()
    assert fused.loss.item() == pytest.approx(ref.loss.item(), rel=1e-5)
    tolerance = 1e-2 if dtype == torch.bfloat16 else 2e-3  # the gradient is rounded to the logits' dtype
    assert torch.allclose(half.grad.double(), exact.grad, atol=tolerance)


RAMP = dict(bonus_weight=0.7, bonus_start_after=3, bonus_schedule="cos", bonus_schedule_updates=10)


@pytest.mark.parametrize("bonus_options, update_num, bonus_weight", [
    ({}, 5, 1.0),
    (RAMP, 2, 0.0),  # before --bonus-start-after: no bonus
    (RAMP, 8, 0.7 * (1 - math.cos(math.pi * 0.5)) / 2),  # halfway up the ramp: t = 5 of T = 10
    (RAMP, 40, 0.7),  # past the ramp
])
def test_criterion_fused_and_reference_agree(bonus_options, update_num, bonus_weight):
    sample = make_sample(conf=torch.tensor([0.5, 1.0, 2.0]))
    results = {}
    for impl in ("fused", "reference"):
        model = TinyModel()
        crit = AdjustLabelSmoothedEncouragingLossCriterion(
            Task(), sentence_avg=False, label_smoothing=0.1, log_end=0.75, drop_worst_ratio=0.2,
            drop_best_ratio=0.1, report_accuracy=True, loss_impl=impl, **bonus_options)
        loss, size, log = crit(model, sample, update_num=update_num)
        loss.backward()
        results[impl] = (loss.item(), size, log, model.out.grad.clone(), model.embed.grad.clone())
    fused, ref = results["fused"], results["reference"]
    assert fused[0] == pytest.approx(ref[0], rel=1e-5) and fused[1] == ref[1]
    assert torch.allclose(fused[3], ref[3], atol=1e-5) and torch.allclose(fused[4], ref[4], atol=1e-5)
    for key in ("n_correct", "total", "ntokens_kept", "past_log_end", "bonus_weight_sum"):
        assert fused[2][key] == ref[2][key]
    assert fused[2]["bonus_sum"] == pytest.approx(ref[2]["bonus_sum"], rel=1e-5, abs=1e-7)
    assert fused[2]["bonus_weight_sum"] == pytest.approx(bonus_weight, rel=1e-12)
    assert (fused[2]["bonus_sum"] == 0.0) == (bonus_weight == 0.0)
    assert sample["target"].eq(PAD).any()  # padding really was skipped on both paths


def test_bad_loss_impl_is_named():
    with pytest.raises(ValueError, match="--loss-impl"):
        AdjustLabelSmoothedEncouragingLossCriterion(Task(), sentence_avg=False, label_smoothing=0.1, loss_impl="fast")


@pytest.mark.slow
def test_benchmark_quick_run_prints_the_table():
    import subprocess
    import sys

    from conftest import REPO_ROOT

    out = subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks" / "criterion_bench.py"), "--quick"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [line for line in out.stdout.splitlines() if line.strip().startswith(("64", "256"))]
    assert len(rows) == 2 and all(line.count("buf") == 4 for line in rows)
