"""The fairseq criteria: token flattening, options, OFA defects fixed, metrics."""
import math

import pytest
import torch
from fairseq import metrics

from ofa_el.criterions.adjust_label_smoothed_cross_entropy import AdjustLabelSmoothedCrossEntropyCriterion
from ofa_el.criterions.adjust_label_smoothed_encouraging_loss import AdjustLabelSmoothedEncouragingLossCriterion
from ofa_el.losses.terms import EncouragingBonus, LabelSmoothedCE, support_mask_from_range
from ofa_el.losses.token_loss import token_losses

from conftest import EOS, PAD, VOCAB, Task, TinyModel, make_sample


def criterion(cls=AdjustLabelSmoothedEncouragingLossCriterion, **kwargs):
    kwargs.setdefault("label_smoothing", 0.1)
    if cls is AdjustLabelSmoothedCrossEntropyCriterion:
        kwargs.pop("log_end", None)
    return cls(Task(), sentence_avg=kwargs.pop("sentence_avg", False), **kwargs)


def el_terms(eps=0.1, log_end=0.75):
    return [LabelSmoothedCE(eps), EncouragingBonus(eps, log_end)]


def reference(model, sample, keep_positions, log_end=0.75, eps=0.1, **kwargs):
    """token_losses on the hand-picked scored positions of the flattened [B, T] batch."""
    logits = model(**sample["net_input"])[0].reshape(-1, VOCAB)
    target = sample["target"].reshape(-1)
    idx = torch.tensor(keep_positions)
    return token_losses(torch.log_softmax(logits[idx].float(), -1), target[idx], el_terms(eps, log_end), **kwargs)


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
    ref = token_losses(lprobs, sample["target"].reshape(-1)[torch.tensor(positions)], el_terms(),
                       support=support)
    assert loss.item() == pytest.approx(ref.loss.item(), rel=1e-6)

    masks = torch.ones(3, 6, VOCAB, dtype=torch.bool)
    masks[..., 3:5] = False  # per-token masks that exclude ids 3 and 4
    loss_masked, _, _ = criterion()(model, make_sample(masks=masks))
    support_tok = masks.reshape(-1, VOCAB)[torch.tensor(positions)]
    lprobs = torch.log_softmax(logits.masked_fill(~support_tok, float("-inf")), -1)
    ref = token_losses(lprobs, sample["target"].reshape(-1)[torch.tensor(positions)], el_terms(),
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


@pytest.mark.parametrize("loss_impl", ["fused", "reference"])
def test_el_without_bonus_equals_ce_criterion(loss_impl):
    """--bonus-weight 0 (or an update before --bonus-start-after) is the CE criterion exactly: loss and gradient."""
    sample = make_sample(conf=torch.tensor([0.5, 1.0, 2.0]))
    ce = criterion(AdjustLabelSmoothedCrossEntropyCriterion, drop_worst_ratio=0.2, loss_impl=loss_impl)
    results = []
    for crit in (ce, criterion(drop_worst_ratio=0.2, bonus_weight=0.0, loss_impl=loss_impl),
                 criterion(drop_worst_ratio=0.2, bonus_start_after=4, loss_impl=loss_impl)):
        model = TinyModel()
        loss, size, log = crit(model, sample, update_num=3)
        loss.backward()
        results.append((loss.item(), size, log["nll_loss"].item(), model.out.grad, model.embed.grad))
    for el in results[1:]:
        assert el[:3] == results[0][:3]
        assert torch.equal(el[3], results[0][3]) and torch.equal(el[4], results[0][4])
    with_bonus = criterion(drop_worst_ratio=0.2, loss_impl=loss_impl)(TinyModel(), sample, update_num=3)[0]
    assert with_bonus.item() < results[0][0]  # the bonus is negative


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
    (dict(bonus_weight=-0.5), "--bonus-weight"),
    (dict(bonus_weight=float("nan")), "--bonus-weight"),
    (dict(bonus_start_after=-1), "--bonus-start-after"),
    (dict(bonus_schedule="step"), "--bonus-schedule"),
    (dict(bonus_schedule="linear"), "--bonus-schedule-updates"),
    (dict(bonus_schedule="cos", bonus_schedule_updates=0), "--bonus-schedule-updates"),
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


# ---------------------------------------------------------------- the bonus weight (--bonus-*)
EXP = {-5.0: 0.006737946999085467, -3.75: 0.023517745856009107, -2.5: 0.0820849986238988}  # exp(x), by hand
COS_QUARTER = 0.7071067811865476  # cos(pi/4)


@pytest.mark.parametrize("schedule, expected", [
    # rho 2, start after 10 updates, T = 20; update_num = updates already done
    ("constant", {0: 0.0, 9: 0.0, 10: 2.0, 15: 2.0, 30: 2.0}),
    ("linear", {9: 0.0, 10: 0.0, 15: 0.5, 20: 1.0, 29: 1.9, 30: 2.0, 500: 2.0}),
    ("exp", {9: 0.0, 10: 2 * EXP[-5.0], 15: 2 * EXP[-3.75], 20: 2 * EXP[-2.5], 30: 2.0}),
    ("cos", {9: 0.0, 10: 0.0, 15: 1 - COS_QUARTER, 20: 1.0, 25: 1 + COS_QUARTER, 30: 2.0}),
])
def test_bonus_weight_follows_the_schedule(schedule, expected):
    crit = criterion(bonus_weight=2.0, bonus_start_after=10, bonus_schedule=schedule, bonus_schedule_updates=20)
    for update_num, weight in expected.items():
        assert crit.bonus_weight(update_num, training=True) == pytest.approx(weight, rel=1e-12, abs=1e-15), update_num
    assert crit.bonus_weight(None, training=False) == 2.0  # validation: rho, the weight every schedule ends at


def test_the_loss_is_ce_plus_the_weighted_bonus():
    """At weight w the EL loss is the CE loss plus w times the (unweighted) bonus, in both paths."""
    model, sample = TinyModel(), make_sample()
    for loss_impl in ("fused", "reference"):
        ce = criterion(AdjustLabelSmoothedCrossEntropyCriterion, loss_impl=loss_impl)(model, sample)[0].item()
        bonus = criterion(loss_impl=loss_impl)(model, sample)[2]["bonus_sum"]
        ramp = criterion(bonus_weight=3.0, bonus_schedule="linear", bonus_schedule_updates=8, loss_impl=loss_impl)
        loss, _, log = ramp(model, sample, update_num=2)  # weight 3 * 2/8
        assert log["bonus_weight_sum"] == 0.75
        assert log["bonus_sum"] == pytest.approx(0.75 * bonus, rel=1e-6)
        assert loss.item() == pytest.approx(ce + 0.75 * bonus, rel=1e-6)


def test_validation_uses_rho_and_scheduled_training_needs_update_num():
    model, sample = TinyModel(), make_sample()
    for options in (dict(bonus_start_after=5), dict(bonus_schedule="exp", bonus_schedule_updates=10)):
        crit = criterion(bonus_weight=0.5, **options)
        with pytest.raises(ValueError, match="--bonus-schedule/--bonus-start-after.*without update_num"):
            crit(model.train(), sample)
        loss, _, log = crit(model.eval(), sample)
        assert log["bonus_weight_sum"] == 0.5
        past_the_ramp = crit(model, sample, update_num=1000)[0]
        assert loss.item() == past_the_ramp.item()
    model.train()
    _, _, log = criterion(bonus_weight=0.5)(model, sample)  # constant from update 0: no update count needed
    assert log["bonus_weight_sum"] == 0.5


def test_bonus_weight_metric_is_averaged_over_the_log_interval():
    model, sample = TinyModel(), make_sample()
    crit = criterion(bonus_schedule="linear", bonus_schedule_updates=4)
    with metrics.aggregate() as agg:
        for update_num in (1, 2, 3):  # weights 0.25, 0.5, 0.75; two workers per update
            logs = [crit(model, sample, update_num=update_num)[2] for _ in range(2)]
            AdjustLabelSmoothedEncouragingLossCriterion.reduce_metrics(logs)
    values = agg.get_smoothed_values()
    assert values["bonus_weight"] == pytest.approx(0.5)
    assert values["bonus"] < 0 and "past_log_end" in values
    with metrics.aggregate() as agg:
        AdjustLabelSmoothedCrossEntropyCriterion.reduce_metrics([criterion(AdjustLabelSmoothedCrossEntropyCriterion)(
            model, sample)[2]])
    assert not {"bonus_weight", "bonus", "past_log_end"} & set(agg.get_smoothed_values())  # CE logs none of EL's


def test_two_view_batches_log_one_weight():
    model, sample = TinyModel(), make_sample()
    _, _, log = criterion(bonus_weight=0.3, sample_patch_num=0)(model, [sample, make_sample()])
    with metrics.aggregate() as agg:
        AdjustLabelSmoothedEncouragingLossCriterion.reduce_metrics([log])
    assert agg.get_smoothed_values()["bonus_weight"] == pytest.approx(0.3)


# ---------------------------------------------------------------- built from the config, as fairseq builds criteria
class NoDictionaryTask:
    """A task without a dictionary: every recipe's --constraint-range passes (the real size is checked with one)."""


def test_stock_build_criterion_from_dictconfig_namespace_and_dataclass():
    import argparse

    from fairseq.criterions import build_criterion
    from omegaconf import OmegaConf

    from ofa_el.criterions.adjust_label_smoothed_encouraging_loss import AdjustLabelSmoothedEncouragingLossConfig

    name = "adjust_label_smoothed_encouraging_loss"
    values = dict(label_smoothing=0.1, log_end=0.5, sentence_avg=False, bonus_weight=0.5, bonus_schedule="cos",
                  bonus_schedule_updates=7, drop_worst_ratio=0.1)
    built = [
        build_criterion(OmegaConf.create({"_name": name, **values}), Task()),  # hydra / --config-name
        build_criterion(argparse.Namespace(criterion=name, **values), Task()),  # legacy args -> the dataclass
        AdjustLabelSmoothedEncouragingLossCriterion.build_criterion(AdjustLabelSmoothedEncouragingLossConfig(
            **values), Task()),
    ]
    for crit in built:
        assert isinstance(crit, AdjustLabelSmoothedEncouragingLossCriterion)
        assert (crit.eps, crit.log_end, crit.drop_worst_ratio, crit.sentence_avg) == (0.1, 0.5, 0.1, False)
        assert crit.bonus_weight(7, training=True) == 0.5 and crit.bonus_weight(0, training=True) == 0.0
    with pytest.raises(TypeError, match="either a config or keyword options"):
        AdjustLabelSmoothedEncouragingLossCriterion(Task(), AdjustLabelSmoothedEncouragingLossConfig(), log_end=0.5)
    with pytest.raises(ValueError, match="--sentence-avg"):  # an unresolved ${optimization.sentence_avg}
        AdjustLabelSmoothedEncouragingLossCriterion(Task(), AdjustLabelSmoothedEncouragingLossConfig())


def test_command_line_and_recipes_build_the_criteria(capsys):
    from pathlib import Path

    from fairseq import options
    from fairseq.criterions import build_criterion
    from omegaconf import OmegaConf

    from conftest import REPO_ROOT
    from ofa_el.criterions.adjust_label_smoothed_poly1_cross_entropy import (
        AdjustLabelSmoothedPoly1CrossEntropyCriterion,
    )
    from ofa_el.recipes import fairseq_arguments, load_recipe

    import ofa_el

    ofa_el.claim_folder_name()  # as the plugin's entry points do: --user-dir may name a folder with a dot in it

    def parse(argv):
        return options.parse_args_and_arch(options.get_training_parser(), argv + ["--user-dir", str(REPO_ROOT)])

    common = ["/data", "--task", "translation", "--arch", "transformer", "--label-smoothing", "0.1"]
    args = parse(common + ["--criterion", "adjust_label_smoothed_encouraging_loss", "--log-end", "0.75",
                           "--bonus-weight", "0.5", "--bonus-start-after", "100", "--bonus-schedule", "linear",
                           "--bonus-schedule-updates", "1000"])
    el = build_criterion(args, NoDictionaryTask())
    assert isinstance(el, AdjustLabelSmoothedEncouragingLossCriterion) and el.log_end == 0.75 and el.eps == 0.1
    assert el.bonus_weight(600, training=True) == pytest.approx(0.25)
    poly = build_criterion(parse(common + ["--criterion", "adjust_label_smoothed_poly1_cross_entropy",
                                           "--poly-epsilon", "2"]), NoDictionaryTask())
    assert isinstance(poly, AdjustLabelSmoothedPoly1CrossEntropyCriterion) and poly.poly_epsilon == 2.0
    with pytest.raises(SystemExit):  # argparse knows the schedules
        parse(common + ["--criterion", "adjust_label_smoothed_encouraging_loss", "--bonus-schedule", "step"])
    assert "invalid choice: 'step'" in capsys.readouterr().err
    kinds = set()
    for path in sorted(Path(REPO_ROOT / "configs").glob("*/*.yaml")):
        if path.parent.name == "reverse_demo":  # a fairseq-hydra-train config (below), not a launcher recipe
            continue
        recipe = load_recipe(path)
        if recipe.get("entry", "train") != "train" or not str(recipe["args"].get("criterion")).startswith(
                "adjust_label_smoothed_"):  # e.g. stage 2's SCST criterion, which needs its task
            continue
        crit = build_criterion(parse(fairseq_arguments(recipe, {})), NoDictionaryTask())
        kinds.add(type(crit).__name__)
        if recipe["args"].get("criterion") == "adjust_label_smoothed_encouraging_loss":
            assert crit.log_end == recipe["args"]["log-end"] and crit.bonus_weight(None, training=True) == 1.0
    assert kinds == {"AdjustLabelSmoothedCrossEntropyCriterion", "AdjustLabelSmoothedEncouragingLossCriterion"}
    hydra_config = OmegaConf.load(REPO_ROOT / "configs" / "reverse_demo" / "el.yaml").criterion
    hydra_config.sentence_avg = False  # ${optimization.sentence_avg} in a whole config
    el = build_criterion(hydra_config, NoDictionaryTask())
    assert isinstance(el, AdjustLabelSmoothedEncouragingLossCriterion) and el.log_end == 0.75 and el.report_accuracy
