"""How a VQA sample's ``conf`` weights the EL loss: this plugin's rule against OFA's, on the VQA demo.

    python experiments/vqa_conf_weighting.py [--seeds 1,2] [--out results/vqa_conf_weighting]

``vqa_gen`` trains on each question's most confident answer and gives the sample that answer's confidence
``conf``. The criteria offer two rules (``--conf-weighting``):

* ``loss`` (the default): every term of the sample's tokens is multiplied by ``conf``, the CE and the EL bonus alike;
* ``log-prob`` (OFA's): the log-probabilities are multiplied by ``conf`` before the terms; the label-smoothed CE is
  the same, the EL bonus becomes ``log(1 - p^conf)``.

Each run is the VQA demo as ``make demo-all`` trains it (``DEMO=1 sh run_scripts/vqa/train_vqa_el.sh``: EL, log_end
0.75, from the caption demo model) with ``--conf-weighting <rule> --seed <s>`` appended, saved under
``<out>/<rule>/seed<s>``; its best checkpoint (by validation VQA score on the EMA weights) is scored on
``demo/data/vqa_test.tsv`` with all-candidate and beam-search inference (``run_scripts/vqa/evaluate_vqa.sh``). The
caption demo model is trained first (``python -m ofa_el.tools.demo --only caption``) when it is missing. Prints one
line per run, the mean per rule and the majority-answer baseline; writes ``<out>/results.json``. A run whose
``results.json`` entry exists is not repeated unless ``--force``.

An experiment, not part of the installed package: run it from a checkout installed editable (``make venv``).
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

from ofa_el.errors import OptionError
from ofa_el.recipes import REPO_ROOT
from ofa_el.script_runner import run_demo_script
from ofa_el.synthetic.vqa import majority_baseline
from ofa_el.tools.errors import run_cli

RULES = ("loss", "log-prob")
INFERENCE_TYPES = ("allcand", "beamsearch")
DEMO_DATA = REPO_ROOT / "demo" / "data"
CAPTION_MODEL = REPO_ROOT / "demo" / "checkpoints" / "caption_el" / "checkpoint_best.pt"


def parse_seeds(value: str) -> List[int]:
    try:
        seeds = [int(part) for part in value.split(",") if part.strip()]
    except ValueError:
        raise OptionError(f"--seeds: expected comma-separated integers, got {value!r}") from None
    if not seeds:
        raise OptionError("--seeds: give at least one seed")
    return seeds


def train_and_score(rule: str, seed: int, out: Path) -> Dict[str, float]:
    """One demo training with ``rule`` and ``seed``, then its best checkpoint's test VQA scores."""
    run_dir = out / rule / f"seed{seed}"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    start = time.time()
    run_demo_script("vqa/train_vqa_el.sh", {"SAVE_DIR": str(run_dir)}, f"--conf-weighting={rule}", f"--seed={seed}",
                    log=run_dir / "train.log", cwd=REPO_ROOT)
    scores: Dict[str, float] = {"train_s": round(time.time() - start, 1)}
    for inference in INFERENCE_TYPES:
        results = run_dir / f"test_{inference}"
        run_demo_script("vqa/evaluate_vqa.sh", {"SPLIT": "test", "CHECKPOINT": str(run_dir / "checkpoint_best.pt"),
                                                "RESULTS_DIR": str(results)},
                        "--inference-type", inference, log=run_dir / f"eval_{inference}.log", cwd=REPO_ROOT)
        scores[inference] = json.loads((results / "metrics.json").read_text())["vqa_test"]["vqa_score"]
    for checkpoint in run_dir.glob("*.pt"):  # the scores are kept; the checkpoints are not needed again
        checkpoint.unlink()
    return scores


def ensure_demo_inputs() -> None:
    """The demo data and the caption model every run starts from, made as ``make demo`` makes them."""
    if not CAPTION_MODEL.is_file() or not (DEMO_DATA / "vqa_test.tsv").is_file():
        print("training the caption demo model first (python -m ofa_el.tools.demo --only caption) ...", flush=True)
        subprocess.run([sys.executable, "-m", "ofa_el.tools.demo", "--only", "caption"], cwd=REPO_ROOT, check=True)


def summary_lines(results: Dict[str, Dict[str, Dict[str, float]]], baseline: float) -> List[str]:
    lines = [f"{'rule':<9} {'seed':>4} " + " ".join(f"{name:>10}" for name in INFERENCE_TYPES)]
    for rule in RULES:
        runs = results.get(rule, {})
        for seed, scores in sorted(runs.items(), key=lambda item: int(item[0])):
            lines.append(f"{rule:<9} {seed:>4} " + " ".join(f"{scores[name]:>10.3f}" for name in INFERENCE_TYPES))
        if len(runs) > 1:
            means = [statistics.mean(scores[name] for scores in runs.values()) for name in INFERENCE_TYPES]
            lines.append(f"{rule:<9} {'mean':>4} " + " ".join(f"{mean:>10.3f}" for mean in means))
    lines.append(f"majority-answer baseline {baseline:.3f}")
    return lines


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="1", help="comma-separated training seeds (default 1: the demo's)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "results" / "vqa_conf_weighting")
    parser.add_argument("--force", action="store_true", help="train again runs already in <out>/results.json")
    args = parser.parse_args(argv)
    seeds = parse_seeds(args.seeds)
    ensure_demo_inputs()
    args.out.mkdir(parents=True, exist_ok=True)
    results_path = args.out / "results.json"
    stored = json.loads(results_path.read_text()) if results_path.is_file() and not args.force else {}
    results: Dict[str, Dict[str, Dict[str, float]]] = stored.get("runs", {})
    baseline = majority_baseline(str(DEMO_DATA / "vqa_train.tsv"), str(DEMO_DATA / "vqa_test.tsv"))
    for seed in seeds:
        for rule in RULES:
            if str(seed) in results.get(rule, {}):
                continue
            print(f"training vqa demo: --conf-weighting {rule} --seed {seed} ...", flush=True)
            results.setdefault(rule, {})[str(seed)] = train_and_score(rule, seed, args.out)
            results_path.write_text(json.dumps({"runs": results, "majority_baseline": baseline}, indent=1) + "\n")
    print("\n".join(["", "test VQA score (demo data), EL log_end 0.75:"] + summary_lines(results, baseline)))


if __name__ == "__main__":
    run_cli(main)
