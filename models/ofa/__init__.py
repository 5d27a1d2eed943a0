"""OFA's model family (ofa_tiny .. ofa_huge), compatible with official OFA checkpoints."""
from .model import OFAModel  # noqa: F401
