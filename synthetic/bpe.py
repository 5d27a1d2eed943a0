"""A byte-level BPE trained on the demo texts, saved as GPT-2's encoder.json / vocab.bpe and OFA's dict.txt."""
from __future__ import annotations

import json
import os
from collections import Counter
from typing import Sequence

from .captions import CAPTION_PROMPTS


def write_bpe(out_dir: str, texts: Sequence[str], vocab_size: int) -> None:
    """Train a byte-level BPE on the corpus and save it as GPT-2's encoder.json / vocab.bpe / dict.txt.

    Texts are trained with the leading space the datasets prepend, so words merge into
    single " word" tokens as in GPT-2. dict.txt lists every BPE id as "<id> <count>",
    most frequent first, as fairseq's GPT-2 dict.txt does.
    """
    from tokenizers import ByteLevelBPETokenizer

    os.makedirs(out_dir, exist_ok=True)
    corpus = [" " + text for text in texts] + list(CAPTION_PROMPTS)
    tokenizer = ByteLevelBPETokenizer(add_prefix_space=False)
    tokenizer.train_from_iterator(corpus, vocab_size=vocab_size, min_frequency=2, show_progress=False)
    vocab_path, merges_path = tokenizer.save_model(out_dir)
    os.replace(vocab_path, os.path.join(out_dir, "encoder.json"))
    os.replace(merges_path, os.path.join(out_dir, "vocab.bpe"))
    counts = Counter(token_id for encoding in tokenizer.encode_batch(corpus) for token_id in encoding.ids)
    with open(os.path.join(out_dir, "encoder.json"), encoding="utf-8") as handle:
        ids = sorted(json.load(handle).values())
    with open(os.path.join(out_dir, "dict.txt"), "w", encoding="utf-8") as handle:
        for token_id in sorted(ids, key=lambda i: (-counts[i], i)):
            handle.write(f"{token_id} {counts[token_id]}\n")
