"""Criterion ``adjust_label_smoothed_encouraging_loss``: label-smoothed CE plus the encouraging bonus.

Everything but ``--log-end`` is shared with ``adjust_label_smoothed_cross_entropy`` (the
A/B baseline), so the two criteria differ only by the bonus term.
"""

from dataclasses import dataclass, field

from fairseq.criterions import register_criterion

from .adjust_label_smoothed_cross_entropy import (
    AdjustLabelSmoothedCrossEntropyConfig,
    AdjustLabelSmoothedCrossEntropyCriterion,
)


@dataclass
class AdjustLabelSmoothedEncouragingLossConfig(AdjustLabelSmoothedCrossEntropyConfig):
    log_end: float = field(
        default=0.75,
        metadata={"help": "past this target probability the bonus log(1-p) becomes its tangent line; "
                          "1.0 keeps the full log. 0.75 or 0.5 is a good first try"},
    )


@register_criterion("adjust_label_smoothed_encouraging_loss", dataclass=AdjustLabelSmoothedEncouragingLossConfig)
class AdjustLabelSmoothedEncouragingLossCriterion(AdjustLabelSmoothedCrossEntropyCriterion):
    """Encouraging Loss (Zhao et al.): CE + log(1 - p_target), so confident tokens keep a gradient."""

    def __init__(self, task, sentence_avg: bool, label_smoothing: float, log_end: float = 0.75, **kwargs):
        super().__init__(task, sentence_avg, label_smoothing, **kwargs)
        if not 0.0 < log_end <= 1.0:
            raise ValueError(f"--log-end: must lie in (0, 1], got {log_end}")
        self.log_end = log_end
