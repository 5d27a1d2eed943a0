"""Plot what EL does to one token: bonus, total loss and logit gradient against p_target.

    python -m ofa_el.tools.plot_el_curves --out results/el_curves.png

Everything is computed with the project's own loss math (losses/terms.py), on a
token whose target has probability p and whose other probability mass is spread evenly
over V - 1 = 9 classes, without label smoothing.
"""
from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path
from typing import Dict, Optional

import torch

from ..losses.terms import EncouragingBonus, LabelSmoothedCE, encouraging_bonus
from ..losses.token_loss import token_losses
from .errors import run_cli

LOG_ENDS = (0.5, 0.75, 1.0)
VOCAB = 10


def logits_for(p: float) -> torch.Tensor:
    """Logits of one token whose target (class 0) has probability p, the rest spread evenly."""
    rest = (1.0 - p) / (VOCAB - 1)
    logits = torch.full((1, VOCAB), math.log(rest), dtype=torch.float64)
    logits[0, 0] = math.log(p)
    return logits


def curves(points: int = 400) -> Dict[str, Dict[str, torch.Tensor]]:
    p = torch.linspace(0.005, 0.995, points, dtype=torch.float64)
    out: Dict[str, Dict[str, torch.Tensor]] = {"p": {"p": p}, "bonus": {}, "loss": {}, "grad": {}}
    settings: Dict[str, Optional[float]] = {"CE": None, **{f"EL log_end={e}": e for e in LOG_ENDS}}
    for name, log_end in settings.items():
        losses, grads = [], []
        for value in p.tolist():
            logits = logits_for(value).requires_grad_(True)
            terms = [LabelSmoothedCE(0.0)] + ([] if log_end is None else [EncouragingBonus(0.0, log_end)])
            loss = token_losses(torch.log_softmax(logits, -1), torch.tensor([0]), terms).loss
            loss.backward()
            losses.append(loss.item())
            grads.append(logits.grad.norm().item())
        out["loss"][name] = torch.tensor(losses)
        out["grad"][name] = torch.tensor(grads)
        if log_end is not None:
            out["bonus"][name] = encouraging_bonus(p, log_end)
    return out


def plot(out_path: Path) -> Path:
    import matplotlib

    logging.getLogger("matplotlib").setLevel(logging.WARNING)  # fairseq leaves the root logger at DEBUG
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = curves()
    p = data["p"]["p"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    titles = ("bonus b(p) = log(1 - p), tangent past log_end", "total loss: -log p + b(p)",
              "|dL/dlogits| (gradient norm)")
    colours = {name: f"C{i}" for i, name in enumerate(data["loss"])}
    for ax, key, title in zip(axes, ("bonus", "loss", "grad"), titles):
        for name, values in data[key].items():
            ax.plot(p, values, label=name, color=colours[name], linestyle="--" if name == "CE" else "-")
        ax.set_title(title)
        ax.set_xlabel("p_target")
        ax.grid(alpha=0.3)
        ax.legend()
    axes[0].set_ylim(-5, 0.2)
    axes[1].set_ylim(-4, 5)
    fig.tight_layout()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=110)
    return out_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("results/el_curves.png"))
    args = parser.parse_args()
    print(f"wrote {plot(args.out)}")


if __name__ == "__main__":
    run_cli(main)
