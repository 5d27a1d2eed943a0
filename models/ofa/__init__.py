"""OFA's model family (ofa_tiny .. ofa_huge), compatible with official OFA checkpoints, and the demo's ofa_demo."""
from . import demo  # noqa: F401  (registers the ofa_demo architecture)
from .model import OFAModel  # noqa: F401
