"""End-to-end training speed: the same small transformer trained with the EL and the CE criterion.

    python benchmarks/e2e_step_time.py [--updates 200] [--rounds 3] [--vocab 8000]

Runs stock ``fairseq-train`` (this plugin as ``--user-dir``) on the synthetic reverse task
with a large vocabulary, so that the criterion's share of a step is visible. EL and CE runs
alternate (CE, EL, CE, EL, ...) and the median training wall time per update of each is
compared; the ratio EL/CE is what EL costs a real training run.
"""
import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, List

REPO_ROOT = Path(__file__).resolve().parents[1]


def train_seconds_per_update(data: Path, criterion: List[str], updates: int, save_dir: Path) -> float:
    cmd = [str(Path(sys.executable).parent / "fairseq-train"), str(data), "--user-dir", str(REPO_ROOT),
           "--task", "translation", "--arch", "transformer", "--share-all-embeddings",
           "--encoder-layers", "2", "--decoder-layers", "2", "--encoder-embed-dim", "128", "--decoder-embed-dim", "128",
           "--encoder-ffn-embed-dim", "256", "--decoder-ffn-embed-dim", "256",
           "--encoder-attention-heads", "4", "--decoder-attention-heads", "4",
           *criterion, "--label-smoothing", "0.1", "--optimizer", "adam", "--lr", "1e-3",
           "--max-tokens", "4096", "--max-update", str(updates), "--cpu", "--num-workers", "0",
           "--save-dir", str(save_dir), "--no-save", "--disable-validation",
           "--log-format", "json", "--log-interval", str(updates)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stdout[-2000:] + proc.stderr[-2000:])
    records = [json.loads(line.split("| train | ", 1)[1]) for line in (proc.stdout + proc.stderr).splitlines()
               if "| train | " in line]
    return float(records[-1]["train_train_wall"]) / updates


def main() -> None:
    from ofa_el.tools.sequence_demo import binarize, write_reverse_corpus

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--updates", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--vocab", type=int, default=8000, help="word types of the synthetic corpus")
    args = parser.parse_args()
    criteria = {
        "ce": ["--criterion", "adjust_label_smoothed_cross_entropy"],
        "el": ["--criterion", "adjust_label_smoothed_encouraging_loss", "--log-end", "0.75"],
    }
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        text = write_reverse_corpus(tmp / "text", sizes={"train": 20000, "valid": 10, "test": 10}, vocab=args.vocab,
                                    min_len=10, max_len=30)
        data = binarize(text, tmp / "bin")
        times: Dict[str, List[float]] = {name: [] for name in criteria}
        for _ in range(args.rounds):
            for name, flags in criteria.items():
                times[name].append(train_seconds_per_update(data, flags, args.updates, tmp / f"ckpt_{name}"))
    ce, el = statistics.median(times["ce"]), statistics.median(times["el"])
    print(f"seconds per update (median of {args.rounds} alternating runs of {args.updates} updates, "
          f"vocabulary ~{args.vocab}): CE {ce:.4f}, EL {el:.4f}; EL/CE = {el / ce:.3f}")


if __name__ == "__main__":
    main()
