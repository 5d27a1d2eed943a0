"""The fairseq criteria: token flattening, options, OFA defects fixed, metrics."""
import math

import pytest
import torch
from fairseq import metrics

from ofa_el.criterions.adjust_label_smoothed_cross_entropy import AdjustLabelSmoothedCrossEntropyCriterion
from ofa_el.criterions.adjust_label_smoothed_encouraging_loss import AdjustLabelSmoothedEncouragingLossCriterion
from ofa_el.criterions.token_losses import support_mask_from_range, token_losses

from conftest import EOS, PAD, VOCAB, Task, TinyModel, make_sample


def criterion(cls=AdjustLabelSmoothedEncouragingLossCriterion, **kwargs):
    kwargs.setdefault("label_smoothing", 0.1)
    if cls is AdjustLabelSmoothedCrossEntropyCriterion:
        kwargs.pop("log_end", None)
    return cls(Task(), sentence_avg=kwargs.pop("sentence_avg", False), **kwargs)


def reference(model, sample, keep_positions, log_end=0.75, eps=0.1, **kwargs):
    """token_losses on the hand-picked scored positions of the flattened [B, T] batch."""
    logits = model(**sample["net_input"])[0].reshape(-1, VOCAB)
    target = sample["target"].reshape(-1)
    idx = torch.tensor(keep_positions)
    return token_losses(torch.log_softmax(logits[idx].float(), -1), target[idx], eps, log_end=log_end, **kwargs)


def scored_positions(target, prefix=0, skip_eos=False):
    out = []
    for b, row in enumerate(target.tolist()):
        for t, tok in enumerate(row):
            if t < prefix or tok == PAD or (skip_eos and tok == EOS):
                continue
            out.append(b * len(row) + t)
    return out


def test_loss_and_sample_size_match_token_math():
    model, sample = TinyModel(), make_sample()
    loss, sample_size, log = criterion()(model, sample)
    ref = reference(model, sample, scored_positions(sample["target"]))
    assert loss.item() == pytest.approx(ref.loss.item(), rel=1e-6)
    assert sample_size == sample["ntokens"] == 14
    assert log["p_target_sum"] == pytest.approx(ref.p_target_sum.item(), rel=1e-6)
    assert log["bonus_sum"] == pytest.approx(ref.bonus_sum.item(), rel=1e-6)


def test_ignore_prefix_and_eos():
    model, sample = TinyModel(), make_sample()
    loss, sample_size, _ = criterion(ignore_prefix_size=1, ignore_eos=True)(model, sample)
    positions = scored_positions(sample["target"], prefix=1, skip_eos=True)
    # OFA's reshape would need exactly one eos per row; masking eos does not.
    assert sample_size == len(positions) == 8
    assert loss.item() == pytest.approx(reference(model, sample, positions).loss.item(), rel=1e-6)


def test_per_sample_weights_from_conf():
    model = TinyModel()
    conf = torch.tensor([0.5, 1.0, 2.0])
    loss, _, _ = criterion()(model, make_sample(conf=conf))
    target = make_sample()["target"]
    positions = scored_positions(target)
    weights = conf[torch.tensor(positions) // target.size(1)]
    ref = reference(model, make_sample(), positions, weights=weights)
    assert loss.item() == pytest.approx(ref.loss.item(), rel=1e-6)


def test_constraint_range_and_masks_restrict_the_softmax():
    model, sample = TinyModel(), make_sample()
    crit = criterion(constraint_range="5,16")
    loss, _, _ = crit(model, sample)
    positions = scored_positions(sample["target"])
    logits = model(**sample["net_input"])[0].reshape(-1, VOCAB)[torch.tensor(positions)]
    support = support_mask_from_range(VOCAB, 5, 16)
    lprobs = torch.log_softmax(logits.masked_fill(~support, float("-inf")), -1)
    ref = token_losses(lprobs, sample["target"].reshape(-1)[torch.tensor(positions)], 0.1, log_end=0.75,
                       support=support)
    assert loss.item() == pytest.approx(ref.loss.item(), rel=1e-6)

    masks = torch.ones(3, 6, VOCAB, dtype=torch.bool)
    masks[..., 3:5] = False  # per-token masks that exclude ids 3 and 4
    loss_masked, _, _ = criterion()(model, make_sample(masks=masks))
    support_tok = masks.reshape(-1, VOCAB)[torch.tensor(positions)]
    lprobs = torch.log_softmax(logits.masked_fill(~support_tok, float("-inf")), -1)
    ref = token_losses(lprobs, sample["target"].reshape(-1)[torch.tensor(positions)], 0.1, log_end=0.75,
                       support=support_tok)
    assert loss_masked.item() == pytest.approx(ref.loss.item(), rel=1e-6)
    assert torch.isfinite(loss_masked)


def test_report_accuracy_counts_argmax_hits():
    model, sample = TinyModel(), make_sample()
    _, _, log = criterion(report_accuracy=True)(model, sample)
    positions = torch.tensor(scored_positions(sample["target"]))
    logits = model(**sample["net_input"])[0].reshape(-1, VOCAB)[positions]
    hits = (logits.argmax(-1) == sample["target"].reshape(-1)[positions]).sum().item()
    assert log["n_correct"] == hits and log["total"] == len(positions)


def test_drop_ratios_apply_only_after_their_update():
    model, sample = TinyModel(), make_sample()
    crit = criterion(drop_best_ratio=0.25, drop_best_after=10)
    _, before, _ = crit(model, sample, update_num=10)
    loss, after, _ = crit(model, sample, update_num=11)
    assert before == 14 and after == int(14 * 0.75)
    ref = reference(model, sample, scored_positions(sample["target"]), drop_best_ratio=0.25)
    assert loss.item() == pytest.approx(ref.loss.item(), rel=1e-6)


def test_dropping_without_update_num_is_refused_in_training_only():
    """Stock fairseq tasks call criterion(model, sample): in training that must not silently skip the dropping
    asked for; in validation (model.eval()) nothing is dropped anyway."""
    model, sample = TinyModel(), make_sample()
    crit = criterion(drop_worst_ratio=0.25)
    with pytest.raises(ValueError, match="--drop-worst-ratio/--drop-best-ratio.*without update_num"):
        crit(model, sample)
    model.eval()
    _, sample_size, _ = crit(model, sample)
    assert sample_size == sample["ntokens"]  # nothing dropped
    model.train()
    _, sample_size, _ = criterion()(model, sample)  # no dropping asked: no update count needed
    assert sample_size == sample["ntokens"]


def test_rdrop_with_drop_worst_keeps_targets_aligned():
    """OFA scrambled targets here; with identical copies the KL is 0 and each copy scores like a single pass."""
    model, sample = TinyModel().eval(), make_sample()
    crit = criterion(use_rdrop=True, reg_alpha=1.0, drop_worst_ratio=0.25)
    loss, sample_size, _ = crit(model, sample, update_num=1)
    single = reference(model, sample, scored_positions(sample["target"]), drop_worst_ratio=0.25)
    assert sample_size == 2 * single.sample_size
    assert loss.item() == pytest.approx(2 * single.loss.item(), rel=1e-6)


def test_rdrop_adds_kl_between_dropout_copies():
    torch.manual_seed(0)
    model, sample = TinyModel(dropout=0.3).train(), make_sample()
    loss, _, _ = criterion(use_rdrop=True, reg_alpha=5.0)(model, sample)
    torch.manual_seed(0)
    loss_no_kl, _, _ = criterion(use_rdrop=True, reg_alpha=0.0)(model, sample)
    assert loss.item() > loss_no_kl.item()


def test_reduce_false_returns_per_position_losses():
    model, sample = TinyModel(), make_sample()
    crit = criterion()
    per_pos, _, _ = crit(model, sample, reduce=False)
    total, _, _ = crit(model, sample)
    assert per_pos.shape == sample["target"].shape
    assert torch.all(per_pos[sample["target"] == PAD] == 0)
    assert per_pos.sum().item() == pytest.approx(total.item(), rel=1e-6)


def test_el_without_bonus_equals_ce_criterion():
    model, sample = TinyModel(), make_sample()
    el = criterion(drop_worst_ratio=0.2)
    el.log_end = None
    ce = criterion(AdjustLabelSmoothedCrossEntropyCriterion, drop_worst_ratio=0.2)
    assert el(model, sample, update_num=3)[0].item() == ce(model, sample, update_num=3)[0].item()
    with_bonus = criterion(drop_worst_ratio=0.2)(model, sample, update_num=3)[0]
    assert with_bonus.item() < ce(model, sample, update_num=3)[0].item()  # the bonus is negative


def test_gradients_flow_to_the_model():
    model, sample = TinyModel(), make_sample()
    loss, _, _ = criterion(drop_worst_ratio=0.2, drop_best_ratio=0.1)(model, sample, update_num=5)
    loss.backward()
    assert model.out.grad.abs().sum() > 0 and torch.isfinite(model.out.grad).all()


@pytest.mark.parametrize("kwargs, message", [
    (dict(log_end=0.0), "--log-end"),
    (dict(log_end=1.5), "--log-end"),
    (dict(drop_worst_ratio=1.0), "--drop-worst-ratio"),
    (dict(drop_best_ratio=-0.1), "--drop-best-ratio"),
    (dict(constraint_range="a,b"), "--constraint-range"),
    (dict(constraint_range="5"), "--constraint-range"),
    (dict(constraint_range="9,3"), "--constraint-range"),
    (dict(constraint_range="5,99"), "--constraint-range"),
    (dict(label_smoothing=1.0), "--label-smoothing"),
])
def test_bad_options_name_the_option(kwargs, message):
    with pytest.raises(ValueError, match=message):
        criterion(**kwargs)


def test_metrics_are_base2_and_sum_across_workers():
    model, sample = TinyModel(), make_sample()
    crit = criterion(report_accuracy=True)
    logs = [crit(model, sample)[2], crit(model, sample)[2]]  # two workers with the same batch
    with metrics.aggregate() as agg:
        AdjustLabelSmoothedEncouragingLossCriterion.reduce_metrics(logs)
    values = agg.get_smoothed_values()
    single = logs[0]
    assert values["loss"] == pytest.approx(single["loss"].item() / 14 / math.log(2), abs=1e-3)
    assert values["nll_loss"] == pytest.approx(single["nll_loss"].item() / 14 / math.log(2), abs=1e-3)
    assert values["ppl"] == pytest.approx(2 ** values["nll_loss"], rel=1e-2)
    assert values["p_target"] == pytest.approx(single["p_target_sum"] / 14, abs=1e-4)
    assert values["accuracy"] == pytest.approx(100 * single["n_correct"] / 14, abs=1e-3)
    assert 0.0 <= values["past_log_end"] <= 1.0
    assert crit.logging_outputs_can_be_summed()
