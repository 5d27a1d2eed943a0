"""Models registered with fairseq."""
from . import ofa  # noqa: F401
