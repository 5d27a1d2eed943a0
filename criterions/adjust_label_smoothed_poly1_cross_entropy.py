"""Criterion ``adjust_label_smoothed_poly1_cross_entropy``: label-smoothed CE + Poly-1's ``eps (1 - p_t)``.

Same options as ``adjust_label_smoothed_cross_entropy``, so captioning can A/B EL, Poly-1 and
CE with one flag: the terms are [CE, Poly-1]. ``p_t`` is taken against the smoothed label
distribution the CE uses.
"""
from dataclasses import dataclass, field
from typing import List

from fairseq.criterions import register_criterion

from ..errors import OptionError
from ..losses.terms import Poly1, Term
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
    config_class = AdjustLabelSmoothedPoly1CrossEntropyConfig

    def build_terms(self, cfg) -> List[Term]:
        if cfg.poly_epsilon < -1.0:  # below -1 the loss decreases as p_t -> 1 is approached from below
            raise OptionError(f"--poly-epsilon: must be >= -1, got {cfg.poly_epsilon}")
        self.poly_epsilon = cfg.poly_epsilon
        return super().build_terms(cfg) + [Poly1(cfg.poly_epsilon, self.eps)]
