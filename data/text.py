"""Text side of OFA's data: GPT-2 BPE + OFA dictionary, and OFA's caption cleaning rules."""
from __future__ import annotations

import os
import re
import string
from typing import Iterable, List, Optional

import torch
from fairseq.data import Dictionary
from fairseq.data.encoders.gpt2_bpe import GPT2BPE, GPT2BPEConfig

from ..errors import MissingFileError
from .dictionary import build_ofa_dictionary

#: Files a ``--bpe-dir`` must hold (the standard GPT-2 BPE files plus fairseq's dict.txt).
BPE_FILES = ("encoder.json", "vocab.bpe", "dict.txt")

_PUNCTUATION = str.maketrans("", "", string.punctuation)
_WHITESPACE_RUN = re.compile(r"\s+")
_MULTI_WHITESPACE = re.compile(r"\s{2,}")


def check_bpe_dir(bpe_dir: str) -> None:
    """Fail at start-up, naming the file, rather than at the first sample."""
    for name in BPE_FILES:
        path = os.path.join(bpe_dir, name)
        if not os.path.isfile(path):
            raise MissingFileError(f"--bpe-dir: missing {path} (a BPE dir holds {', '.join(BPE_FILES)})")


class TextCodec:
    """GPT-2 BPE + OFA dictionary: strings to token ids and back.

    ``<bin_i>`` / ``<code_i>`` tokens bypass the BPE in both directions, as in OFA.
    """

    def __init__(self, bpe_dir: str, num_bins: int = 1000, dictionary: Optional[Dictionary] = None):
        check_bpe_dir(bpe_dir)
        self.bpe = GPT2BPE(GPT2BPEConfig(
            gpt2_encoder_json=os.path.join(bpe_dir, "encoder.json"),
            gpt2_vocab_bpe=os.path.join(bpe_dir, "vocab.bpe")))
        self.dictionary = dictionary if dictionary is not None else build_ofa_dictionary(
            os.path.join(bpe_dir, "dict.txt"), num_bins=num_bins)

    def encode(self, text: str) -> torch.LongTensor:
        """BPE-encode ``text`` and map the GPT-2 ids through the dictionary (no bos/eos)."""
        return self.encode_symbols(self.bpe.encode(text))

    def encode_symbols(self, symbols: str) -> torch.LongTensor:
        """Look up space-separated dictionary symbols (e.g. ``"<bin_3> <bin_9>"``) without BPE."""
        return self.dictionary.encode_line(symbols, add_if_not_exist=False, append_eos=False).long()

    def decode(self, tokens: Iterable[int]) -> str:
        """Token ids to text; bos/eos/pad are dropped, ``<...>`` symbols are kept verbatim."""
        specials = {self.dictionary.bos(), self.dictionary.eos(), self.dictionary.pad()}
        pieces: List[str] = []
        pending: List[str] = []
        for token in tokens:
            token = int(token)
            if token in specials:
                continue
            symbol = self.dictionary[token]
            if symbol.startswith("<"):
                if pending:
                    pieces.append(self.bpe.decode(" ".join(pending)))
                    pending = []
                pieces.append(symbol)
            else:
                pending.append(symbol)
        if pending:
            pieces.append(self.bpe.decode(" ".join(pending)))
        return "".join(pieces)


def strip_punctuation(text: str) -> str:
    """Delete every ASCII punctuation character (OFA's caption cleaning)."""
    return text.translate(_PUNCTUATION)


def clean_train_caption(caption: str, max_words: int) -> str:
    """Train split: no punctuation, at most ``max_words`` words joined by single spaces."""
    return " ".join(strip_punctuation(caption).strip().split()[:max_words])


def clean_references(field: str) -> List[str]:
    """Valid/test split: the ``&&``-joined references, each without punctuation (never truncated)."""
    joined = _WHITESPACE_RUN.sub(" ", field).strip()
    return [strip_punctuation(ref).strip() for ref in joined.split("&&")]


def pre_question(text: str, max_words: int) -> str:
    """OFA's ``pre_question`` (VQA questions): lowercase, light cleanup, word limit.

    Leading ``,.!?*#:;~`` are removed, ``-`` and ``/`` become spaces, runs of whitespace one space;
    trailing punctuation is kept.
    """
    text = text.lower().lstrip(",.!?*#:;~").replace("-", " ").replace("/", " ")
    text = _MULTI_WHITESPACE.sub(" ", text).rstrip("\n").strip(" ")
    words = text.split(" ")
    return " ".join(words[:max_words]) if len(words) > max_words else text


def pre_caption(text: str, max_words: int) -> str:
    """OFA's ``pre_caption`` for referring expressions: :func:`pre_question`, and ``<person>`` becomes ``person``."""
    return pre_question(text.lower().replace("<person>", "person"), max_words)
