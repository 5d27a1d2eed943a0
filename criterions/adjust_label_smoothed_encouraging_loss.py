"""Criterion ``adjust_label_smoothed_encouraging_loss``: label-smoothed CE plus the encouraging bonus.

Everything but the bonus's own flags is shared with ``adjust_label_smoothed_cross_entropy`` (the
A/B baseline): the terms are [CE, bonus]. The bonus can be weighted and ramped in as the EL
authors' fairseq criterion (``encourage_loss``) does, counted in updates here:

* ``--bonus-weight rho`` multiplies the bonus (their ``--bonus_rho``);
* ``--bonus-start-after N``: no bonus in the first N updates (their ``--defer_start``, in epochs);
* ``--bonus-schedule constant|linear|exp|cos`` over ``--bonus-schedule-updates T`` (their
  ``--el_schedule``): the weight of the update that follows ``u`` completed updates is 0 for
  ``u < N``, else ``rho * s(t/T)`` with ``t = u - N``, ``s(x) = x`` (linear), ``exp(5 (x - 1))`` (exp),
  ``(1 - cos(pi x))/2`` (cos), and ``rho`` once ``t >= T`` (and always with ``constant``).
* Validation (``update_num`` None) uses ``rho``, the weight every schedule ends at: validation losses
  stay comparable across a run (checkpoint selection by loss), whatever this process has trained.
"""
import math
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

from fairseq import metrics
from fairseq.criterions import register_criterion
from fairseq.dataclass import ChoiceEnum

from ..errors import OptionError
from ..losses.terms import EncouragingBonus, Term, check_log_end
from .adjust_label_smoothed_cross_entropy import (
    LN2,
    AdjustLabelSmoothedCrossEntropyConfig,
    AdjustLabelSmoothedCrossEntropyCriterion,
)

#: ``s(x)`` for ``x = t/T`` in [0, 1): the share of ``--bonus-weight`` a schedule gives.
RAMPS: Dict[str, Callable[[float], float]] = {
    "linear": lambda x: x,
    "exp": lambda x: math.exp(5.0 * (x - 1.0)),
    "cos": lambda x: (1.0 - math.cos(math.pi * x)) / 2.0,
}
BONUS_SCHEDULES = ("constant", *RAMPS)


@dataclass
class AdjustLabelSmoothedEncouragingLossConfig(AdjustLabelSmoothedCrossEntropyConfig):
    log_end: float = field(
        default=0.75,
        metadata={"help": "past this target probability the bonus log(1-p) becomes its tangent line; "
                          "1.0 keeps the full log. 0.75 or 0.5 is a good first try"},
    )
    bonus_weight: float = field(
        default=1.0, metadata={"help": "rho: the bonus is multiplied by it (>= 0; 0 trains plain CE)"})
    bonus_start_after: int = field(
        default=0, metadata={"help": "no bonus in the first N updates (it acts from update_num >= N)"})
    bonus_schedule: ChoiceEnum(list(BONUS_SCHEDULES)) = field(
        default="constant",
        metadata={"help": "ramp of the bonus weight over --bonus-schedule-updates T updates after "
                          "--bonus-start-after: rho * s(t/T), s = t/T (linear), exp(5 (t/T - 1)) (exp), "
                          "(1 - cos(pi t/T))/2 (cos); rho after T"})
    bonus_schedule_updates: int = field(
        default=0, metadata={"help": "T, the ramp's length in updates (>= 1 with a non-constant --bonus-schedule)"})


@dataclass(frozen=True)
class BonusSchedule:
    """The bonus weight per update (module docstring); errors name the flags."""

    weight: float = 1.0
    start_after: int = 0
    kind: str = "constant"
    updates: int = 0

    def __post_init__(self):
        if not self.weight >= 0.0:  # also refuses NaN
            raise OptionError(f"--bonus-weight: must be >= 0, got {self.weight}")
        if self.start_after < 0:
            raise OptionError(f"--bonus-start-after: must be >= 0, got {self.start_after}")
        if self.kind not in BONUS_SCHEDULES:
            raise OptionError(f"--bonus-schedule: expected one of {', '.join(BONUS_SCHEDULES)}, got {self.kind!r}")
        if self.kind != "constant" and self.updates < 1:
            raise OptionError(f"--bonus-schedule-updates: must be >= 1 with --bonus-schedule {self.kind}, "
                              f"got {self.updates}")

    @property
    def needs_update_num(self) -> bool:
        """Whether the weight depends on the update (so training must know it)."""
        return self.kind != "constant" or self.start_after > 0

    def at(self, update_num: Optional[int]) -> float:
        """The weight of the update that follows ``update_num`` completed ones; ``rho`` for None (validation)."""
        if update_num is None:
            return self.weight
        t = update_num - self.start_after
        if t < 0:
            return 0.0
        if self.kind == "constant" or t >= self.updates:
            return self.weight
        return self.weight * RAMPS[self.kind](t / self.updates)


@register_criterion("adjust_label_smoothed_encouraging_loss", dataclass=AdjustLabelSmoothedEncouragingLossConfig)
class AdjustLabelSmoothedEncouragingLossCriterion(AdjustLabelSmoothedCrossEntropyCriterion):
    """Encouraging Loss (Zhao et al.): CE + log(1 - p_target), so confident tokens keep a gradient."""

    config_class = AdjustLabelSmoothedEncouragingLossConfig

    def build_terms(self, cfg) -> List[Term]:
        self.log_end = check_log_end(cfg.log_end, "--log-end")
        self.schedule = BonusSchedule(float(cfg.bonus_weight), int(cfg.bonus_start_after), str(cfg.bonus_schedule),
                                      int(cfg.bonus_schedule_updates))
        self.bonus = EncouragingBonus(self.eps, self.log_end)
        return super().build_terms(cfg) + [self.bonus]

    def bonus_weight(self, update_num: Optional[int], training: bool) -> float:
        """The schedule's weight; training without ``update_num`` is refused when the weight depends on it."""
        if update_num is None and training and self.schedule.needs_update_num:
            raise OptionError(
                "--bonus-schedule/--bonus-start-after: the task called the criterion without update_num, so the "
                "bonus weight cannot follow the updates (stock fairseq tasks call criterion(model, sample)); use a "
                "task that passes update_num=update_num (this plugin's caption and refcoco do), or --bonus-schedule "
                "constant with --bonus-start-after 0")
        return self.schedule.at(update_num)

    def terms_at(self, update_num: Optional[int], training: bool) -> List[Term]:
        weight = self.bonus_weight(update_num, training)
        return [term.scaled(weight) if term is self.bonus else term for term in self.terms]

    def step_statistics(self, update_num: Optional[int], training: bool) -> Dict[str, float]:
        return {"bonus_weight_sum": self.bonus_weight(update_num, training), "bonus_weight_count": 1}

    @classmethod
    def reduce_term_metrics(cls, logging_outputs, total, kept) -> None:
        """``bonus`` (base 2) and ``past_log_end`` per kept token; ``bonus_weight`` averaged over the batches."""
        if kept > 0 and any("bonus_sum" in log for log in logging_outputs):
            metrics.log_scalar("bonus", total("bonus_sum") / kept / LN2, kept, round=4)
            metrics.log_scalar("past_log_end", total("past_log_end") / kept, kept, round=4)
        batches = total("bonus_weight_count")
        if batches > 0:
            metrics.log_scalar("bonus_weight", total("bonus_weight_sum") / batches, batches, round=4)
