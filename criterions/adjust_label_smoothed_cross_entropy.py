"""Criterion ``adjust_label_smoothed_cross_entropy``: OFA's label-smoothed CE, corrected.

It is the A/B baseline of the Encouraging Loss and Poly-1 criteria, which subclass it and only
add their term. The maths lives in ``ofa_el.losses`` (torch only): a criterion declares the per-token
terms it sums (:meth:`build_terms`, from its config), and the drivers there compute them. This file is
fairseq glue: options, token flattening (prefix, eos, padding, constraints, weights), R-Drop batch
duplication, update-dependent token dropping and metrics.
"""

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from fairseq import metrics, utils
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from omegaconf import II
from torch import Tensor

from ..errors import OptionError
from ..losses.fused import fused_token_losses
from ..losses.terms import LabelSmoothedCE, Term, support_mask_from_range
from ..losses.token_loss import TokenLossOutput, token_losses

LN2 = math.log(2.0)
#: Options the criterion keeps as given, as attributes of the same name (checked in ``__init__``).
KEPT_OPTIONS = ("sentence_avg", "ignore_prefix_size", "ignore_eos", "report_accuracy", "drop_worst_ratio",
                "drop_worst_after", "drop_best_ratio", "drop_best_after", "use_rdrop", "reg_alpha", "sample_patch_num")


@dataclass
class AdjustLabelSmoothedCrossEntropyConfig(FairseqDataclass):
    label_smoothing: float = field(default=0.0, metadata={"help": "epsilon for label smoothing, 0 means none"})
    report_accuracy: bool = field(default=False, metadata={"help": "report token accuracy"})
    ignore_prefix_size: int = field(default=0, metadata={"help": "ignore the first N target positions"})
    ignore_eos: bool = field(default=False, metadata={"help": "leave eos targets out of the loss"})
    sentence_avg: bool = II("optimization.sentence_avg")
    drop_worst_ratio: float = field(
        default=0.0, metadata={"help": "share of target tokens with the highest loss to drop, in [0, 1)"})
    drop_worst_after: int = field(
        default=0, metadata={"help": "drop the worst tokens only once more than this many updates are done"})
    drop_best_ratio: float = field(
        default=0.0, metadata={"help": "share of target tokens with the lowest loss to drop, in [0, 1)"})
    drop_best_after: int = field(
        default=0, metadata={"help": "drop the best tokens only once more than this many updates are done"})
    use_rdrop: bool = field(default=False, metadata={"help": "use R-Drop (run each sample twice, add their KL)"})
    reg_alpha: float = field(default=1.0, metadata={"help": "weight of the R-Drop KL term"})
    sample_patch_num: int = field(
        default=196, metadata={"help": "patches kept for the first view of a two-view (list) batch; <= 0 keeps all"})
    constraint_range: Optional[str] = field(
        default=None, metadata={"help": "'start,end': restrict the softmax to the 4 specials and ids [start, end)"})
    loss_impl: ChoiceEnum(["fused", "reference"]) = field(
        default="fused", metadata={"help": "fused: closed-form gradient, CE's memory; reference: plain autograd"})
    conf_weighting: ChoiceEnum(["loss", "log-prob"]) = field(
        default="loss", metadata={"help": "how a sample's conf (vqa_gen's answer confidence) weights it: loss "
                                          "multiplies every term of its tokens by conf; log-prob multiplies the "
                                          "log-probabilities by conf before the terms, as OFA does (the same CE; "
                                          "EL's bonus becomes log(1 - p^conf)); log-prob runs the reference path"})


def parse_constraint_range(value: Optional[str], vocab_size: Optional[int] = None) -> Optional[Tuple[int, int]]:
    """Parse ``--constraint-range start,end`` with an error that names the option."""
    if value is None or value == "":
        return None
    parts = str(value).split(",")
    try:
        start, end = (int(p) for p in parts)
    except ValueError:
        raise OptionError(f"--constraint-range: expected two integers 'start,end', got {value!r}") from None
    if not 0 <= start < end:
        raise OptionError(f"--constraint-range: need 0 <= start < end, got {value!r}")
    if vocab_size is not None and end > vocab_size:
        raise OptionError(f"--constraint-range: end {end} exceeds the dictionary size {vocab_size}")
    return start, end


def check_ratio(name: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise OptionError(f"--{name.replace('_', '-')}: must lie in [0, 1), got {value}")


def duplicate_for_rdrop(sample: Any) -> Any:
    """Two aligned copies of a batch (a, b, a, b): R-Drop compares the two forward passes."""
    if isinstance(sample, dict):
        return {key: duplicate_for_rdrop(value) for key, value in sample.items()}
    if isinstance(sample, Tensor):
        return torch.cat([sample, sample], dim=0)
    if isinstance(sample, np.ndarray):
        return np.concatenate([sample, sample], axis=0)
    if isinstance(sample, list):
        return sample + sample
    if isinstance(sample, bool) or sample is None or isinstance(sample, str):
        return sample
    if isinstance(sample, int):
        return sample * 2  # ntokens, nsentences
    return sample


@register_criterion("adjust_label_smoothed_cross_entropy", dataclass=AdjustLabelSmoothedCrossEntropyConfig)
class AdjustLabelSmoothedCrossEntropyCriterion(FairseqCriterion):
    """Label-smoothed CE with OFA's options: the sum of the terms :meth:`build_terms` declares ([CE] here).

    Built from its config, ``cls(task, cfg)`` (a config dataclass or fairseq's DictConfig), or from keyword
    options, ``cls(task, label_smoothing=0.1, ...)`` (``sentence_avg`` then defaults to False).
    """

    config_class = AdjustLabelSmoothedCrossEntropyConfig

    def __init__(self, task, cfg: Optional[Any] = None, **options):
        super().__init__(task)
        cfg = self.resolve_config(cfg, options)
        loss_impl = str(cfg.loss_impl)
        if loss_impl not in ("fused", "reference"):
            raise OptionError(f"--loss-impl: expected 'fused' or 'reference', got {loss_impl!r}")
        self.conf_weighting = str(cfg.conf_weighting)
        if self.conf_weighting not in ("loss", "log-prob"):
            raise OptionError(f"--conf-weighting: expected 'loss' or 'log-prob', got {self.conf_weighting!r}")
        if not 0.0 <= cfg.label_smoothing < 1.0:
            raise OptionError(f"--label-smoothing: must lie in [0, 1), got {cfg.label_smoothing}")
        for name in ("drop_worst_ratio", "drop_best_ratio"):
            check_ratio(name, getattr(cfg, name))
        if cfg.ignore_prefix_size < 0:
            raise OptionError(f"--ignore-prefix-size: must be >= 0, got {cfg.ignore_prefix_size}")
        if cfg.reg_alpha < 0:
            raise OptionError(f"--reg-alpha: must be >= 0, got {cfg.reg_alpha}")
        if not isinstance(cfg.sentence_avg, bool):
            raise OptionError(f"--sentence-avg: expected a boolean, got {cfg.sentence_avg!r}")
        dictionary = getattr(task, "target_dictionary", None)
        for name in KEPT_OPTIONS:
            setattr(self, name, getattr(cfg, name))
        self.eps = cfg.label_smoothing
        self.constraint_range = parse_constraint_range(cfg.constraint_range, len(dictionary) if dictionary else None)
        self.eos_idx = dictionary.eos() if dictionary is not None else 2
        self.loss_impl = loss_impl
        self.terms: List[Term] = self.build_terms(cfg)

    @classmethod
    def resolve_config(cls, cfg: Optional[Any], options: Dict[str, Any]) -> Any:
        """The config to build from: ``cfg`` as given, or ``config_class(**options)`` for keyword construction."""
        if cfg is None:
            return cls.config_class(**{"sentence_avg": False, **options})
        if options:
            raise TypeError(f"{cls.__name__}: pass either a config or keyword options, not both ({sorted(options)})")
        return cfg

    @classmethod
    def build_criterion(cls, cfg, task):
        """fairseq's entry point: the criterion reads every option from ``cfg`` itself."""
        return cls(task, cfg)

    def build_terms(self, cfg) -> List[Term]:
        """The per-token terms this criterion sums, from its config; a subclass adds its own (and checks its flags)."""
        return [LabelSmoothedCE(self.eps)]

    def terms_at(self, update_num: Optional[int], training: bool) -> List[Term]:
        """The terms of one step; a subclass may weight a term by the update (the EL bonus schedule)."""
        return self.terms

    def step_statistics(self, update_num: Optional[int], training: bool) -> Dict[str, float]:
        """Extra logging outputs of one step (summed across workers by fairseq); none here."""
        return {}

    # ------------------------------------------------------------------ forward
    def forward(self, model, sample, update_num: Optional[int] = None, reduce: bool = True):
        """Returns (loss, sample_size, logging_output), as every fairseq criterion does.

        ``update_num`` (the updates done) decides when ``--drop-*-after`` has passed (and, for EL, the bonus
        weight). The plugin's tasks pass it, as OFA's do; stock fairseq tasks call ``criterion(model, sample)``
        without it, which is fine for validation and for training without update-dependent options (see
        ``active_ratios``).
        """
        if isinstance(sample, list):
            return self._forward_two_views(model, sample, update_num, reduce)
        if self.use_rdrop:
            sample = duplicate_for_rdrop(sample)
        net_output = model(**sample["net_input"])
        loss, nll_loss, stats = self.compute_loss(model, net_output, sample, update_num, reduce=reduce)
        sample_size = sample["target"].size(0) if self.sentence_avg else stats["ntokens_kept"]
        logging_output = {
            "loss": loss.data.sum() if not reduce else loss.data,
            "nll_loss": nll_loss.data.sum() if not reduce else nll_loss.data,
            "ntokens": sample["ntokens"],
            "nsentences": sample["nsentences"],
            "sample_size": sample_size,
            **stats,
        }
        return loss, sample_size, logging_output

    def _forward_two_views(self, model, samples: List[Dict], update_num: Optional[int], reduce: bool):
        """OFA's two-view batches: the first view keeps ``sample_patch_num`` patches; per-view means are added."""
        if len(samples) != 2:
            raise ValueError(f"a list batch must hold exactly two views, got {len(samples)}")
        first = dict(samples[0], net_input=dict(samples[0]["net_input"]))
        if self.sample_patch_num > 0:
            first["net_input"]["sample_patch_num"] = self.sample_patch_num
        loss_1, size_1, log_1 = self.forward(model, first, update_num, reduce)
        loss_2, size_2, log_2 = self.forward(model, samples[1], update_num, reduce)
        loss = loss_1 / max(size_1, 1) + loss_2 / max(size_2, 1)
        logging_output = {key: log_1.get(key, 0) + log_2.get(key, 0) for key in set(log_1) | set(log_2)}
        # Both views are already averaged: scale the sums so that reduce_metrics shows that mean.
        logging_output["loss"] = loss.data.sum()
        logging_output["sample_size"] = 1
        logging_output["nll_loss"] = log_1["nll_loss"] / max(log_1["ntokens_kept"], 1) + log_2["nll_loss"] / max(
            log_2["ntokens_kept"], 1)
        logging_output["ntokens_kept"] = 1
        return loss, 1, logging_output

    # ------------------------------------------------------------------ tokens
    def flat_tokens(self, model, net_output, sample):
        """The scored target tokens: all logits as [B*T, V] (no copy), the scored ``positions`` in it,
        and per scored token its target, support (None, [V] or [N, V]) and weight."""
        logits = net_output[0]
        if getattr(getattr(model, "decoder", None), "adaptive_softmax", None) is not None:
            raise ValueError("adaptive softmax decoders are not supported by this criterion")
        target = model.get_targets(sample, net_output)
        masks = sample.get("constraint_masks")
        if self.ignore_prefix_size > 0:
            logits = logits[:, self.ignore_prefix_size:, :]
            target = target[:, self.ignore_prefix_size:]
            masks = masks[:, self.ignore_prefix_size:, :] if masks is not None else None
        scored = target.ne(self.padding_idx)
        if self.ignore_eos:
            scored &= target.ne(self.eos_idx)
        positions = scored.reshape(-1).nonzero().squeeze(-1)
        flat_logits = logits.reshape(-1, logits.size(-1))
        flat_target = target.reshape(-1).index_select(0, positions)
        support = None
        if self.constraint_range is not None:
            support = support_mask_from_range(logits.size(-1), *self.constraint_range, device=logits.device)
        if masks is not None:
            token_masks = masks.reshape(-1, masks.size(-1)).index_select(0, positions).bool()
            support = token_masks if support is None else token_masks & support
        weights = None
        conf = sample.get("conf")
        if conf is not None:
            weights = conf.to(logits.device, torch.float32)[:, None].expand_as(target).reshape(-1)
            weights = weights.index_select(0, positions)
        return flat_logits, flat_target, support, weights, positions, target.shape

    def active_ratios(self, update_num: Optional[int], training: bool) -> Tuple[float, float]:
        """Token dropping starts strictly after ``--drop-*-after`` completed updates (OFA's rule); nothing is
        dropped without ``update_num`` outside training (validation). Training with a dropping ratio but no
        ``update_num`` is an error: silently not dropping is what OFA's flags did for drop-best."""
        if update_num is None:
            if training and (self.drop_worst_ratio > 0 or self.drop_best_ratio > 0):
                raise OptionError(
                    "--drop-worst-ratio/--drop-best-ratio: the task called the criterion without update_num, so "
                    "--drop-*-after cannot be counted (stock fairseq tasks call criterion(model, sample)); use a "
                    "task that passes update_num=update_num (this plugin's caption and refcoco do) or no dropping")
            update_num = 0
        worst = self.drop_worst_ratio if update_num > self.drop_worst_after else 0.0
        best = self.drop_best_ratio if update_num > self.drop_best_after else 0.0
        return worst, best

    def compute_loss(self, model, net_output, sample, update_num: Optional[int] = None, reduce: bool = True):
        logits, target, support, weights, positions, shape = self.flat_tokens(model, net_output, sample)
        worst, best = self.active_ratios(update_num, model.training)
        terms = self.terms_at(update_num, model.training)
        options = dict(weights=weights, support=support, drop_worst_ratio=worst, drop_best_ratio=best,
                       rdrop_alpha=self.reg_alpha if self.use_rdrop else None, reduce=reduce)
        scale_log_probs = weights is not None and self.conf_weighting == "log-prob"
        if self.loss_impl == "fused" and not scale_log_probs:
            out: TokenLossOutput = fused_token_losses(logits, target, terms, rows=positions, **options)
        else:
            scored = logits.index_select(0, positions).float()
            if support is not None:
                scored = scored.masked_fill(~support, float("-inf"))
            lprobs = torch.log_softmax(scored, dim=-1)
            if scale_log_probs:  # OFA's rule: every term sees conf * log p (p^conf as its probability)
                lprobs = lprobs * options.pop("weights")[:, None]
                if support is not None:  # -inf * conf stays -inf, but keep it so for conf 0 too
                    lprobs = lprobs.masked_fill(~support, float("-inf"))
            out = token_losses(lprobs, target, terms, **options)
        loss, nll_loss = out.loss, out.nll_loss
        if not reduce:  # per target position, 0 for padding / ignored / dropped tokens
            loss = loss.new_zeros(shape.numel()).index_copy(0, positions, loss).view(shape)
            nll_loss = nll_loss.new_zeros(shape.numel()).index_copy(0, positions, nll_loss).view(shape)
        stats = {
            "ntokens_kept": out.sample_size,
            "p_target_sum": out.p_target_sum.item(),
        }
        for name, term_sum in out.term_sums.items():  # e.g. EL's bonus_sum
            stats[f"{name}_sum"] = term_sum.item()
        for name, count in out.counts.items():  # e.g. EL's past_log_end
            stats[name] = int(count.item())
        stats.update(self.step_statistics(update_num, model.training))
        if self.report_accuracy:
            stats["n_correct"] = int(out.n_correct.item())
            stats["total"] = int(target.numel())
        return loss, nll_loss, stats

    # ------------------------------------------------------------------ metrics
    @classmethod
    def reduce_metrics(cls, logging_outputs) -> None:
        """Losses in base 2 (as fairseq's criteria), so ``ppl`` is a perplexity; EL diagnostics per kept token."""

        def total(key):
            return utils.item(sum(log.get(key, 0) for log in logging_outputs))

        loss_sum, nll_sum = total("loss"), total("nll_loss")
        sample_size, kept = total("sample_size"), total("ntokens_kept")
        metrics.log_scalar("loss", loss_sum / max(sample_size, 1) / LN2, sample_size, round=3)
        metrics.log_scalar("nll_loss", nll_sum / max(kept, 1) / LN2, kept, round=3)
        metrics.log_derived("ppl", lambda meters: utils.get_perplexity(meters["nll_loss"].avg))
        if kept > 0 and any("p_target_sum" in log for log in logging_outputs):
            metrics.log_scalar("p_target", total("p_target_sum") / kept, kept, round=4)
        cls.reduce_term_metrics(logging_outputs, total, kept)
        n_total = total("total")
        if n_total > 0:
            metrics.log_scalar("total", n_total)
            metrics.log_scalar("n_correct", total("n_correct"))
            metrics.log_derived(
                "accuracy",
                lambda meters: round(meters["n_correct"].sum * 100.0 / meters["total"].sum, 3)
                if meters["total"].sum > 0 else float("nan"),
            )

    @classmethod
    def reduce_term_metrics(cls, logging_outputs, total, kept) -> None:
        """Metrics of a subclass's terms, from the summed logging outputs (``total(key)``); none here."""

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True
