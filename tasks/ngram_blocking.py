"""``--no-repeat-ngram-size`` that blocks: a replacement for fairseq 0.12's Python n-gram blocker.

fairseq's ``SequenceGenerator`` passes its whole token buffer (``[bsz * beam, max_len + 2]``,
padded past the current step) to ``NGramRepeatBlock``. Without the CUDA extension, which the
``ve-fairseq`` wheels do not ship, that block compares the buffer's last ``n - 1`` entries
(padding) with each earlier ``(n - 1)``-gram, so it never matches and never blocks: OFA's caption
and refcoco evaluation (``no_repeat_ngram_size 3``) then decode without the blocking OFA's numbers
were made with. :class:`NGramRepeatBlocker` compares the ``n - 1`` tokens that end at the current
step instead, as the CUDA kernel does, in a few tensor operations.
"""
from __future__ import annotations

import math

from torch import Tensor, nn

from ..errors import OptionError


class NGramRepeatBlocker(nn.Module):
    """Bans every token that would complete an ``n``-gram already present in its hypothesis."""

    def __init__(self, no_repeat_ngram_size: int):
        super().__init__()
        if no_repeat_ngram_size < 1:
            raise OptionError(f"--no-repeat-ngram-size: must be >= 1 to block, got {no_repeat_ngram_size}")
        self.no_repeat_ngram_size = no_repeat_ngram_size

    def forward(self, tokens: Tensor, lprobs: Tensor, bsz: int, beam_size: int, step: int) -> Tensor:
        """``tokens`` [bsz * beam, >= step + 1] holds positions 0..step so far; ``lprobs`` [bsz * beam, V] is
        changed in place (and returned) for the token chosen at position ``step + 1``."""
        n = self.no_repeat_ngram_size
        windows_count = step + 2 - n  # complete n-grams among positions 0..step
        if windows_count <= 0:
            return lprobs
        seen = tokens[:, : step + 1]
        windows = seen.unfold(1, n, 1)  # [B, windows_count, n]: every n-gram so far
        prefix = seen[:, step + 2 - n:]  # the n - 1 tokens that end at the current step
        repeats = (windows[:, :, : n - 1] == prefix[:, None, :]).all(dim=-1)
        rows, starts = repeats.nonzero(as_tuple=True)
        lprobs[rows, windows[rows, starts, n - 1]] = -math.inf
        return lprobs


def fix_ngram_blocking(generator):
    """Give ``generator`` (a fairseq SequenceGenerator) an n-gram blocker that works, unless it uses fairseq's
    CUDA extension (which is correct). Returns the generator."""
    blocker = getattr(generator, "repeat_ngram_blocker", None)
    if blocker is not None and not getattr(blocker, "use_extension", False):
        generator.repeat_ngram_blocker = NGramRepeatBlocker(blocker.no_repeat_ngram_size)
    return generator
