"""End-to-end training speed: the same model trained with the EL and the CE criterion.

    python benchmarks/e2e_step_time.py --model ofa-demo --mode steps [--updates 40] [--rounds 3]
    python benchmarks/e2e_step_time.py --model ofa-demo   [--updates 100] [--rounds 3]
    python benchmarks/e2e_step_time.py --model transformer [--updates 200] [--rounds 3] [--vocab 8000]

``--mode runs`` (the default) runs fairseq's own training loop (this plugin as ``--user-dir``)
twice per round, CE then EL (log_end 0.75), and compares the median training time per update;
EL/CE is what EL costs a training run. On a shared machine whole runs are noisy (one run can
be 30% off), so ``--mode steps`` (ofa-demo only) measures side by side in one process: two
fairseq Trainers built from the same recipe and seed, one per criterion, take the same batches
(loaded beforehand) in alternation, CE/EL order flipped every round, each ``train_step``
(forward, backward, optimizer step) timed alone; it reports the median step time of each and
the median of the per-batch EL/CE ratios.

* ``ofa-demo``: the caption demo recipe (configs/caption/stage1_ce.yaml, ``DEMO=1``: the OFA
  architecture at demo size on demo/data), the model and data this project trains. The only
  difference between the two runs is ``--criterion``/``--log-end``.
  ``--ofa-vocabulary`` adds OFA's 8192 image codes and 1000 location bins to the output layer
  (a ~9.9k-entry softmax, as in OFA's dictionary minus its larger BPE), so the loss weighs more.
* ``transformer``: a 2+2-layer width-128 transformer on a synthetic reverse task with a large
  vocabulary: a stress case where the loss over the vocabulary is a large share of each step.
"""
import argparse
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

REPO_ROOT = Path(__file__).resolve().parents[1]
CAPTION_RECIPE = REPO_ROOT / "configs" / "caption" / "stage1_ce.yaml"
#: Recipe flags that read files the demo data does not have: left out when a recipe runs on it.
NOT_IN_DEMO_DATA = ("restore-file", "eval-cider-cached-tokens")
CRITERIA = {
    "ce": ["--criterion", "adjust_label_smoothed_cross_entropy"],
    "el": ["--criterion", "adjust_label_smoothed_encouraging_loss", "--log-end", "0.75"],
}


def placement(device: str) -> List[str]:
    flags = {"cpu": ["--cpu"], "cpu-bf16": ["--cpu", "--bf16"], "cuda-fp16": ["--fp16"], "cuda-bf16": ["--bf16"]}
    return flags.get(device, [])


def seconds_per_update(cmd: List[str], updates: int) -> float:
    """Run one training command; fairseq's training time (its "done training in X seconds" line: the
    training loop, start-up excluded, 0.1 s resolution) per update. The logs' ``train_wall`` would be
    rounded to whole seconds, a few percent of a short run."""
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)}\n" + proc.stdout[-2000:] + proc.stderr[-2000:])
    found = re.findall(r"done training in ([\d.]+) seconds", proc.stdout + proc.stderr)
    if not found:
        raise RuntimeError(f"no 'done training in' line in the log of {shlex.join(cmd)}")
    return float(found[-1]) / updates


def transformer_commands(tmp: Path, args: argparse.Namespace) -> Dict[str, List[str]]:
    from ofa_el.tools.sequence_demo import binarize, write_reverse_corpus

    text = write_reverse_corpus(tmp / "text", sizes={"train": 20000, "valid": 10, "test": 10}, vocab=args.vocab,
                                min_len=10, max_len=30)
    data = binarize(text, tmp / "bin")
    base = [sys.executable, "-m", "fairseq_cli.train", str(data), "--user-dir", str(REPO_ROOT),
            "--task", "translation", "--arch", "transformer", "--share-all-embeddings",
            "--encoder-layers", "2", "--decoder-layers", "2", "--encoder-embed-dim", "128", "--decoder-embed-dim", "128",
            "--encoder-ffn-embed-dim", "256", "--decoder-ffn-embed-dim", "256",
            "--encoder-attention-heads", "4", "--decoder-attention-heads", "4", "--label-smoothing", "0.1",
            "--optimizer", "adam", "--lr", "1e-3", "--max-tokens", "4096", "--num-workers", "0",
            *placement(args.device)]
    return {name: base + flags + _run_flags(tmp / f"ckpt_{name}", args.updates) for name, flags in CRITERIA.items()}


def ofa_demo_commands(tmp: Path, args: argparse.Namespace) -> Dict[str, List[str]]:
    from data_loading import ensure_demo_data

    from ofa_el.recipes import load_recipe
    from ofa_el.tools.launch import command

    data_dir = Path(args.data_dir)
    ensure_demo_data(data_dir, grounding=False)
    recipe = load_recipe(REPO_ROOT / "configs" / "caption" / "stage1_ce.yaml", demo=True)
    env = dict(os.environ, DATA_DIR=str(data_dir), BPE_DIR=str(data_dir / "bpe"))
    commands = {}
    for name, flags in CRITERIA.items():
        extra = flags + _run_flags(tmp / f"ckpt_{name}", args.updates)
        if args.ofa_vocabulary:
            extra += ["--code-dict-size", "8192", "--num-bins", "1000"]
        if args.device != "cpu":
            extra += placement(args.device)
        cmd = command(recipe, env, extra, where="configs/caption/stage1_ce.yaml")
        commands[name] = [c for c in cmd if not (args.device != "cpu" and c == "--cpu")]
    return commands


def _run_flags(save_dir: Path, updates: int) -> List[str]:
    return ["--max-update", str(updates), "--save-dir", str(save_dir), "--no-save", "--disable-validation",
            "--log-format", "json", "--log-interval", str(updates)]


def recipe_config(recipe_path: Path, data_dir: Path, demo: bool = True, extra: Sequence[str] = (),
                  bpe_dir: Optional[Path] = None):
    """The fairseq config ``fairseq-train`` would run for a recipe (its demo block, or the full recipe with
    ``demo=False``) on the demo data in ``data_dir``, ``extra`` appended to its command line. Flags that
    read files the demo data does not have (a checkpoint to restore, OFA's CIDEr pickle) are left out;
    without the pickle, CIDEr validation takes its document frequencies from the validation file."""
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    from ofa_el import claim_folder_name
    from ofa_el.recipes import fairseq_arguments, load_recipe

    claim_folder_name()  # fairseq imports --user-dir by folder name
    recipe = load_recipe(recipe_path, demo=demo)
    recipe["args"] = {name: value for name, value in (recipe.get("args") or {}).items()
                      if name not in NOT_IN_DEMO_DATA}
    env = dict(os.environ, DATA_DIR=str(data_dir), BPE_DIR=str(bpe_dir or data_dir / "bpe"))
    argv = fairseq_arguments(recipe, env, where=str(recipe_path)) + list(extra) + [f"--user-dir={REPO_ROOT}"]
    return convert_namespace_to_omegaconf(options.parse_args_and_arch(options.get_training_parser(), argv))


def place(cfg, device: str) -> None:
    """Set a fairseq config's device and precision flags for one of this script's device names."""
    from omegaconf import open_dict

    with open_dict(cfg):
        cfg.common.cpu = device.startswith("cpu")
        cfg.common.fp16 = device == "cuda-fp16"
        cfg.common.bf16 = device.endswith("-bf16")
        cfg.common.tpu = False


def caption_trainers(data_dir: Path, device: str, demo: bool = True, extra: Sequence[str] = (),
                     bpe_dir: Optional[Path] = None, criteria: Sequence[str] = tuple(CRITERIA),
                     ) -> Tuple[Any, Any, Dict[str, Any]]:
    """(task, config, {criterion: Trainer}) for the caption recipe: one fairseq Trainer per entry of
    ``CRITERIA`` (or of ``criteria``), built from the same seed (the same initial weights), on ``device`` (cpu, cuda:
    float32, cuda-fp16: fairseq's --fp16, cpu-bf16 / cuda-bf16: --bf16 as the training entry point
    means it, see precision.py). The task is shared: criterion flags are not task flags."""
    import torch
    from fairseq import tasks

    from data_loading import build_trainer

    # single-process trainers, whatever fairseq infers from the visible GPUs
    extra = list(extra) + ["--distributed-world-size=1"]
    cfgs = {name: recipe_config(CAPTION_RECIPE, data_dir, demo, CRITERIA[name] + extra, bpe_dir) for name in criteria}
    for cfg in cfgs.values():
        place(cfg, device)
    first = next(iter(cfgs.values()))
    task = tasks.setup_task(first.task)
    task.load_dataset("train")
    trainers = {}
    for name, cfg in cfgs.items():
        torch.manual_seed(cfg.common.seed)  # the same initial weights
        trainers[name] = build_trainer(task, cfg)
    return task, first, trainers


def preload_batches(task, cfg, count: int) -> List[Dict[str, Any]]:
    """The first ``count`` non-empty training batches, loaded before any step is timed."""
    from data_loading import first_batches

    batches = first_batches(task, cfg, count)
    if len(batches) < count:
        raise ValueError(f"{len(batches)} training batches of {cfg.dataset.batch_size} in {cfg.task.data}, "
                         f"{count} needed")
    return batches


def warm_up(trainers: Dict[str, Any], batches: Sequence[Dict[str, Any]]) -> List[Tuple[str, Any]]:
    """Untimed steps on each trainer (optimizer state, allocator, oneDNN/cuBLAS set-up); returns what
    each ``train_step`` returned, as (criterion, logging output)."""
    outputs = []
    for name, trainer in trainers.items():
        for batch in batches:
            outputs.append((name, trainer.train_step([batch])))
    return outputs


def interleaved_train_steps(trainers: Dict[str, Any], batches: Sequence[Dict[str, Any]], rounds: int, device: str,
                            after_step: Optional[Callable[[str, Any], None]] = None) -> Dict[str, List[float]]:
    """Seconds of each ``Trainer.train_step`` per criterion: every batch goes to each trainer in turn,
    the order flipped every round; ``after_step(criterion, logging output)`` runs after each timed step,
    outside the timing."""
    import time

    import torch

    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    times: Dict[str, List[float]] = {name: [] for name in trainers}
    for round_index in range(rounds):
        order = list(trainers) if round_index % 2 == 0 else list(reversed(list(trainers)))
        for batch in batches:
            for name in order:
                sync()
                start = time.perf_counter()
                output = trainers[name].train_step([batch])
                sync()
                times[name].append(time.perf_counter() - start)
                if after_step is not None:
                    after_step(name, output)
    return times


def interleaved_step_times(args: argparse.Namespace) -> Dict[str, List[float]]:
    """Seconds of each timed ``Trainer.train_step`` per criterion, the two trainers alternating on the
    same batches (see the module docstring)."""
    from data_loading import ensure_demo_data, quiet

    quiet()
    data_dir = Path(args.data_dir)
    ensure_demo_data(data_dir, grounding=False)
    extra = ["--code-dict-size", "8192", "--num-bins", "1000"] if args.ofa_vocabulary else []
    task, cfg, trainers = caption_trainers(data_dir, args.device, demo=True, extra=extra)
    warmup = 3
    try:
        batches = preload_batches(task, cfg, warmup + args.updates)
    except ValueError as err:
        raise SystemExit(str(err)) from None
    warm_up(trainers, batches[:warmup])
    return interleaved_train_steps(trainers, batches[warmup:], args.rounds, args.device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["ofa-demo", "transformer"], default="ofa-demo")
    parser.add_argument("--mode", choices=["runs", "steps"], default="runs",
                        help="runs: whole fairseq-train runs; steps: interleaved train_steps in one process")
    parser.add_argument("--updates", type=int, default=None,
                        help="updates per run (default: 100 ofa-demo, 200 transformer; --mode steps: 40 per round)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--vocab", type=int, default=8000, help="transformer: word types of the synthetic corpus")
    parser.add_argument("--ofa-vocabulary", action="store_true",
                        help="ofa-demo: OFA's 8192 codes + 1000 bins in the output layer")
    parser.add_argument("--data-dir", default=str(REPO_ROOT / "demo" / "data"),
                        help="ofa-demo: the demo data (written there if missing)")
    parser.add_argument("--device", choices=["cpu", "cuda", "cuda-fp16", "cuda-bf16"], default="cpu",
                        help="cuda: float32 on the first GPU; cuda-fp16 / cuda-bf16: --fp16 / --bf16 there")
    args = parser.parse_args()
    what = (f"vocabulary ~{args.vocab}" if args.model == "transformer" else
            "caption demo recipe" + (", OFA's codes and bins in the vocabulary" if args.ofa_vocabulary else ""))
    if args.mode == "steps":
        if args.model != "ofa-demo":
            parser.error("--mode steps measures the ofa-demo model")
        args.updates = args.updates or 40
        times = interleaved_step_times(args)
        ce, el = statistics.median(times["ce"]), statistics.median(times["el"])
        paired = statistics.median(e / c for c, e in zip(times["ce"], times["el"]))
        print(f"ofa-demo on {args.device} ({what}): seconds per train_step, median of {len(times['ce'])} "
              f"interleaved steps ({args.rounds} rounds of {args.updates} batches): CE {ce:.4f}, EL {el:.4f}; "
              f"EL/CE = {el / ce:.3f}; median per-batch EL/CE = {paired:.3f}")
        return
    args.updates = args.updates or (100 if args.model == "ofa-demo" else 200)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        build = ofa_demo_commands if args.model == "ofa-demo" else transformer_commands
        commands = build(tmp, args)
        times: Dict[str, List[float]] = {name: [] for name in commands}
        for _ in range(args.rounds):
            for name, cmd in commands.items():
                times[name].append(seconds_per_update(cmd, args.updates))
    ce, el = statistics.median(times["ce"]), statistics.median(times["el"])
    print(f"{args.model} on {args.device} ({what}): seconds per update, median of {args.rounds} alternating runs "
          f"of {args.updates} updates: CE {ce:.4f}, EL {el:.4f}; EL/CE = {el / ce:.3f}")
    print("EL/CE per round: " + ", ".join(f"{e / c:.3f}" for c, e in zip(times["ce"], times["el"])))


if __name__ == "__main__":
    main()
