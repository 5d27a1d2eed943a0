"""Learning-rate schedulers OFA's recipes need and stock fairseq lacks."""
from . import ofa_polynomial_decay  # noqa: F401
