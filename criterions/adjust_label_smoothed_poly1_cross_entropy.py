"""Criterion ``adjust_label_smoothed_poly1_cross_entropy``: label-smoothed CE + Poly-1's ``eps (1 - p_t)``.

Same options as ``adjust_label_smoothed_cross_entropy``, so captioning can A/B EL, Poly-1 and
CE with one flag. ``p_t`` is taken against the smoothed label distribution the CE uses.
"""
from dataclasses import dataclass, field

from fairseq.criterions import register_criterion

from .adjust_label_smoothed_cross_entropy import (
    AdjustLabelSmoothedCrossEntropyConfig,
    AdjustLabelSmoothedCrossEntropyCriterion,
)


@dataclass
class AdjustLabelSmoothedPoly1CrossEntropyConfig(AdjustLabelSmoothedCrossEntropyConfig):
    poly_epsilon: float = field(
        default=1.0, metadata={"help": "coefficient of the Poly-1 term (1 - p_t); 0 gives plain CE, must be >= -1"})


@register_criterion("adjust_label_smoothed_poly1_cross_entropy", dataclass=AdjustLabelSmoothedPoly1CrossEntropyConfig)
class AdjustLabelSmoothedPoly1CrossEntropyCriterion(AdjustLabelSmoothedCrossEntropyCriterion):
    def __init__(self, task, sentence_avg: bool, label_smoothing: float, poly_epsilon: float = 1.0, **kwargs):
        super().__init__(task, sentence_avg, label_smoothing, **kwargs)
        if poly_epsilon < -1.0:  # below -1 the loss decreases as p_t -> 1 is approached from below
            raise ValueError(f"--poly-epsilon: must be >= -1, got {poly_epsilon}")
        self.poly_epsilon = poly_epsilon
