"""A synthetic sequence task for smoke-testing the criteria with stock fairseq.

Sources are random token strings, targets their reversal: learnable by a tiny
transformer in a minute on CPU, with no downloads. The corpus is written as text and
binarised with ``fairseq-preprocess`` so the stock ``translation`` task reads it.
"""
from __future__ import annotations

import argparse
import random
from pathlib import Path
from typing import Dict

from .errors import run_cli

SPLITS = {"train": 2000, "valid": 100, "test": 100}


def write_reverse_corpus(out_dir: Path, sizes: Dict[str, int] = SPLITS, vocab: int = 12, min_len: int = 3,
                         max_len: int = 8, seed: int = 0) -> Path:
    """Write ``{split}.src`` / ``{split}.tgt`` text files: random strings and their reversal."""
    rng = random.Random(seed)
    words = [f"t{i}" for i in range(vocab)]
    out_dir.mkdir(parents=True, exist_ok=True)
    for split, count in sizes.items():
        with open(out_dir / f"{split}.src", "w") as src, open(out_dir / f"{split}.tgt", "w") as tgt:
            for _ in range(count):
                tokens = [rng.choice(words) for _ in range(rng.randint(min_len, max_len))]
                src.write(" ".join(tokens) + "\n")
                tgt.write(" ".join(reversed(tokens)) + "\n")
    return out_dir


def binarize(text_dir: Path, bin_dir: Path) -> Path:
    """Run fairseq-preprocess on the corpus (joined dictionary, as OFA shares embeddings)."""
    from fairseq_cli import preprocess

    parser = preprocess.options.get_preprocessing_parser()
    args = parser.parse_args([
        "--source-lang", "src", "--target-lang", "tgt",
        "--trainpref", str(text_dir / "train"), "--validpref", str(text_dir / "valid"),
        "--testpref", str(text_dir / "test"), "--destdir", str(bin_dir),
        "--joined-dictionary", "--workers", "1",
    ])
    preprocess.main(args)
    return bin_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True, help="directory for text/ and bin/")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    text = write_reverse_corpus(args.out / "text", seed=args.seed)
    binarize(text, args.out / "bin")
    print(f"binarised data in {args.out / 'bin'}")


if __name__ == "__main__":
    run_cli(main)
