"""Does data loading keep up with training? The demo recipes' data pipeline against their training step.

    python benchmarks/data_loading.py                      # demo/data, both tasks (a couple of minutes)
    python benchmarks/data_loading.py --quick --json out.json

For the caption and the refcoco demo recipe (configs/caption/stage1_el.yaml and
configs/refcoco/refcoco_el.yaml with their ``demo:`` overrides), the task is built exactly as
``fairseq-train`` builds it (the recipe's command line through fairseq's training parser, this
plugin as ``--user-dir``), and two rates are measured in samples per second:

* **pipeline**: batches from ``task.get_batch_iterator`` (fairseq's EpochBatchIterator over a
  torch DataLoader: TSV read, base64 and image decoding, image transform, collate), with each
  ``--num-workers`` (0 loads in this process; >0 in DataLoader worker processes, counted
  while they run). The first batch(es) of an iterator are a warm-up (worker start-up), then a
  fixed number of batches is timed. fairseq's ``--data-buffer-size`` prefetch thread is left
  out: it only loads ahead and cannot raise the steady rate, but it would keep loading after
  the timed window and steal CPU from the next measurement.
* **training**: fairseq's ``Trainer.train_step`` on the demo model (forward, backward, optimizer
  step) with batches loaded beforehand, so no data loading is inside the timed step; the same
  batch size as the pipeline (the recipe's ``--batch-size``). The model is freshly initialised
  (the refcoco recipe's ``--restore-file`` is not loaded): the weights do not change a step's cost.

Each round measures every pipeline setting and then a few training steps, interleaved, so
machine noise hits all alike; the table gives the median over rounds. ratio = pipeline /
training: below 1, data loading bounds training. With ``--num-workers 0`` (the recipes'
setting) loading runs in the training process, so its time largely adds to each step's:
about 1/ratio of a step.
"""
from __future__ import annotations

import argparse
import gc
import json
import logging
import multiprocessing
import os
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Dict, Iterator, List, Sequence, Tuple

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
#: Task name -> the demo recipe whose arguments build it.
RECIPES = {
    "caption": REPO_ROOT / "configs" / "caption" / "stage1_el.yaml",
    "refcoco": REPO_ROOT / "configs" / "refcoco" / "refcoco_el.yaml",
}


def ensure_demo_data(data_dir: Path, grounding: bool = True) -> None:
    """Write the demo data set (as ``make demo`` does) when its training files are missing; without
    ``grounding``, only the caption files are needed (and no refcoco training rows are written)."""
    needed = ["caption_stage1_train.tsv"] + (["refcoco_train.tsv"] if grounding else [])
    if all((data_dir / name).is_file() for name in needed):
        return
    subprocess.check_call([sys.executable, "-m", "ofa_el.tools.make_demo_data", "--out", str(data_dir),
                           "--seed", "0", "--refcoco-train-images", "4000" if grounding else "0"], cwd=REPO_ROOT)


def training_config(recipe_path: Path, data_dir: Path, extra: Sequence[str] = ()):
    """The fairseq config ``fairseq-train`` would run for the recipe's demo block on ``data_dir``
    (``extra`` appended to its command line, as the launcher appends a user's arguments)."""
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    from ofa_el import claim_folder_name
    from ofa_el.recipes import fairseq_arguments, load_recipe

    claim_folder_name()  # fairseq imports --user-dir by folder name
    recipe = load_recipe(recipe_path, demo=True)
    env = dict(os.environ, DATA_DIR=str(data_dir), BPE_DIR=str(data_dir / "bpe"))
    argv = fairseq_arguments(recipe, env, where=str(recipe_path)) + list(extra) + [f"--user-dir={REPO_ROOT}"]
    args = options.parse_args_and_arch(options.get_training_parser(), argv)
    return convert_namespace_to_omegaconf(args)


def batch_iterator(task, cfg, num_workers: int) -> Iterator[Dict[str, Any]]:
    """Epoch 1 of the training batches, with the arguments fairseq's Trainer passes (no prefetch buffer)."""
    epoch_itr = task.get_batch_iterator(
        dataset=task.dataset("train"), max_tokens=cfg.dataset.max_tokens, max_sentences=cfg.dataset.batch_size,
        ignore_invalid_inputs=True, required_batch_size_multiple=cfg.dataset.required_batch_size_multiple,
        seed=cfg.common.seed, num_workers=num_workers, epoch=1, data_buffer_size=0)
    return epoch_itr.next_epoch_itr(shuffle=False)


def worker_processes() -> int:
    """Live child processes of this one (DataLoader workers start as multiprocessing children)."""
    return len(multiprocessing.active_children())


def samples(batch: Dict[str, Any]) -> int:
    return int(batch.get("nsentences", 0))  # fairseq pads the epoch with empty batches ({}), worth nothing


def time_pipeline(task, cfg, num_workers: int, batches: int) -> Tuple[float, int]:
    """(samples/s over ``batches`` batches after the warm-up, worker processes seen while timing)."""
    baseline = worker_processes()
    itr = batch_iterator(task, cfg, num_workers)
    try:
        # Workers start together, so the first batch of each one arrives at about the same time:
        # one warm-up batch per worker keeps their start-up out of the timed window.
        for _ in range(max(1, num_workers)):
            next(itr)
        workers = worker_processes() - baseline
        count = 0
        start = time.perf_counter()
        for _ in range(batches):
            count += samples(next(itr))
        elapsed = time.perf_counter() - start
        workers = max(workers, worker_processes() - baseline)
    finally:
        del itr
        gc.collect()  # shuts the DataLoader workers down before the next measurement
    return count / elapsed, workers


def first_batches(task, cfg, count: int) -> List[Dict[str, Any]]:
    """``count`` non-empty training batches, loaded before any step is timed."""
    out: List[Dict[str, Any]] = []
    for batch in batch_iterator(task, cfg, num_workers=0):
        if len(out) == count:
            break
        if samples(batch):
            out.append(batch)
    return out


def build_trainer(task, cfg):
    from fairseq.trainer import Trainer

    model = task.build_model(cfg.model)
    criterion = task.build_criterion(cfg.criterion)
    return Trainer(cfg, task, model, criterion)


def time_training(trainer, batches: Sequence[Dict[str, Any]]) -> float:
    """Samples/s of ``Trainer.train_step``: total samples over total time of these steps."""
    count, elapsed = 0, 0.0
    for batch in batches:
        start = time.perf_counter()
        trainer.train_step([batch])
        elapsed += time.perf_counter() - start
        count += samples(batch)
    return count / elapsed


def bench_task(name: str, data_dir: Path, workers: Sequence[int], batches: int, repeats: int,
               train_steps: int, warmup_steps: int) -> Dict[str, Any]:
    """Pipeline and training rates of one task, interleaved over ``repeats`` rounds."""
    from fairseq import tasks

    cfg = training_config(RECIPES[name], data_dir)
    task = tasks.setup_task(cfg.task)
    task.load_dataset("train")
    needed = batches + max(1, max(workers))
    available = len(task.dataset("train")) // cfg.dataset.batch_size
    if available < needed:
        raise SystemExit(f"{name}: {available} full batches of {cfg.dataset.batch_size} in the training file, "
                         f"{needed} needed (lower --batches or write more demo data)")
    trainer = build_trainer(task, cfg)
    steps = first_batches(task, cfg, warmup_steps + train_steps)
    if len(steps) < warmup_steps + train_steps:
        raise SystemExit(f"{name}: {len(steps)} training batches, {warmup_steps + train_steps} needed")
    for batch in steps[:warmup_steps]:  # first steps: optimizer and scheduler set-up, allocator warm-up
        trainer.train_step([batch])
    pipeline: Dict[int, List[float]] = {w: [] for w in workers}
    processes: Dict[int, int] = {w: 0 for w in workers}
    training: List[float] = []
    for _ in range(repeats):
        for w in workers:
            rate, seen = time_pipeline(task, cfg, w, batches)
            pipeline[w].append(rate)
            processes[w] = max(processes[w], seen)
        training.append(time_training(trainer, steps[warmup_steps:]))
    train_rate = statistics.median(training)
    pipe = {w: statistics.median(rates) for w, rates in pipeline.items()}
    return {
        "recipe": str(RECIPES[name].relative_to(REPO_ROOT)),
        "batch_size": cfg.dataset.batch_size,
        "patch_image_size": cfg.task.patch_image_size,
        "recipe_num_workers": cfg.dataset.num_workers,
        "pipeline_samples_per_s": {str(w): rate for w, rate in pipe.items()},
        "worker_processes": {str(w): n for w, n in processes.items()},
        "training_samples_per_s": train_rate,
        "ratio": {str(w): rate / train_rate for w, rate in pipe.items()},
        "bound": {str(w): "training" if rate >= train_rate else "data" for w, rate in pipe.items()},
    }


def verdict(name: str, result: Dict[str, Any]) -> str:
    """One line: what bounds training with the recipe's worker count, and what the others would do."""
    ratios = {int(w): r for w, r in result["ratio"].items()}
    recipe_w = result["recipe_num_workers"]
    main_w = recipe_w if recipe_w in ratios else min(ratios)
    main = ratios[main_w]
    if main >= 1:
        line = (f"{name}: training-bound: with --num-workers {main_w} data loads at {main:.1f}x the training rate"
                + (f" (in-process, it adds about {100 / main:.1f}% to a step)" if main_w == 0 else ""))
    else:
        line = f"{name}: data-bound: with --num-workers {main_w} data loads at only {main:.2f}x the training rate"
    others = [f"{w} workers {r:.1f}x" for w, r in sorted(ratios.items()) if w != main_w]
    return line + ("; " + ", ".join(others) if others else "")


def print_table(results: Dict[str, Dict[str, Any]], workers: Sequence[int]) -> None:
    cols = [f"pipe w={w}" for w in workers] + ["training"] + [f"ratio w={w}" for w in workers]
    header = f"{'task':<8} {'batch':>5}  " + "  ".join(f"{c:>11}" for c in cols)
    print(header + "\n" + "-" * len(header))
    for name, res in results.items():
        cells = [f"{res['pipeline_samples_per_s'][str(w)]:11.1f}" for w in workers]
        cells.append(f"{res['training_samples_per_s']:11.1f}")
        cells += [f"{res['ratio'][str(w)]:11.2f}" for w in workers]
        print(f"{name:<8} {res['batch_size']:>5}  " + "  ".join(cells))
    print("pipe/training: samples/s (median over rounds); ratio = pipeline / training (< 1: data-bound)")
    for name, res in results.items():
        print(verdict(name, res))


def quiet() -> None:
    """Keep the table readable: fairseq/hydra log at INFO and warn about deprecated hydra use; torch
    warns that pin_memory has no effect without an accelerator (fairseq always asks for it) and
    that fairseq's ``torch.cuda.amp.autocast`` is deprecated."""
    logging.getLogger().setLevel(logging.WARNING)
    for name in ("fairseq", "ofa_el", "hydra"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for category in (UserWarning, DeprecationWarning, FutureWarning):
        warnings.filterwarnings("ignore", category=category)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=str(REPO_ROOT / "demo" / "data"),
                        help="the demo data (written there if missing)")
    parser.add_argument("--tasks", nargs="+", choices=sorted(RECIPES), default=list(RECIPES))
    parser.add_argument("--num-workers", nargs="+", type=int, default=[0, 2], help="DataLoader worker counts")
    parser.add_argument("--batches", type=int, default=None, help="timed batches per pipeline run (default 50)")
    parser.add_argument("--repeats", type=int, default=None, help="interleaved rounds (default 3)")
    parser.add_argument("--train-steps", type=int, default=None, help="timed training steps per round (default 8)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: few batches, one round")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    batches = args.batches or (3 if args.quick else 50)
    repeats = args.repeats or (1 if args.quick else 3)
    train_steps = args.train_steps or (2 if args.quick else 8)
    warmup_steps = 1 if args.quick else 2
    if min(args.num_workers) < 0 or min(batches, repeats, train_steps) < 1:
        parser.error("--num-workers must be >= 0; --batches, --repeats and --train-steps >= 1")
    quiet()
    data_dir = Path(args.data_dir).resolve()
    ensure_demo_data(data_dir)
    load = os.getloadavg()[0]
    print(f"CPU: {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, load average {load:.2f} at start; "
          f"{batches} timed batches x {repeats} rounds, {train_steps} training steps per round")
    results = {name: bench_task(name, data_dir, args.num_workers, batches, repeats, train_steps, warmup_steps)
               for name in args.tasks}
    print_table(results, args.num_workers)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"data_dir": str(data_dir), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                       "load_average_at_start": load, "num_workers": args.num_workers, "batches": batches,
                       "repeats": repeats, "train_steps": train_steps, "tasks": results}, handle, indent=2)


if __name__ == "__main__":
    main()
