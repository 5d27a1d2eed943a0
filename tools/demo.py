"""``make demo``: train a small model with Encouraging Loss on embedded data and print its metrics.

Runs stock ``fairseq-train`` with this plugin as ``--user-dir`` on the synthetic reverse
task (tools/sequence_demo.py), then prints the final validation metrics, including the
EL diagnostics, and writes them to ``demo/metrics.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

from .sequence_demo import binarize, write_reverse_corpus

REPO_ROOT = Path(__file__).resolve().parents[1]

REVERSE_RECIPE = [
    "--task", "translation", "--arch", "transformer", "--share-all-embeddings",
    "--encoder-layers", "2", "--decoder-layers", "2", "--encoder-embed-dim", "64", "--decoder-embed-dim", "64",
    "--encoder-ffn-embed-dim", "128", "--decoder-ffn-embed-dim", "128",
    "--encoder-attention-heads", "4", "--decoder-attention-heads", "4", "--dropout", "0.0",
    "--criterion", "adjust_label_smoothed_encouraging_loss", "--log-end", "0.75", "--label-smoothing", "0.1",
    "--report-accuracy",
    "--optimizer", "adam", "--lr", "2e-3", "--lr-scheduler", "inverse_sqrt", "--warmup-updates", "100",
    "--max-tokens", "2000", "--max-update", "600", "--cpu", "--num-workers", "0", "--seed", "1",
    "--log-format", "json", "--log-interval", "100", "--no-epoch-checkpoints", "--validate-interval", "5",
]

SHOWN = ["loss", "nll_loss", "ppl", "accuracy", "p_target", "past_log_end", "bonus"]


def last_json_record(output: str, logger: str) -> Dict[str, str]:
    marker = f"| {logger} | "
    records = [json.loads(line.split(marker, 1)[1]) for line in output.splitlines() if marker in line]
    if not records:
        raise RuntimeError(f"fairseq-train printed no '{logger}' record; its output ends with:\n{output[-3000:]}")
    return records[-1]


def run_reverse_demo(work: Path) -> Dict[str, float]:
    data = binarize(write_reverse_corpus(work / "text"), work / "bin")
    cmd: List[str] = [str(Path(sys.executable).parent / "fairseq-train"), str(data), "--user-dir", str(REPO_ROOT),
                      *REVERSE_RECIPE, "--save-dir", str(work / "checkpoints")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    if proc.returncode != 0:
        raise RuntimeError(f"fairseq-train failed:\n{(proc.stdout + proc.stderr)[-4000:]}")
    valid = last_json_record(proc.stdout + proc.stderr, "valid")
    return {key: float(valid[f"valid_{key}"]) for key in SHOWN if f"valid_{key}" in valid}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("demo"), help="where data, checkpoints and metrics go")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    metrics = run_reverse_demo(args.out / "reverse")
    elapsed = time.time() - start
    print(f"\nEncouraging Loss (log_end 0.75) on the synthetic reverse task, {elapsed:.0f} s on CPU")
    print("validation metric    value   (losses in base 2; p_target, past_log_end, bonus per kept token)")
    for key, value in metrics.items():
        print(f"  {key:<18} {value:8.4f}")
    metrics_path = args.out / "metrics.json"
    existing = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    existing["reverse"] = {"valid": metrics}
    metrics_path.write_text(json.dumps(existing, indent=2) + "\n")
    print(f"metrics written to {metrics_path}; checkpoints in {args.out / 'reverse' / 'checkpoints'}")


if __name__ == "__main__":
    main()
