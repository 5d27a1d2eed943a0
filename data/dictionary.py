"""OFA's dictionary: GPT-2 BPE ids from dict.txt, then ``<mask>``, image codes and location bins."""
from __future__ import annotations

import os

from fairseq.data import Dictionary

from ..errors import MissingFileError

NUM_IMAGE_CODES = 8192


def build_ofa_dictionary(dict_path: str, num_bins: int = 1000, num_codes: int = NUM_IMAGE_CODES) -> Dictionary:
    """fairseq specials + ``dict.txt`` + ``<mask>`` + ``<code_0..num_codes-1>`` + ``<bin_0..num_bins-1>``.

    With OFA's 50,260-line dict.txt and 1000 bins this is the 59,457-entry dictionary
    every official OFA checkpoint was trained with; the order fixes the embedding rows.
    """
    if not os.path.isfile(dict_path):
        raise MissingFileError(f"dictionary file not found: {dict_path}")
    dictionary = Dictionary.load(dict_path)
    dictionary.add_symbol("<mask>")
    for i in range(num_codes):
        dictionary.add_symbol(f"<code_{i}>")
    for i in range(num_bins):
        dictionary.add_symbol(f"<bin_{i}>")
    return dictionary


def bin_token_range(dictionary: Dictionary, num_bins: int) -> tuple:
    """``(start, end)`` ids of the ``<bin_i>`` tokens, as used by ``--constraint-range``."""
    start = dictionary.index("<bin_0>")
    if start == dictionary.unk():
        raise ValueError("the dictionary has no <bin_0> token")
    return start, start + num_bins
