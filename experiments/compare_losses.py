"""Compare CE, EL (three log_end values), EL + drop-best and Poly-1 on the demo recipes, over several seeds.

    python experiments/compare_losses.py --jobs 2 [--seeds 3] [--tasks caption,refcocoplus] [--out results]
    python experiments/compare_losses.py --from-logs          # re-read the logs, rewrite tables and plots
    python experiments/compare_losses.py --quick              # the test: a few updates of ce and el0.75

An experiment, not part of the installed package: run it from a checkout whose ``ofa_el`` is installed editable
(``make venv``). Every run is the demo variant of a published recipe (``DEMO=1`` through ``run_scripts/launch.sh``,
as ``make demo`` runs them) with the criterion's flags and ``--seed`` appended (later flags win):

* ``ce``: ``caption/stage1_ce.yaml``, ``refcoco/<set>_ce.yaml`` as they are (adjust_label_smoothed_cross_entropy)
* ``el0.5``, ``el0.75``, ``el1.0``: ``*_el.yaml`` with ``--log-end=0.5`` / ``0.75`` / ``1.0``
* ``el0.75+db``: ``*_el.yaml`` with ``--log-end=0.75 --drop-best-ratio=0.05 --drop-best-after=0``
* ``poly1``: ``*_ce.yaml`` with ``--criterion=adjust_label_smoothed_poly1_cross_entropy --poly-epsilon=1.0``

The caption CE and EL recipes differ in more than the criterion, as OFA's scripts do: drop-worst 0.2 (CE,
Poly-1) against 0.05 (EL), both only after 300 updates in the demo, so runs shorter than that are unaffected.

Tasks: ``caption``; ``refcocoplus`` (the default grounding task), which finetunes the RefCOCO demo model as
``make demo-all`` does; ``refcoco``, which finetunes the caption demo model. All runs of a grounding task restore
one checkpoint, as the recipes restore a pretrained one: ``$RESTORE_FILE`` if set, else the recipe's demo default
(what ``make demo`` trains), trained first with ``python -m ofa_el.tools.demo --only <task>`` if it is missing
(``--quick``: a few updates, in the work dir).

Each run gets ``--save-dir <work>/<task>/<criterion>/seed<s>`` and ``--log-format=json --log-file=<dir>/train.log``.
After training its ``checkpoint_best.pt`` is scored on the test split(s) with run_scripts/caption/evaluate_caption.sh
or run_scripts/refcoco/evaluate_refcoco.sh (``SET=<task>``: val/testA/testB, bin-restricted decoding), and the
other checkpoints are deleted. A run finished with the same command and start checkpoint (its ``run.json``) is reused
on the next call unless ``--force``; any other is started again from scratch.

Results come from fairseq's own JSON log lines: the validation metric (caption ``cider``, grounding ``score`` =
Acc@0.5 and ``miou``) against ``num_updates``, the best (maximum) of it, the train loss, nll_loss and the EL
diagnostics (``p_target``, ``past_log_end``, ``bonus``) of the last logged training window, and wall times. Written
to ``<out>/compare.json`` (every run and the aggregates), ``<out>/compare.md`` (mean +- std over seeds, the command
and the git revision) and ``<out>/compare_<task>_val.png`` (validation metric against updates: mean over seeds with
the min-max band).

**Sizes.** The demo recipes train longer than a one-hour comparison allows on 2 CPU cores (caption: 2 epochs of
235 updates; grounding: 5 epochs of 250 updates). By default each caption run is cut to ``--caption-updates 150``
and each grounding run to ``--grounding-updates 300``, the learning-rate schedule compressed to that length
(``--max-update N --total-num-update N``), with ``--val-points 4`` validations per run (grounding also validates at
its epoch end). ``0`` keeps the recipe's own length (its epochs). ``--jobs 2`` runs two trainings at once with
cores/2 threads each (on a 2-core CPU that gave 1.25x the training throughput of one two-thread run).
``--quick`` (the test): one seed, ce and el0.75, 4 updates, 2 validations on 1-2 batches each.

**Time estimate.** Nothing about a machine's speed is built in; the estimate is measured on the machine at hand.
One run of a task costs a fixed part (start-up, validations, checkpoint saves, the test evaluation) plus training
seconds per update. Both come from runs of that task already finished in the work dir with the same ``--jobs``
and ``--quick`` (their ``run.json`` records them): the per-update time is fairseq's ``train_wall`` (seconds inside
training steps, summed over the epoch lines of ``train.log``) over the updates, the fixed part is the run's
``train_s + eval_s`` from ``run.json`` less that ``train_wall``; the median over those runs is taken. A task with
no such run is timed first: its first runs (one per task, then more in turn until ``--jobs`` run at once, so they
share the cores as the rest will) are trained before the estimate, and count in the results like any other run.
The runs left are then laid out over ``--jobs`` slots in order, each at its measured cost for its task's number of
updates (the fixed part is taken as measured, so timings from runs with another ``--val-points`` are rougher);
the total is printed and the tool waits 5 s (Ctrl-C stops it; ``--yes`` skips the wait) before training them.
Missing start checkpoints are trained before any timing and are not part of the estimate.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from ofa_el.errors import MissingFileError, UserError
from ofa_el.tools.errors import run_cli
from ofa_el.recipes import REPO_ROOT, expand, load_recipe


class LogError(UserError, ValueError):
    """A training log that cannot give the numbers asked for; the message names the file (and line)."""


class RunError(RuntimeError):
    """A training or evaluation subprocess that failed; the message names its log and shows its tail."""


class UsageError(UserError, ValueError):
    """A command-line option that cannot be used; the message names the option and the accepted values."""


@dataclass(frozen=True)
class Criterion:
    name: str
    recipe: str  # "ce" or "el": which of the task's two recipes it extends
    extra: Tuple[str, ...] = ()


CRITERIA: Dict[str, Criterion] = {c.name: c for c in (
    Criterion("ce", "ce"),
    Criterion("el0.5", "el", ("--log-end=0.5",)),
    Criterion("el0.75", "el", ("--log-end=0.75",)),
    Criterion("el1.0", "el", ("--log-end=1.0",)),
    Criterion("el0.75+db", "el", ("--log-end=0.75", "--drop-best-ratio=0.05", "--drop-best-after=0")),
    Criterion("poly1", "ce", ("--criterion=adjust_label_smoothed_poly1_cross_entropy", "--poly-epsilon=1.0")),
)}
QUICK_CRITERIA = ("ce", "el0.75")
BASELINE = "ce"  # the criterion every other is tested against


@dataclass(frozen=True)
class TaskSpec:
    name: str
    recipes: Mapping[str, str]  # "ce"/"el" -> recipe under configs/
    metric: str  # the validation metric the best checkpoint is chosen by (maximised)
    val_metrics: Tuple[str, ...]  # validation metrics kept per point of the curve
    eval_script: str
    eval_env: Mapping[str, str]
    test_metrics: Tuple[Tuple[str, str, str], ...]  # (metrics.json row, column, label)
    #: the task whose EL demo model this task's runs restore (its recipes' demo RESTORE_FILE); None: none
    starts_from: Optional[str] = None


def _grounding(name: str, starts_from: str) -> TaskSpec:
    return TaskSpec(
        name, {"ce": f"refcoco/{name}_ce.yaml", "el": f"refcoco/{name}_el.yaml"}, "score", ("score", "miou"),
        "refcoco/evaluate_refcoco.sh", {"SET": name},
        ((f"{name}_val", "Acc@0.5", "val Acc@0.5"), (f"{name}_testA", "Acc@0.5", "testA Acc@0.5"),
         (f"{name}_testB", "Acc@0.5", "testB Acc@0.5"), (f"{name}_testA", "mIoU", "testA mIoU"),
         (f"{name}_testB", "mIoU", "testB mIoU")),
        starts_from=starts_from)


TASKS: Dict[str, TaskSpec] = {
    "caption": TaskSpec(
        "caption", {"ce": "caption/stage1_ce.yaml", "el": "caption/stage1_el.yaml"}, "cider", ("cider",),
        "caption/evaluate_caption.sh", {},
        (("caption_test", "CIDEr", "test CIDEr"), ("caption_test", "Bleu_4", "test BLEU-4"))),
    # RefCOCO+ finetunes the RefCOCO demo model (as make demo-all does); RefCOCO the caption model, which
    # needs ~1000 updates to rise above choosing a shape at random: too long for a one-hour comparison
    "refcocoplus": _grounding("refcocoplus", "refcoco"),
    "refcoco": _grounding("refcoco", "caption"),
}
DEFAULT_TASKS = "caption,refcocoplus"
DEFAULT_UPDATES = {"caption": 150, "grounding": 300}
#: How the runs are started, as written in results (the script is run from the repository root).
SCRIPT = "experiments/compare_losses.py"
DIAGNOSTICS = ("loss", "nll_loss", "p_target", "past_log_end", "bonus")


# ----------------------------------------------------------------------------------------------- log parsing
@dataclass
class TrainingLog:
    """The JSON lines of one fairseq log, by kind, each keyed by num_updates (a repeated line keeps the last)."""

    path: Path
    valid: Dict[int, Dict[str, float]] = field(default_factory=dict)
    train_inner: Dict[int, Dict[str, float]] = field(default_factory=dict)
    train: Dict[int, Dict[str, float]] = field(default_factory=dict)


def _number(value: Any, where: str, key: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise LogError(f"{where}: {key!r} is not a number: {value!r}") from None


def parse_log(path: Path) -> TrainingLog:
    """Read fairseq's ``--log-format json`` lines from a ``--log-file`` (or captured stdout, ``INFO:valid:{...}``).

    Lines that are not JSON objects (the config dump, the model, plain messages) are skipped. Values are numbers
    written as strings by fairseq; prefixes (``valid_``, ``train_``) are stripped.
    """
    path = Path(path)
    if not path.is_file():
        raise LogError(f"{path}: training log not found")
    log = TrainingLog(path)
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        start = line.find("{\"")
        if start < 0:
            continue
        try:
            record = json.loads(line[start:])
        except json.JSONDecodeError:
            continue
        if not isinstance(record, dict):
            continue
        where = f"{path}:{number}"
        if "valid_num_updates" in record:
            kind, prefix, target = "valid", "valid_", log.valid
        elif "train_num_updates" in record:
            kind, prefix, target = "train", "train_", log.train
        elif "num_updates" in record and "update" in record:
            kind, prefix, target = "train_inner", "", log.train_inner
        else:
            continue
        values = {}
        for key, value in record.items():
            if key == "epoch" or not key.startswith(prefix):
                continue
            values[key[len(prefix):]] = _number(value, where, key)
        target[int(values["num_updates"])] = values
    return log


def summarize_log(path: Path, metric: str, val_metrics: Sequence[str] = ()) -> Dict[str, Any]:
    """One run's numbers from its log: validation curve, best (maximum) metric, last training window's diagnostics."""
    log = parse_log(path)
    if not log.valid:
        raise LogError(f"{log.path}: no validation line (a JSON line with 'valid_num_updates'); "
                       "was the run trained with --log-format json and validated?")
    updates = sorted(log.valid)
    curve: Dict[str, List[float]] = {"updates": [float(u) for u in updates]}
    for name in dict.fromkeys((metric, *val_metrics)):
        missing = [u for u in updates if name not in log.valid[u]]
        if missing:
            raise LogError(f"{log.path}: validation at num_updates {missing[0]} has no 'valid_{name}'")
        curve[name] = [log.valid[u][name] for u in updates]
    values = curve[metric]
    best_index = max(range(len(values)), key=lambda i: (values[i], -i))  # the first of equal maxima
    last_window = log.train_inner[max(log.train_inner)] if log.train_inner else None
    last_epoch = log.train[max(log.train)] if log.train else None
    source = last_window or last_epoch
    if source is None:
        raise LogError(f"{log.path}: no training line (JSON with 'num_updates'/'train_num_updates')")
    final_valid = log.valid[updates[-1]]
    summary: Dict[str, Any] = {
        "log": str(log.path),
        "curve": curve,
        "best_val": values[best_index],
        "best_update": updates[best_index],
        "final_val": values[-1],
        "num_updates": int(max(updates[-1], *(log.train or [0]), *(log.train_inner or [0]))),
        "fairseq_wall_s": (last_epoch or source).get("wall"),
        "valid_p_target": final_valid.get("p_target"),
    }
    for key in DIAGNOSTICS:
        summary[f"train_{key}"] = source.get(key)
    for name in val_metrics:
        summary[f"val_{name}_at_best"] = curve[name][best_index]
    return summary


# ----------------------------------------------------------------------------------------------- aggregation
def aggregate(values: Iterable[Optional[float]]) -> Dict[str, Optional[float]]:
    """Mean, sample standard deviation (n - 1; None for one value), min, max and n of the values that are present."""
    present = [float(v) for v in values if v is not None]
    if not present:
        return {"n": 0, "mean": None, "std": None, "min": None, "max": None}
    return {"n": len(present), "mean": statistics.fmean(present),
            "std": statistics.stdev(present) if len(present) > 1 else None,
            "min": min(present), "max": max(present)}


def welch_against(values: Sequence[Optional[float]], baseline: Sequence[Optional[float]]) -> Dict[str, Any]:
    """Difference of means and Welch's two-sided t-test p-value (unequal variances): is a criterion's difference
    from the baseline larger than the seeds' spread? p is None with fewer than two values a side or no spread."""
    a = [float(v) for v in values if v is not None]
    b = [float(v) for v in baseline if v is not None]
    if not a or not b:
        return {"diff": None, "p": None}
    diff = statistics.fmean(a) - statistics.fmean(b)
    if len(a) < 2 or len(b) < 2 or (statistics.variance(a) == 0 and statistics.variance(b) == 0):
        return {"diff": diff, "p": None}
    from scipy import stats

    return {"diff": diff, "p": float(stats.ttest_ind(a, b, equal_var=False).pvalue)}


def aggregate_curves(curves: Sequence[Mapping[str, Sequence[float]]], metric: str) -> Dict[str, List[float]]:
    """Mean, min and max of a validation metric over seeds, at the num_updates every seed validated at."""
    if not curves:
        return {"updates": [], "mean": [], "min": [], "max": []}
    tables = [dict(zip(c["updates"], c[metric])) for c in curves]
    common = sorted(set.intersection(*(set(t) for t in tables)))
    out: Dict[str, List[float]] = {"updates": common, "mean": [], "min": [], "max": []}
    for update in common:
        points = [t[update] for t in tables]
        out["mean"].append(statistics.fmean(points))
        out["min"].append(min(points))
        out["max"].append(max(points))
    return out


def read_test_metrics(metrics_path: Path, spec: TaskSpec) -> Dict[str, Optional[float]]:
    """The test-split numbers of one run from the evaluation's metrics.json (None where not evaluated)."""
    if not metrics_path.is_file():
        return {label: None for _, _, label in spec.test_metrics}
    table = json.loads(metrics_path.read_text())
    out: Dict[str, Optional[float]] = {}
    for row, column, label in spec.test_metrics:
        if row not in table or column not in table[row]:
            raise LogError(f"{metrics_path}: no {column!r} for {row!r}")
        out[label] = float(table[row][column])
    return out


SUMMARY_FIELDS = ("best_val", "final_val", "train_loss", "train_nll_loss", "train_p_target", "train_past_log_end",
                  "train_bonus", "wall_s")


def aggregate_runs(runs: Sequence[Mapping[str, Any]], tasks: Mapping[str, TaskSpec] = TASKS) -> Dict[str, Any]:
    """Per task and criterion (in the order first seen): every summary field and the curve over seeds."""
    groups: Dict[str, Dict[str, List[Mapping[str, Any]]]] = {}
    for run in runs:
        groups.setdefault(run["task"], {}).setdefault(run["criterion"], []).append(run)
    out: Dict[str, Any] = {}
    for task, by_criterion in groups.items():
        spec = tasks[task]
        out[task] = {}
        for criterion, members in by_criterion.items():
            entry: Dict[str, Any] = {"seeds": [r["seed"] for r in members]}
            for name in SUMMARY_FIELDS:
                entry[name] = aggregate(r.get(name) for r in members)
            for name in spec.val_metrics:
                entry[f"val_{name}_at_best"] = aggregate(r.get(f"val_{name}_at_best") for r in members)
            entry["test"] = {label: aggregate((r.get("test") or {}).get(label) for r in members)
                             for _, _, label in spec.test_metrics}
            entry["curves"] = {name: aggregate_curves([r["curve"] for r in members], name)
                               for name in spec.val_metrics}
            out[task][criterion] = entry
        baseline = by_criterion.get(BASELINE)
        if baseline is None:
            continue
        compared = [("best_val", lambda r: r.get("best_val"))] + [
            (label, lambda r, label=label: (r.get("test") or {}).get(label)) for _, _, label in spec.test_metrics]
        for criterion, members in by_criterion.items():
            if criterion != BASELINE:
                out[task][criterion]["against_baseline"] = {
                    name: welch_against([get(r) for r in members], [get(r) for r in baseline])
                    for name, get in compared}
    return out


# ----------------------------------------------------------------------------------------------- reports
def _fmt(stats: Mapping[str, Optional[float]], digits: int = 3) -> str:
    if not stats or stats.get("mean") is None:
        return "–"
    text = f"{stats['mean']:.{digits}f}"
    if stats.get("std") is not None:
        text += f" ± {stats['std']:.{digits}f}"
    return text


def _fmt_against(test: Mapping[str, Optional[float]]) -> str:
    if test.get("diff") is None:
        return "–"
    p = "–" if test.get("p") is None else f"{test['p']:.2f}"
    return f"{test['diff']:+.3f} (p {p})"


def write_markdown(results: Mapping[str, Any], path: Path, tasks: Mapping[str, TaskSpec] = TASKS) -> Path:
    """The comparison as tables (mean ± sample std over seeds) with the command and revision behind them."""
    meta = results["meta"]
    agg = results["aggregates"]
    lines = ["# Loss comparison on the demo recipes", "",
             "Synthetic demo data (README.md), CPU-sized model; runs cut to the sizes below. "
             "Mean ± sample standard deviation over seeds; `–` where a criterion does not log the value.", "",
             f"* results written by: `{meta['command']}` at `{meta['git_rev']}`"]
    for command in meta.get("trained_by", []):
        lines.append(f"* runs trained by: `{command}`")
    for rev, count in meta.get("trained_at", {}).items():
        lines.append(f"* {count} run{'s' if count != 1 else ''} trained at `{rev}`")
    for task, sizes in meta.get("sizes", {}).items():
        lines.append(f"* {task}: " + ", ".join(f"{k} {v}" for k, v in sizes.items()))
    lines += ["", "## Best validation metric (criterion x task)", "",
              "| criterion | " + " | ".join(f"{t} best {tasks[t].metric}" for t in agg) + " |",
              "|---|" + "---|" * len(agg)]
    criteria = list(dict.fromkeys(c for t in agg for c in agg[t]))
    for criterion in criteria:
        cells = [_fmt(agg[t][criterion]["best_val"]) if criterion in agg[t] else "" for t in agg]
        lines.append(f"| {criterion} | " + " | ".join(cells) + " |")
    for task, by_criterion in agg.items():
        spec = tasks[task]
        extra_val = [m for m in spec.val_metrics if m != spec.metric]
        head = (["criterion", "seeds", f"best val {spec.metric}"] + [f"val {m} at best" for m in extra_val]
                + [label for _, _, label in spec.test_metrics]
                + ["train loss", "train nll_loss", "p_target", "past log_end", "wall s"])
        lines += ["", f"## {task}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for criterion, entry in by_criterion.items():
            cells = [criterion, str(len(entry["seeds"])), _fmt(entry["best_val"])]
            cells += [_fmt(entry[f"val_{m}_at_best"]) for m in extra_val]
            cells += [_fmt(entry["test"][label]) for _, _, label in spec.test_metrics]
            cells += [_fmt(entry["train_loss"]), _fmt(entry["train_nll_loss"]), _fmt(entry["train_p_target"]),
                      _fmt(entry["train_past_log_end"]), _fmt(entry["wall_s"], 0)]
            lines.append("| " + " | ".join(cells) + " |")
        compared = [c for c, e in by_criterion.items() if "against_baseline" in e]
        if compared:
            names = list(by_criterion[compared[0]]["against_baseline"])
            labels = [f"best val {spec.metric}" if n == "best_val" else n for n in names]
            lines += ["", f"Against `{BASELINE}`: difference of means (Welch's t-test p-value over seeds; `–` with "
                      "fewer than two seeds a side).", "", "| criterion | " + " | ".join(labels) + " |",
                      "|" + "---|" * (len(labels) + 1)]
            for criterion in compared:
                tests = by_criterion[criterion]["against_baseline"]
                lines.append(f"| {criterion} | " + " | ".join(_fmt_against(tests[n]) for n in names) + " |")
        lines += ["", f"![{task} validation](compare_{task}_val.png)"]
    lines += ["", "train loss, nll_loss, p_target and the share of tokens past log_end are those of the last logged "
              "training window. The loss includes each criterion's own terms (EL's bonus is negative), so compare "
              "nll_loss across criteria.", ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    return path


def plot_task(results: Mapping[str, Any], task: str, path: Path, tasks: Mapping[str, TaskSpec] = TASKS) -> Path:
    """Validation metric(s) against updates: mean over seeds, shaded from the seeds' minimum to maximum."""
    import logging

    logging.getLogger("matplotlib").setLevel(logging.WARNING)  # fairseq leaves the root logger at DEBUG
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    spec = tasks[task]
    by_criterion = results["aggregates"][task]
    fig, axes = plt.subplots(1, len(spec.val_metrics), figsize=(6.5 * len(spec.val_metrics), 4.2), squeeze=False)
    for ax, metric in zip(axes[0], spec.val_metrics):
        for i, (criterion, entry) in enumerate(by_criterion.items()):
            curve = entry["curves"][metric]
            if not curve["updates"]:
                continue
            colour = f"C{i}"
            ax.plot(curve["updates"], curve["mean"], marker="o", color=colour,
                    label=f"{criterion} (n={len(entry['seeds'])})")
            ax.fill_between(curve["updates"], curve["min"], curve["max"], color=colour, alpha=0.15)
        ax.set_xlabel("updates")
        ax.set_ylabel(f"validation {metric}")
        ax.set_title(f"{task}: validation {metric} (mean, min-max over seeds)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------------------------- running
@dataclass(frozen=True)
class RunId:
    task: str
    criterion: str
    seed: int

    def directory(self, work: Path) -> Path:
        return work / self.task / self.criterion / f"seed{self.seed}"


@dataclass(frozen=True)
class Sizes:
    """How long each run of one task trains, and how often it validates."""

    updates: int  # the run's length in updates
    max_epoch: int
    validate_every: int  # 0: the recipe's per-epoch validation
    log_interval: int
    batch_size: int
    from_recipe: bool


def recipe_sizes(task: str) -> Tuple[int, int, int, int, Path]:
    """(rows per epoch, batch size x update freq, max epoch, log interval, training file) of a task's demo EL recipe."""
    path = REPO_ROOT / "configs" / TASKS[task].recipes["el"]
    recipe = load_recipe(path, demo=True)
    args = recipe.get("args") or {}
    train_file = Path(expand(str(recipe["data"][0]), os.environ, recipe.get("env") or {}, str(path)).split(",")[0])
    if not train_file.is_file():
        raise MissingFileError(f"{path}: training data {train_file} not found (make demo writes it)")
    with open(train_file, "rb") as handle:
        rows = sum(chunk.count(b"\n") for chunk in iter(lambda: handle.read(1 << 20), b""))
    batch = int(args.get("batch-size", 1)) * int(args.get("update-freq", 1))
    return rows, batch, int(args.get("max-epoch", 1)), int(args.get("log-interval", 100)), train_file


def plan_sizes(task: str, updates: int, val_points: int) -> Sizes:
    """Run length from ``updates`` (0: the recipe's epochs), validating ``val_points`` times along the way."""
    rows, batch, max_epoch, log_interval, _ = recipe_sizes(task)
    per_epoch = math.ceil(rows / batch)
    if updates <= 0:
        return Sizes(per_epoch * max_epoch, max_epoch, 0, log_interval, batch, True)
    every = max(1, math.ceil(updates / max(val_points, 1)))
    return Sizes(updates, math.ceil(updates / per_epoch), every, max(1, min(log_interval, updates // 4)), batch, False)


def size_arguments(sizes: Sizes, quick: bool) -> List[str]:
    if sizes.from_recipe:
        return []
    args = [f"--max-update={sizes.updates}", f"--total-num-update={sizes.updates}", f"--max-epoch={sizes.max_epoch}",
            f"--validate-interval-updates={sizes.validate_every}", f"--save-interval-updates={sizes.validate_every}",
            "--keep-interval-updates=1", f"--log-interval={sizes.log_interval}"]
    if quick:
        args.append("--max-valid-steps=1")
    return args


# ----------------------------------------------------------------------------------------------- timing
@dataclass(frozen=True)
class Timing:
    """The measured cost of one run of a task on this machine (see "Time estimate" in the module docstring)."""

    fixed_s: float  # start-up, validations, checkpoint saves and the test evaluation
    per_update_s: float  # training seconds per update
    runs: int  # how many finished runs it was measured from

    def run_seconds(self, updates: int) -> float:
        return self.fixed_s + self.per_update_s * updates


def run_timing(record: Mapping[str, Any], log_path: Path) -> Optional[Tuple[float, float]]:
    """(fixed seconds, training seconds per update) of one finished run: its wall times from ``run.json`` and
    fairseq's ``train_wall`` from the epoch lines of its log; None when the log cannot tell."""
    try:
        log = parse_log(log_path)
    except (OSError, LogError):
        return None
    updates = max(log.train, default=0)
    if updates <= 0 or not all(isinstance(record.get(k), (int, float)) for k in ("train_s", "eval_s")):
        return None
    train_wall = sum(epoch.get("train_wall", 0.0) for epoch in log.train.values())
    return max(0.0, record["train_s"] + record["eval_s"] - train_wall), train_wall / updates


def measured_timing(task: str, work: Path, jobs: int, quick: bool) -> Optional[Timing]:
    """A task's cost per run, the median over its runs finished in ``work`` with the same ``jobs`` and ``quick``
    (runs timed under other contention or validation sizes would mislead); None if there is none."""
    fixed: List[float] = []
    per_update: List[float] = []
    for marker in sorted((work / task).glob("*/seed*/run.json")):
        try:
            record = json.loads(marker.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if not isinstance(record, dict) or record.get("jobs") != jobs or record.get("quick") != quick:
            continue
        timing = run_timing(record, marker.parent / "train.log")
        if timing is not None:
            fixed.append(timing[0])
            per_update.append(timing[1])
    if not fixed:
        return None
    return Timing(statistics.median(fixed), statistics.median(per_update), len(fixed))


def runs_to_time(todo: Sequence[RunId], unmeasured: Sequence[str], jobs: int) -> List[RunId]:
    """The runs trained before the estimate: the first left of each unmeasured task, then further ones in turn
    until ``jobs`` of them run at once, so that they are timed sharing the cores as the rest will."""
    queues = [[r for r in todo if r.task == task] for task in unmeasured]
    chosen = [queue.pop(0) for queue in queues if queue]
    while len(chosen) < jobs and any(queues):
        for queue in queues:
            if queue and len(chosen) < jobs:
                chosen.append(queue.pop(0))
    return chosen


def estimate_seconds(runs: Sequence[RunId], timings: Mapping[str, Timing], sizes: Mapping[str, Sizes],
                     jobs: int) -> float:
    """Wall time of ``runs`` at their measured costs, handed in order to ``jobs`` slots (as the thread pool does):
    each run starts when the slot that frees first is free."""
    slots = [0.0] * max(1, jobs)
    for run in runs:
        first_free = slots.index(min(slots))
        slots[first_free] += timings[run.task].run_seconds(sizes[run.task].updates)
    return max(slots)


def describe_estimate(runs: Sequence[RunId], timings: Mapping[str, Optional[Timing]],
                      sizes: Mapping[str, Sizes], jobs: int) -> str:
    """The estimate line printed before the runs left: total minutes and the measured costs behind them."""
    timed = [r for r in runs if timings.get(r.task) is not None]
    parts = []
    for task in dict.fromkeys(r.task for r in runs):
        timing = timings.get(task)
        if timing is None:
            parts.append(f"{task}: not measured (no run could be timed)")
        else:
            parts.append(f"{task}: {timing.per_update_s:.2f} s/update x {sizes[task].updates} + {timing.fixed_s:.0f} s "
                         f"per run (median of {timing.runs} finished run{'s' if timing.runs != 1 else ''})")
    total = estimate_seconds(timed, timings, sizes, jobs) if timed else 0.0
    missing = "" if len(timed) == len(runs) else f" (not counting {len(runs) - len(timed)} unmeasured)"
    return (f"estimated {total / 60:.1f} min for the {len(runs)} run{'s' if len(runs) != 1 else ''} left with "
            f"--jobs {jobs}{missing}; "
            + "; ".join(parts))


def _call(cmd: List[str], log: Path, env: Mapping[str, str]) -> float:
    """Run a command with its output into ``log``; return its wall time, or raise with the log's tail."""
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.time()
    with open(log, "w") as handle:
        code = subprocess.call(cmd, stdout=handle, stderr=subprocess.STDOUT, env=dict(env), cwd=REPO_ROOT)
    if code != 0:
        tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-40:])
        raise RunError(f"{shlex.join(cmd)} failed (exit {code}); the end of {log}:\n{tail}")
    return time.time() - start


def _base_env(threads: Optional[int]) -> Dict[str, str]:
    env = dict(os.environ, DEMO="1", PYTHON=sys.executable, PYTHONUNBUFFERED="1")
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def train_command(run: RunId, directory: Path, sizes: Sizes, quick: bool) -> List[str]:
    """The launcher call of one run: demo recipe, then criterion, sizes, seed, save dir and JSON log (later wins)."""
    criterion = CRITERIA[run.criterion]
    return ["sh", str(REPO_ROOT / "run_scripts" / "launch.sh"), TASKS[run.task].recipes[criterion.recipe],
            *criterion.extra, *size_arguments(sizes, quick), f"--seed={run.seed}", f"--save-dir={directory}",
            "--log-format=json", f"--log-file={directory / 'train.log'}"]


def finished(run: RunId, work: Path, cmd: List[str], restore: Optional[Path],
             check_restore: bool = True) -> Optional[Dict[str, Any]]:
    """The run.json of a run trained and evaluated with this very command and start checkpoint, else None."""
    marker = run.directory(work) / "run.json"
    if not marker.is_file():
        return None
    record = json.loads(marker.read_text())
    same = record.get("train_command") == shlex.join(cmd) and (
        not check_restore or record.get("restore_file") == (str(restore) if restore else None))
    return record if same else None


def execute_run(run: RunId, work: Path, sizes: Sizes, quick: bool, restore: Optional[Path],
                threads: Optional[int], command_line: str, git_rev: str, force: bool,
                check_restore: bool = True, jobs: int = 1) -> Dict[str, Any]:
    """Train, evaluate and tidy one run; a run finished with the same command (and, with ``check_restore``,
    the same start checkpoint) is reused unless ``force``. ``run.json`` also records ``jobs`` (runs at once)
    and ``quick``, which say whether its wall times can time later runs."""
    directory = run.directory(work)
    cmd = train_command(run, directory, sizes, quick)
    done = finished(run, work, cmd, restore, check_restore)
    if done is not None and not force:
        return done
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    env = _base_env(threads)
    env["SAVE_DIR"] = str(directory)
    if restore is not None:
        env["RESTORE_FILE"] = str(restore)
    train_s = _call(cmd, directory / "stdout.log", env)
    spec = TASKS[run.task]
    checkpoint = directory / "checkpoint_best.pt"
    eval_env = dict(_base_env(threads), **spec.eval_env, CHECKPOINT=str(checkpoint),
                    RESULTS_DIR=str(directory / "eval"))
    eval_s = _call(["sh", str(REPO_ROOT / "run_scripts" / spec.eval_script)], directory / "eval.log", eval_env)
    for extra in directory.glob("*.pt"):
        if extra.name != "checkpoint_best.pt":
            extra.unlink()
    record = {"task": run.task, "criterion": run.criterion, "seed": run.seed, "train_command": shlex.join(cmd),
              "restore_file": str(restore) if restore else None, "train_s": train_s, "eval_s": eval_s,
              "compare_command": command_line, "git_rev": git_rev, "jobs": jobs, "quick": quick}
    (directory / "run.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def start_checkpoint(task: str, work: Path, quick: bool, threads: Optional[int]) -> Optional[Path]:
    """The checkpoint every run of ``task`` restores, as its recipe restores a pretrained one; None for a
    task that starts from scratch. ``$RESTORE_FILE`` if set; else the recipe's demo default (what
    ``make demo`` trains), trained first by ``ofa_el.tools.demo`` if missing; with ``quick``, a few updates of
    the start task's EL recipe (itself from its own start), in the work dir."""
    spec = TASKS[task]
    if spec.starts_from is None:
        return None
    if os.environ.get("RESTORE_FILE"):
        path = Path(os.environ["RESTORE_FILE"])
        if not path.is_file():
            raise MissingFileError(f"RESTORE_FILE={path} does not exist")
        return path
    source = spec.starts_from
    env = _base_env(threads)
    if not quick:
        recipe_path = REPO_ROOT / "configs" / spec.recipes["el"]
        recipe = load_recipe(recipe_path, demo=True)
        default = Path(expand("${RESTORE_FILE}", {}, recipe.get("env") or {}, str(recipe_path)))
        if not default.is_file():
            print(f"{task} starts from {default}: training it with `python -m ofa_el.tools.demo --only {source}` ...",
                  flush=True)
            _call([sys.executable, "-m", "ofa_el.tools.demo", "--only", source], work / f"start_{source}.log", env)
        return default
    directory = work / f"start_{source}"
    checkpoint = directory / "checkpoint_best.pt"
    if checkpoint.is_file():
        return checkpoint
    before = start_checkpoint(source, work, quick, threads)
    if before is not None:
        env["RESTORE_FILE"] = str(before)
    print(f"{task} starts from a {source} model (quick): training it for 4 updates ...", flush=True)
    _call(["sh", str(REPO_ROOT / "run_scripts" / "launch.sh"), TASKS[source].recipes["el"],
           *size_arguments(plan_sizes(source, 4, 2), quick), f"--save-dir={directory}"],
          work / f"start_{source}.log", env)
    return checkpoint


# ----------------------------------------------------------------------------------------------- collecting
def collect_run(run: RunId, work: Path) -> Dict[str, Any]:
    """One run's summary from its directory: the log, the evaluation's metrics.json and run.json (wall times)."""
    directory = run.directory(work)
    spec = TASKS[run.task]
    summary = summarize_log(directory / "train.log", spec.metric, spec.val_metrics)
    marker = directory / "run.json"
    record = json.loads(marker.read_text()) if marker.is_file() else {}
    summary.update(task=run.task, criterion=run.criterion, seed=run.seed,
                   test=read_test_metrics(directory / "eval" / "metrics.json", spec),
                   train_s=record.get("train_s"), eval_s=record.get("eval_s"),
                   train_command=record.get("train_command"), compare_command=record.get("compare_command"),
                   git_rev=record.get("git_rev"))
    if record:
        summary["wall_s"] = record["train_s"] + record["eval_s"]
    else:
        summary["wall_s"] = summary["fairseq_wall_s"]
    return summary


def discover_runs(work: Path, tasks: Sequence[str], criteria: Optional[Sequence[str]],
                  seeds: Optional[int]) -> List[RunId]:
    """The runs with a train.log under the work dir (for --from-logs), in the criteria's order."""
    found = []
    for task in tasks:
        base = work / task
        names = [p.name for p in sorted(base.iterdir())] if base.is_dir() else []
        order = list(criteria) if criteria else [c for c in CRITERIA if c in names] + sorted(set(names) - set(CRITERIA))
        for criterion in order:
            seed_dirs = sorted((p for p in (base / criterion).glob("seed*") if p.name[4:].isdigit()),
                               key=lambda p: int(p.name[4:]))
            for seed_dir in seed_dirs:
                seed = int(seed_dir.name[4:])
                if (seeds is None or seed <= seeds) and (seed_dir / "train.log").is_file():
                    found.append(RunId(task, criterion, seed))
    if not found:
        raise LogError(f"{work}: no <task>/<criterion>/seed<s>/train.log for tasks {list(tasks)}")
    return found


def git_revision() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return rev + (" + uncommitted changes" if dirty else "")


def write_results(runs: List[RunId], work: Path, out: Path, meta: Dict[str, Any]) -> Dict[str, Any]:
    """Read every run's log and evaluation, then write compare.json, compare.md and one plot per task."""
    summaries = [collect_run(run, work) for run in runs]
    trained_at = Counter(s["git_rev"] for s in summaries if s.get("git_rev"))
    meta = dict(meta, trained_by=sorted({s["compare_command"] for s in summaries if s.get("compare_command")}),
                trained_at=dict(sorted(trained_at.items())))
    results = {"meta": meta, "runs": summaries, "aggregates": aggregate_runs(summaries)}
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.json").write_text(json.dumps(results, indent=2) + "\n")
    write_markdown(results, out / "compare.md")
    for task in results["aggregates"]:
        plot_task(results, task, out / f"compare_{task}_val.png")
    return results


def print_summary(results: Mapping[str, Any], out: Path) -> None:
    for task, by_criterion in results["aggregates"].items():
        metric = TASKS[task].metric
        for criterion, entry in by_criterion.items():
            print(f"{task:<8} {criterion:<10} best val {metric} {_fmt(entry['best_val'])}  "
                  f"train nll {_fmt(entry['train_nll_loss'])}  wall {_fmt(entry['wall_s'], 0)} s "
                  f"(n={len(entry['seeds'])})")
    print(f"wrote {out / 'compare.json'}, {out / 'compare.md'} and the plots in {out}")


def _names(value: str, known: Iterable[str], option: str) -> List[str]:
    names = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise UsageError(f"{option}: unknown {', '.join(unknown) if unknown else repr(value)}; "
                         f"choose from {', '.join(known)}")
    return names


def _at_least(value: Optional[int], lowest: int, option: str) -> None:
    if value is not None and value < lowest:
        raise UsageError(f"{option} {value}: must be at least {lowest}")


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    """Train what is missing (after a measured time estimate), or only re-read the logs; write the reports.
    Bad input raises UsageError, LogError, RecipeError or MissingFileError (user errors); a failed run RunError."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=None, help="seeds 1..N per criterion (default 3; --quick 1)")
    parser.add_argument("--tasks", default=DEFAULT_TASKS,
                        help=f"comma-separated, of {', '.join(TASKS)} (default {DEFAULT_TASKS})")
    parser.add_argument("--criteria", default=None,
                        help=f"comma-separated, of {', '.join(CRITERIA)} (default all; --quick: ce,el0.75)")
    parser.add_argument("--out", type=Path, default=Path("results"), help="where compare.json/.md and plots go")
    parser.add_argument("--work-dir", type=Path, default=REPO_ROOT / "demo" / "compare",
                        help="runs go to <work-dir>/<task>/<criterion>/seed<s>")
    parser.add_argument("--caption-updates", type=int, default=None,
                        help=f"updates per caption run (default {DEFAULT_UPDATES['caption']}; 0: the recipe's "
                             "epochs; --quick 4)")
    parser.add_argument("--grounding-updates", type=int, default=None,
                        help=f"updates per refcoco/refcocoplus run (default {DEFAULT_UPDATES['grounding']}; "
                             "0: the recipe's epochs; --quick 4)")
    parser.add_argument("--val-points", type=int, default=None, help="validations per run (default 4; --quick 2)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once (each with cores/jobs threads)")
    parser.add_argument("--quick", action="store_true", help="a few updates, one seed, ce and el0.75 (the test)")
    parser.add_argument("--from-logs", action="store_true", help="only re-read the logs under --work-dir")
    parser.add_argument("--force", action="store_true", help="train again runs that already finished")
    parser.add_argument("--yes", action="store_true",
                        help="do not wait 5 s after printing the (measured) estimate for the runs left")
    args = parser.parse_args(argv)

    quick = args.quick
    tasks = _names(args.tasks, TASKS, "--tasks")
    criteria = _names(args.criteria, CRITERIA, "--criteria") if args.criteria else None
    for option, lowest in (("seeds", 1), ("jobs", 1), ("val_points", 1), ("caption_updates", 0),
                           ("grounding_updates", 0)):
        _at_least(getattr(args, option), lowest, "--" + option.replace("_", "-"))
    work = args.work_dir.resolve()
    command_line = shlex.join([Path(sys.executable).name, SCRIPT, *(sys.argv[1:] if argv is None else argv)])
    git_rev = git_revision()
    meta: Dict[str, Any] = {"command": command_line, "git_rev": git_rev, "work_dir": str(work)}

    if args.from_logs:
        runs = discover_runs(work, tasks, criteria, args.seeds)
        results = write_results(runs, work, args.out, meta)
        print_summary(results, args.out)
        return results

    seeds = args.seeds if args.seeds is not None else (1 if quick else 3)
    criteria = criteria or list(QUICK_CRITERIA if quick else CRITERIA)

    def updates_of(task: str) -> int:
        kind = "caption" if task == "caption" else "grounding"
        asked = args.caption_updates if kind == "caption" else args.grounding_updates
        return asked if asked is not None else 4 if quick else DEFAULT_UPDATES[kind]

    val_points = args.val_points if args.val_points is not None else (2 if quick else 4)
    sizes = {task: plan_sizes(task, updates_of(task), val_points) for task in tasks}
    meta["sizes"] = {task: {"updates": s.updates, "validate every": s.validate_every or "epoch",
                            "batch": s.batch_size, "seeds": seeds, "criteria": len(criteria)}
                     for task, s in sizes.items()}
    runs = [RunId(task, criterion, seed) for task in tasks for criterion in criteria for seed in range(1, seeds + 1)]
    todo = [r for r in runs if args.force or finished(
        r, work, train_command(r, r.directory(work), sizes[r.task], quick), None, check_restore=False) is None]
    jobs = args.jobs
    print(f"{len(runs)} runs ({len(todo)} to train): " + "; ".join(
        f"{t} {sizes[t].updates} updates" for t in tasks) + f"; --jobs {jobs}; work dir {work}", flush=True)

    threads = max(1, (os.cpu_count() or 2) // jobs) if jobs > 1 else None
    restore = {task: start_checkpoint(task, work, quick, None) for task in tasks
               if any(r.task == task for r in todo)}
    start = time.time()

    def one(run: RunId) -> Dict[str, Any]:
        # a task with nothing left to train has no start checkpoint looked up: its runs stand as they are
        record = execute_run(run, work, sizes[run.task], quick, restore.get(run.task), threads, command_line,
                             git_rev, args.force, check_restore=run.task in restore, jobs=jobs)
        print(f"  {run.task} {run.criterion} seed {run.seed}: train {record['train_s']:.0f} s, "
              f"eval {record['eval_s']:.0f} s ({time.time() - start:.0f} s so far)", flush=True)
        return record

    todo_tasks = list(dict.fromkeys(r.task for r in todo))
    timings = {task: measured_timing(task, work, jobs, quick) for task in todo_tasks}
    unmeasured = [task for task in todo_tasks if timings[task] is None]
    timed_first = runs_to_time(todo, unmeasured, jobs)
    if timed_first:
        print(f"no finished {', '.join(unmeasured)} run to time with --jobs {jobs}: training "
              f"{len(timed_first)} first, then estimating the rest", flush=True)
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            list(pool.map(one, timed_first))
        timings.update({task: measured_timing(task, work, jobs, quick) for task in unmeasured})
    left = [r for r in todo if r not in timed_first]
    if left:
        print(describe_estimate(left, timings, sizes, jobs), flush=True)
        if not args.yes and not quick:
            time.sleep(5)

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        list(pool.map(one, [r for r in runs if r not in timed_first]))
    results = write_results(runs, work, args.out, meta)
    print_summary(results, args.out)
    return results


if __name__ == "__main__":
    run_cli(main)  # bad input (UsageError, LogError, RecipeError, a missing file): "error: ..." and status 2
