"""Criteria registered with fairseq; the maths is in ``ofa_el.losses`` (torch only)."""
try:
    import fairseq  # noqa: F401
except ImportError:  # the loss math in ofa_el.losses stays importable without fairseq
    pass
else:
    from . import (  # noqa: F401
        adjust_label_smoothed_cross_entropy,
        adjust_label_smoothed_encouraging_loss,
        adjust_label_smoothed_poly1_cross_entropy,
        scst_reward_criterion,
    )
