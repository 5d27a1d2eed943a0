"""Criteria registered with fairseq; the maths is in :mod:`token_losses` (torch only)."""
try:
    import fairseq  # noqa: F401
except ImportError:  # token_losses stays importable without fairseq
    pass
else:
    from . import adjust_label_smoothed_cross_entropy, adjust_label_smoothed_encouraging_loss  # noqa: F401
