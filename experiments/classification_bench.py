"""CE vs EL vs Poly-1 vs L-GM on a small, offline classification problem (minutes on a CPU).

    python experiments/classification_bench.py --out results/classification

An experiment, not part of the installed package: run it from a checkout with ``ofa_el`` installed (``make venv``).
scikit-learn's bundled 8x8 digits (1,797 images, no download), a 2-layer MLP, each loss with
several seeds. Reports test accuracy, expected calibration error (15 equal-width bins) and the
mean margin (true-class logit minus the best other logit), as mean +- std over seeds, and
writes ``results.json`` and ``classification.png``.
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import nn

from ofa_el.losses import EncouragingLoss, LGMLoss, Poly1CrossEntropy

FEATURES = 64


def load_digits_split(seed: int = 0) -> Tuple[torch.Tensor, ...]:
    """Standardised digits, split 70/30 with a fixed permutation (the same for every method)."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32)
    y = torch.tensor(data.target, dtype=torch.long)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    x, y = x[order], y[order]
    split = int(0.7 * len(y))
    mean, std = x[:split].mean(0), x[:split].std(0) + 1e-6
    x = (x - mean) / std
    return x[:split], y[:split], x[split:], y[split:]


class Classifier(nn.Module):
    """MLP body; the head is a linear layer, or an L-GM head whose logits need no labels."""

    def __init__(self, lgm: bool = False, hidden: int = 64, classes: int = 10):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(FEATURES, hidden), nn.ReLU(), nn.Linear(hidden, 32), nn.ReLU())
        self.lgm = LGMLoss(classes, 32, alpha=0.1, lambda_=0.01) if lgm else None
        self.head = None if lgm else nn.Linear(32, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.body(x)
        return self.lgm.logits(features) if self.lgm is not None else self.head(features)


METHODS: Dict[str, Callable[[], nn.Module]] = {
    "CE": lambda: nn.CrossEntropyLoss(),
    "EL log_end=0.5": lambda: EncouragingLoss(0.5),
    "EL log_end=0.75": lambda: EncouragingLoss(0.75),
    "EL log_end=1.0": lambda: EncouragingLoss(1.0),
    "Poly-1 eps=1": lambda: Poly1CrossEntropy(epsilon=1.0),
    "L-GM": lambda: None,
}


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> float:
    confidence, prediction = probs.max(-1)
    correct = (prediction == labels).float()
    edges = torch.linspace(0, 1, bins + 1)
    error = 0.0
    for low, high in zip(edges[:-1], edges[1:]):
        in_bin = (confidence > low) & (confidence <= high)
        if in_bin.any():
            gap = abs(confidence[in_bin].mean().item() - correct[in_bin].mean().item())
            error += in_bin.float().mean().item() * gap
    return error


def train_and_score(method: str, seed: int, epochs: int, data) -> Dict[str, float]:
    x_train, y_train, x_test, y_test = data
    torch.manual_seed(seed)
    model = Classifier(lgm=method == "L-GM")
    loss_fn = METHODS[method]()
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        for batch in torch.randperm(len(y_train), generator=generator).split(64):
            optimiser.zero_grad()
            if model.lgm is not None:
                loss = model.lgm(model.body(x_train[batch]), y_train[batch])
            else:
                loss = loss_fn(model(x_train[batch]), y_train[batch])
            loss.backward()
            optimiser.step()
    model.eval()
    with torch.no_grad():
        logits = model(x_test)
    true = logits.gather(-1, y_test[:, None]).squeeze(-1)
    other = logits.scatter(-1, y_test[:, None], float("-inf")).max(-1).values
    return {
        "accuracy": (logits.argmax(-1) == y_test).float().mean().item(),
        "ece": expected_calibration_error(logits.softmax(-1), y_test),
        "margin": (true - other).mean().item(),
    }


def summarise(runs: List[Dict[str, float]]) -> Dict[str, Tuple[float, float]]:
    return {key: (statistics.mean(r[key] for r in runs), statistics.pstdev(r[key] for r in runs)) for key in runs[0]}


def plot(summary: Dict[str, Dict[str, Tuple[float, float]]], out: Path) -> None:
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, key, title in zip(axes, ("accuracy", "ece", "margin"),
                              ("test accuracy", "expected calibration error (lower is better)", "mean margin")):
        means = [summary[n][key][0] for n in names]
        stds = [summary[n][key][1] for n in names]
        ax.bar(range(len(names)), means, yerr=stds, color=[f"C{i}" for i in range(len(names))], capsize=4)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=30, ha="right")
        ax.set_title(title)
        if key == "accuracy":
            ax.set_ylim(min(means) - 0.03, 1.0)
    fig.tight_layout()
    fig.savefig(out, dpi=100)


def main(argv: Optional[List[str]] = None) -> Dict[str, Dict[str, Tuple[float, float]]]:
    """Train every method with each seed, print the table, write results.json and classification.png."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("results/classification"))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=60)
    args = parser.parse_args(argv)
    for option, value in (("--seeds", args.seeds), ("--epochs", args.epochs)):
        if value < 1:
            parser.error(f"{option} {value}: must be at least 1")
    try:  # before minutes of training, not after
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        parser.error(f"--out {args.out}: cannot create it ({err.strerror})")
    torch.set_num_threads(1)
    data = load_digits_split()
    summary = {}
    print(f"{'method':<18} {'accuracy':>16} {'ECE':>16} {'margin':>16}   ({args.seeds} seeds, {args.epochs} epochs)")
    for method in METHODS:
        runs = [train_and_score(method, seed, args.epochs, data) for seed in range(args.seeds)]
        summary[method] = summarise(runs)
        cells = "".join(f" {m:>9.4f} +- {s:.4f}" for m, s in summary[method].values())
        print(f"{method:<18}{cells}", flush=True)
    (args.out / "results.json").write_text(json.dumps(
        {"seeds": args.seeds, "epochs": args.epochs, "summary": summary}, indent=2) + "\n")
    plot(summary, args.out / "classification.png")
    print(f"wrote {args.out / 'results.json'} and {args.out / 'classification.png'}")
    return summary


if __name__ == "__main__":
    main()
