"""GPU self-check: what this project costs on one CUDA device, measured in one run (about 3-8 minutes).

    python benchmarks/gpu_check.py                  # on a CUDA machine (make gpu-check)
    python benchmarks/gpu_check.py --smoke          # the same code paths on CPU at toy sizes (< 1 minute)

Parts, each recorded even if a later one fails (a failing part is saved as {"error": ...} and the
run goes on; the exit status is 1 if any part failed). The JSON (--out) is rewritten after each part.

* environment: the GPU, CUDA/cuDNN/NCCL, torch, fairseq and Python versions, where ofa_el is imported from.
* criterion: forward + backward from logits [2560, 59457] (float32 and float16) of fairseq's CE and this
  project's fused CE, fused EL and reference EL (benchmarks/criterion_bench.py's variants): median time over
  interleaved repetitions, extra peak memory in float32 logit buffers, ratios to fairseq's CE, and the targets
  (fused EL <= 1.10x fairseq CE time and <= 2.2 buffers, on float16 logits).
* end_to_end: the caption recipe (configs/caption/stage1_ce.yaml: ofa_base at 480 px, --fp16, batch 8, random
  weights) on the demo images, CE and EL Trainers interleaved on the same batches (benchmarks/e2e_step_time.py
  --mode steps): median step time, EL/CE (target <= 1.03), peak memory, samples/s, fp16 overflows, loss scale.
* generation: beam-5 captions (caption task) and boxes (refcoco task, bin-restricted decoding) on the demo
  images with the same model size: items/s, non-bin tokens in the boxes (must be 0), and the share of the time
  spent reordering the decoder's incremental state.
* nccl: with two or more GPUs, a two-process NCCL all-reduce and one DistributedDataParallel step.
* train_step: benchmarks/train_step_vs_ofa.py beside OFA's own model (needs ``--ofa-dir``, else skipped):
  ofa_base, the caption recipe at 480 px and the refcoco recipe at 512 px, batch 4, in float16: step time
  and ``torch.cuda.max_memory_allocated`` as ratios ours / OFA's, after the outputs are checked equal.
* precision: the caption recipe's EL Trainer in --fp16 and in --bf16 (as the training entry point means it,
  precision.py), interleaved on the same batches: median step time, peak memory, fp16 overflow steps,
  NaN losses and the loss scale; refused with the GPU's name where it has no bfloat16.

--smoke uses the recipes' demo blocks (ofa_demo at 64 px), small logits, 3 steps and 4 items per task, on CPU
in float32 (precision compares float32 with bfloat16 there, train_step runs ofa_tiny at 64 px); the JSON has
the same keys, with "smoke": true and "device": "cpu", and goes to the temp folder (ofa_el_gpu_check_smoke.json)
unless --out says where: results/gpu_check.json is for GPU runs only.
"""
from __future__ import annotations

import argparse
import copy
import gc
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch

import criterion_bench
import e2e_step_time
import train_step_vs_ofa
from data_loading import build_trainer, ensure_demo_data, quiet
from generation_vs_ofa import UserError as OFADirError
from generation_vs_ofa import check_ofa_dir

REPO_ROOT = Path(__file__).resolve().parents[1]
REFCOCO_RECIPE = REPO_ROOT / "configs" / "refcoco" / "refcoco_el.yaml"
PARTS = ("environment", "criterion", "end_to_end", "generation", "nccl", "train_step", "precision")
#: fused EL against fairseq's CE, on float16 logits (README_EncouragingLoss.md, "Speed and memory").
CRITERION_TARGETS = {"fused_el_time_ratio": 1.10, "fused_el_peak_buffers": 2.2}
END_TO_END_TARGET = 1.03
GIB = 1024 ** 3


@dataclass(frozen=True)
class Sizes:
    """How big each part runs: the GPU check, or the CPU smoke run of the same code."""

    logits: Tuple[int, int]
    dtypes: Tuple[str, ...]
    repeats: int
    demo_recipe: bool
    train_device: str  # e2e_step_time's device names: cpu, cuda, cuda-fp16
    recipe_extra: Tuple[str, ...]
    warmup_steps: int
    step_batches: int
    rounds: int
    items: int
    generation_batch: int
    precision_devices: Tuple[str, str]  # e2e_step_time's device names of the two precisions compared
    precision_batches: int
    train_step_archs: Tuple[str, ...]
    train_step_image_size: Optional[int]  # None: the recipes' own (480 caption, 512 refcoco)
    train_step_batch: int
    beam: int = 5


GPU_SIZES = Sizes(logits=(2560, 59457), dtypes=("float32", "float16"), repeats=20, demo_recipe=False,
                  train_device="cuda-fp16", recipe_extra=("--arch=ofa_base",), warmup_steps=3, step_batches=15,
                  rounds=2, items=32, generation_batch=16, precision_devices=("cuda-fp16", "cuda-bf16"),
                  precision_batches=15, train_step_archs=("ofa_base",), train_step_image_size=None,
                  train_step_batch=4)
SMOKE_SIZES = Sizes(logits=(128, 2048), dtypes=("float32",), repeats=3, demo_recipe=True, train_device="cpu",
                    recipe_extra=("--batch-size=8",), warmup_steps=1, step_batches=3, rounds=1, items=4,
                    generation_batch=4, precision_devices=("cpu", "cpu-bf16"), precision_batches=1,
                    train_step_archs=("ofa_tiny",), train_step_image_size=64, train_step_batch=2)


@dataclass
class Check:
    """What every part reads: where to run, at which size, on which data."""

    smoke: bool
    device: str
    sizes: Sizes
    data_dir: Path
    bpe_dir: Optional[Path]
    scratch: Path
    ofa_dir: Optional[Path] = None

    def sync(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()


class UserError(Exception):
    """Bad input from the command line: reported as ``error: ...`` with exit status 2."""


# ---------------------------------------------------------------- environment
def environment_part(check: Check) -> Dict[str, Any]:
    """Versions and the device; fairseq and ofa_el are reported as missing rather than failing the part."""
    cuda = torch.cuda.is_available()
    props = torch.cuda.get_device_properties(0) if cuda else None
    nccl = None
    if cuda and torch.distributed.is_available() and torch.distributed.is_nccl_available():
        version = torch.cuda.nccl.version()  # a tuple; an int such as 2708 in older torch
        nccl = ".".join(str(part) for part in version) if isinstance(version, tuple) else str(version)
    info: Dict[str, Any] = {
        "gpu_name": props.name if props else None,
        "gpu_total_memory_gib": props.total_memory / GIB if props else None,
        "gpu_capability": f"{props.major}.{props.minor}" if props else None,
        "device_count": torch.cuda.device_count() if cuda else 0,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "nccl": nccl,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    try:
        import fairseq

        info["fairseq"] = fairseq.__version__
    except ImportError as err:
        info["fairseq"] = f"missing ({err})"
    try:
        import ofa_el

        info["ofa_el"] = os.path.dirname(os.path.abspath(ofa_el.__file__))
    except ImportError as err:
        info["ofa_el"] = f"missing ({err})"
    return info


def environment_lines(result: Dict[str, Any]) -> List[str]:
    gpu = (f"{result['gpu_name']}, {result['gpu_total_memory_gib']:.1f} GiB, capability {result['gpu_capability']}"
           if result["gpu_name"] else "no GPU")
    return [f"{gpu}; {result['device_count']} device(s)",
            f"CUDA {result['cuda']}, cuDNN {result['cudnn']}, NCCL {result['nccl']}; torch {result['torch']}, "
            f"fairseq {result['fairseq']}, Python {result['python']}",
            f"ofa_el from {result['ofa_el']}"]


# ---------------------------------------------------------------- criterion
def criterion_part(check: Check) -> Dict[str, Any]:
    """criterion_bench's variants at OFA's vocabulary size: times interleaved, then one peak per variant."""
    n, v = check.sizes.logits
    variants = list(criterion_bench.VARIANTS)
    per_dtype: Dict[str, Any] = {}
    for dtype in check.sizes.dtypes:
        seconds = criterion_bench.time_variants(n, v, check.device, check.sizes.repeats, variants, dtype)
        if check.device == "cpu":  # a resident-set peak is only clean in a fresh process (criterion_bench)
            buffers = {name: criterion_bench.peak_memory(name, n, v, check.device, dtype) for name in variants}
        else:
            logits, target = criterion_bench.inputs(n, v, check.device, dtype=dtype)
            buffers = {}
            for name in variants:
                buffers[name] = criterion_bench.peak_buffers(criterion_bench.make_step(name), logits, target,
                                                             check.device)
                logits.grad = None
            del logits, target
        base = seconds["fairseq_ce"]
        per_dtype[dtype] = {"seconds": seconds, "time_ratio": {name: seconds[name] / base for name in variants},
                            "peak_buffers": buffers}
    # the targets are for half-precision logits (--fp16 training); a float32-only run judges float32
    judged = "float16" if "float16" in per_dtype else check.sizes.dtypes[0]
    time_ratio = per_dtype[judged]["time_ratio"]["fused_el"]
    peak = per_dtype[judged]["peak_buffers"]["fused_el"]
    limit_time, limit_peak = CRITERION_TARGETS["fused_el_time_ratio"], CRITERION_TARGETS["fused_el_peak_buffers"]
    return {
        "N": n, "V": v, "repeats": check.sizes.repeats, "variants": variants,
        "memory_measure": "cuda_max_memory_allocated" if check.device == "cuda" else "cpu_peak_resident_set",
        "dtypes": per_dtype,
        "targets": {
            "dtype": judged,
            "fused_el_time_ratio": {"limit": limit_time, "value": time_ratio, "met": time_ratio <= limit_time},
            "fused_el_peak_buffers": {"limit": limit_peak, "value": peak, "met": peak <= limit_peak},
        },
    }


def criterion_lines(result: Dict[str, Any]) -> List[str]:
    lines = [f"N={result['N']} V={result['V']}, median of {result['repeats']} interleaved repetitions; "
             f"memory: extra peak in float32 [N, V] buffers",
             f"{'dtype':<8} {'variant':<13} {'ms':>9} {'x CE':>6} {'buffers':>8}"]
    for dtype, cells in result["dtypes"].items():
        for name in result["variants"]:
            lines.append(f"{dtype:<8} {name:<13} {cells['seconds'][name] * 1e3:9.2f} "
                         f"{cells['time_ratio'][name]:6.2f} {cells['peak_buffers'][name]:8.2f}")
    targets = result["targets"]
    for key, label in (("fused_el_time_ratio", "fused EL time / fairseq CE"),
                       ("fused_el_peak_buffers", "fused EL peak buffers")):
        target = targets[key]
        lines.append(f"target ({targets['dtype']}): {label} {target['value']:.2f} <= {target['limit']}: "
                     f"{'met' if target['met'] else 'MISSED'}")
    return lines


# ---------------------------------------------------------------- end to end
class StepWatch:
    """Called after each timed ``train_step``: counts the steps fairseq skipped on an fp16 gradient overflow (it
    returns no logging output for them) and NaN/inf losses, and keeps each trainer's CUDA peak."""

    def __init__(self, names: List[str], cuda: bool):
        self.cuda = cuda
        self.overflow = {name: 0 for name in names}
        self.nan_loss = {name: 0 for name in names}
        self.peak = {name: 0.0 for name in names}

    def __call__(self, name: str, output: Optional[Dict[str, Any]]) -> None:
        if output is None:
            self.overflow[name] += 1
        elif not math.isfinite(float(output.get("loss", 0.0))):
            self.nan_loss[name] += 1
        if self.cuda:
            self.peak[name] = max(self.peak[name], torch.cuda.max_memory_allocated() / GIB)
            torch.cuda.reset_peak_memory_stats()


def end_to_end_part(check: Check) -> Dict[str, Any]:
    """e2e_step_time's interleaved CE/EL train_steps on the caption recipe, with memory and fp16 overflows."""
    sizes = check.sizes
    ensure_demo_data(check.data_dir, grounding=True)  # generation's refcoco rows too: one write, not two
    extra = list(sizes.recipe_extra) + [f"--save-dir={check.scratch / 'checkpoints'}"]
    task, cfg, trainers = e2e_step_time.caption_trainers(check.data_dir, sizes.train_device, demo=sizes.demo_recipe,
                                                          extra=extra, bpe_dir=check.bpe_dir)
    if check.device == "cuda":
        for trainer in trainers.values():
            # fairseq resets the CUDA peak-memory counter at the end of every train_step when it has a
            # CUDA environment to log against; without it the peak of each step stays readable here
            trainer.cuda_env = None
    batches = e2e_step_time.preload_batches(task, cfg, sizes.warmup_steps + sizes.step_batches)
    warmup_outputs = e2e_step_time.warm_up(trainers, batches[:sizes.warmup_steps])
    observe = StepWatch(list(trainers), check.device == "cuda")
    overflow, nan_loss, peak = observe.overflow, observe.nan_loss, observe.peak
    warmup_overflow = {name: sum(output is None for key, output in warmup_outputs if key == name)
                       for name in trainers}

    if check.device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        resident = torch.cuda.memory_allocated() / GIB
    else:
        resident = criterion_bench.process_memory("VmRSS") / GIB
    times = e2e_step_time.interleaved_train_steps(trainers, batches[sizes.warmup_steps:], sizes.rounds,
                                                  sizes.train_device, after_step=observe)
    if check.device != "cuda":
        peak = {name: criterion_bench.process_memory("VmHWM") / GIB for name in trainers}
    median = {name: statistics.median(values) for name, values in times.items()}
    samples = sum(int(batch["nsentences"]) for batch in batches[sizes.warmup_steps:]) * sizes.rounds
    ratio = median["el"] / median["ce"]
    result = {
        "recipe": str(e2e_step_time.CAPTION_RECIPE.relative_to(REPO_ROOT)) + (" (demo block)" if sizes.demo_recipe
                                                                              else ""),
        "arch": cfg.model.arch, "patch_image_size": cfg.task.patch_image_size, "batch_size": cfg.dataset.batch_size,
        "vocabulary": len(task.target_dictionary), "fp16": bool(cfg.common.fp16),
        "warmup_steps": sizes.warmup_steps, "steps": len(times["ce"]),
        "seconds_per_step": median,
        "el_ce_ratio": ratio,
        "paired_el_ce_ratio": statistics.median(e / c for c, e in zip(times["ce"], times["el"])),
        "target_el_ce_ratio": END_TO_END_TARGET, "target_met": ratio <= END_TO_END_TARGET,
        "samples_per_s": {name: samples / sum(values) for name, values in times.items()},
        "peak_memory_gib": peak, "resident_memory_gib": resident,
        "memory_measure": "cuda_max_memory_allocated" if check.device == "cuda" else "cpu_peak_resident_set",
        "loss_scale": {name: _loss_scale(trainer) for name, trainer in trainers.items()},
        "overflow_steps": overflow, "nan_loss_steps": nan_loss, "warmup_overflow_steps": warmup_overflow,
        "overflowed": any(overflow.values()) or any(nan_loss.values()) or any(warmup_overflow.values()),
    }
    return result


def _loss_scale(trainer) -> Optional[float]:
    """fairseq's fp16 loss scale after the run; None without --fp16 (no scaler)."""
    scaler = getattr(trainer.optimizer, "scaler", None)
    return float(scaler.loss_scale) if scaler is not None else None


def end_to_end_lines(result: Dict[str, Any]) -> List[str]:
    seconds, rate = result["seconds_per_step"], result["samples_per_s"]
    return [f"{result['recipe']}: {result['arch']} at {result['patch_image_size']} px, batch {result['batch_size']}, "
            f"vocabulary {result['vocabulary']}, fp16 {result['fp16']}; {result['steps']} interleaved steps each",
            f"s/step CE {seconds['ce']:.4f}, EL {seconds['el']:.4f}; EL/CE {result['el_ce_ratio']:.3f} "
            f"(per batch {result['paired_el_ce_ratio']:.3f}; target <= {result['target_el_ce_ratio']}: "
            f"{'met' if result['target_met'] else 'MISSED'}); samples/s CE {rate['ce']:.1f}, EL {rate['el']:.1f}",
            f"peak memory ({result['memory_measure']}) CE {result['peak_memory_gib']['ce']:.2f} GiB, "
            f"EL {result['peak_memory_gib']['el']:.2f} GiB; " + "; ".join(
                f"{name.upper()}: loss scale {result['loss_scale'][name]}, {result['overflow_steps'][name]} overflowed "
                f"steps, {result['nan_loss_steps'][name]} NaN losses, {result['warmup_overflow_steps'][name]} "
                f"overflows in warm-up" for name in ("ce", "el"))]


# ---------------------------------------------------------------- generation
class ReorderTimer:
    """Time spent in a decoder's ``reorder_incremental_state_scripting`` (what beam search calls every step
    to follow its reordered hypotheses), synchronised so queued device work is charged where it belongs."""

    def __init__(self, decoder: torch.nn.Module, sync: Callable[[], None]):
        self.decoder, self.sync = decoder, sync
        self.seconds, self.calls = 0.0, 0

    @contextmanager
    def active(self) -> Iterator["ReorderTimer"]:
        original = self.decoder.reorder_incremental_state_scripting

        def timed(incremental_state, new_order):
            self.sync()
            start = time.perf_counter()
            result = original(incremental_state, new_order)
            self.sync()
            self.seconds += time.perf_counter() - start
            self.calls += 1
            return result

        self.decoder.reorder_incremental_state_scripting = timed  # on the instance: the class is untouched
        try:
            yield self
        finally:
            del self.decoder.reorder_incremental_state_scripting


def generation_part(check: Check) -> Dict[str, Any]:
    """Beam search on both tasks; the bin restriction of refcoco is checked on every emitted token."""
    ensure_demo_data(check.data_dir, grounding=True)
    return {
        "beam": check.sizes.beam, "items": check.sizes.items, "batch_size": check.sizes.generation_batch,
        "dtype": "float16" if check.sizes.train_device == "cuda-fp16" else "float32",
        "caption": generate(check, e2e_step_time.CAPTION_RECIPE, boxes=False),
        "refcoco": generate(check, REFCOCO_RECIPE, boxes=True),
    }


def generate(check: Check, recipe: Path, boxes: bool) -> Dict[str, Any]:
    from fairseq import tasks, utils

    from ofa_el.data.dictionary import bin_token_range

    sizes = check.sizes
    extra = list(sizes.recipe_extra) + ["--distributed-world-size=1", f"--save-dir={check.scratch / 'checkpoints'}"]
    cfg = e2e_step_time.recipe_config(recipe, check.data_dir, demo=sizes.demo_recipe, extra=extra,
                                      bpe_dir=check.bpe_dir)
    task = tasks.setup_task(cfg.task)
    task.load_dataset("valid")
    dataset = task.dataset("valid")
    if len(dataset) < sizes.items:
        raise ValueError(f"{dataset.tsv.path}: {len(dataset)} rows, {sizes.items} needed for generation")
    torch.manual_seed(cfg.common.seed)
    model = task.build_model(cfg.model)
    half = sizes.train_device == "cuda-fp16"
    model = (model.half() if half else model).to(check.device).eval()
    args = task.generation_args()
    args.beam = sizes.beam
    if boxes:
        generator, decoding_model = task.box_generator(model, args)
    else:
        generator, decoding_model = task.build_generator([model], args), model
    samples = []
    for start in range(0, sizes.items, sizes.generation_batch):
        sample = dataset.collater([dataset[i] for i in range(start, min(start + sizes.generation_batch, sizes.items))])
        if check.device == "cuda":
            sample = utils.move_to_cuda(sample)
        if half:
            sample = utils.apply_to_sample(lambda t: t.half() if t.is_floating_point() else t, sample)
        samples.append(sample)
    task.hypotheses(generator, decoding_model, samples[0])  # warm-up: kernels, cuBLAS handles
    timer = ReorderTimer(model.decoder, check.sync)
    hypotheses: List[List[int]] = []
    elapsed = 0.0
    with timer.active():
        for sample in samples:
            check.sync()
            start = time.perf_counter()
            hypotheses += task.hypotheses(generator, decoding_model, sample)
            check.sync()
            elapsed += time.perf_counter() - start
    result = {"recipe": str(recipe.relative_to(REPO_ROOT)) + (" (demo block)" if sizes.demo_recipe else ""),
              "arch": cfg.model.arch, "patch_image_size": cfg.task.patch_image_size,
              "items": len(hypotheses), "generate_s": elapsed, "items_per_s": len(hypotheses) / elapsed,
              "reorder_s": timer.seconds, "reorder_calls": timer.calls, "reorder_share": timer.seconds / elapsed,
              "mean_tokens": statistics.mean(len(tokens) for tokens in hypotheses)}
    if boxes:
        first, end = bin_token_range(task.dictionary, task.cfg.num_bins)
        result["box_tokens"] = sum(len(tokens) for tokens in hypotheses)
        result["non_bin_tokens"] = sum(not first <= token < end for tokens in hypotheses for token in tokens)
    return result


def generation_lines(result: Dict[str, Any]) -> List[str]:
    lines = []
    for name in ("caption", "refcoco"):
        cell = result[name]
        line = (f"{name}: {cell['arch']} at {cell['patch_image_size']} px, beam {result['beam']}, {result['dtype']}: "
                f"{cell['items']} items in {cell['generate_s']:.2f} s ({cell['items_per_s']:.1f}/s); reorder "
                f"{cell['reorder_s']:.3f} s in {cell['reorder_calls']} calls = {100 * cell['reorder_share']:.1f}%")
        if "non_bin_tokens" in cell:
            line += f"; non-bin tokens {cell['non_bin_tokens']} of {cell['box_tokens']}"
        lines.append(line)
    return lines


# ---------------------------------------------------------------- two processes
def two_process_check(backend: str, elements: int = 1 << 26, timeout_s: float = 180.0) -> Dict[str, Any]:
    """An all-reduce and one DistributedDataParallel step in two spawned processes (``nccl``: one GPU
    each; ``gloo``: on CPU, to test this code where there is no second GPU)."""
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        context = mp.spawn(_two_process_worker, args=(2, backend, elements, tmp), nprocs=2, join=False)
        deadline = time.monotonic() + timeout_s
        while not context.join(timeout=1.0):
            if time.monotonic() > deadline:
                for process in context.processes:
                    process.kill()
                raise TimeoutError(f"the two {backend} processes did not finish in {timeout_s:.0f} s")
        ranks = [json.loads((Path(tmp) / f"rank{rank}.json").read_text()) for rank in range(2)]
    return {"backend": backend, "world_size": 2, "allreduce_bytes": elements * 4,
            "allreduce_correct": all(rank["allreduce_correct"] for rank in ranks),
            "allreduce_s": max(rank["allreduce_s"] for rank in ranks),
            "bus_bandwidth_gb_s": min(rank["bus_bandwidth_gb_s"] for rank in ranks),
            "ddp_max_param_difference": max(rank["ddp_max_param_difference"] for rank in ranks),
            "ddp_max_grad_error": max(rank["ddp_max_grad_error"] for rank in ranks)}


def _two_process_worker(rank: int, world_size: int, backend: str, elements: int, tmp: str) -> None:
    import torch.distributed as dist

    if backend == "nccl":
        torch.cuda.set_device(rank)
        device = torch.device("cuda", rank)
    else:
        device = torch.device("cpu")
    dist.init_process_group(backend, init_method=f"file://{tmp}/rendezvous", rank=rank, world_size=world_size)
    sync = torch.cuda.synchronize if backend == "nccl" else (lambda: None)
    try:
        # all-reduce: every rank sends rank + 1, so every element must sum to 1 + 2 + ... + world_size
        values = torch.full((elements,), float(rank + 1), device=device)
        dist.all_reduce(values)
        correct = bool((values == world_size * (world_size + 1) / 2).all())
        times = []
        for _ in range(5):
            sync()
            dist.barrier()
            start = time.perf_counter()
            dist.all_reduce(values)
            sync()
            times.append(time.perf_counter() - start)
        seconds = statistics.median(times)
        bus_bandwidth = elements * 4 / seconds * 2 * (world_size - 1) / world_size / 1e9
        # one DDP step: each rank's gradient must be the mean of the ranks' local gradients, and the
        # weights identical everywhere after the optimizer step
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.Tanh(), torch.nn.Linear(64, 1)).to(device)
        reference = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.Tanh(), torch.nn.Linear(64, 1)).to(device)
        reference.load_state_dict(model.state_dict())
        ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[rank] if backend == "nccl" else None)
        generator = torch.Generator().manual_seed(100 + rank)
        inputs = torch.randn(16, 32, generator=generator).to(device)
        ddp(inputs).pow(2).mean().backward()
        reference(inputs).pow(2).mean().backward()
        local = torch.cat([p.grad.flatten() for p in reference.parameters()])
        dist.all_reduce(local)
        synced = torch.cat([p.grad.flatten() for p in model.parameters()])
        grad_error = float((synced - local / world_size).abs().max())
        torch.optim.SGD(model.parameters(), lr=0.1).step()
        weights = torch.cat([p.detach().flatten() for p in model.parameters()])
        gathered = [torch.empty_like(weights) for _ in range(world_size)]
        dist.all_gather(gathered, weights)
        difference = max(float((other - gathered[0]).abs().max()) for other in gathered)
        Path(tmp, f"rank{rank}.json").write_text(json.dumps({
            "allreduce_correct": correct, "allreduce_s": seconds, "bus_bandwidth_gb_s": bus_bandwidth,
            "ddp_max_param_difference": difference, "ddp_max_grad_error": grad_error}))
    finally:
        dist.destroy_process_group()


def nccl_part(check: Check) -> Dict[str, Any]:
    if check.smoke:
        return {"skipped": "smoke run on CPU: NCCL needs 2 GPUs"}
    count = torch.cuda.device_count()
    if count < 2:
        return {"skipped": f"needs 2 GPUs, found {count}"}
    return two_process_check("nccl")


def nccl_lines(result: Dict[str, Any]) -> List[str]:
    if "skipped" in result:
        return [f"skipped: {result['skipped']}"]
    return [f"{result['backend']} all-reduce of {result['allreduce_bytes'] / 2 ** 20:.0f} MiB: correct "
            f"{result['allreduce_correct']}, {result['allreduce_s'] * 1e3:.2f} ms, bus bandwidth "
            f"{result['bus_bandwidth_gb_s']:.1f} GB/s; DDP step: gradient error {result['ddp_max_grad_error']:.2e}, "
            f"weights differ by {result['ddp_max_param_difference']:.2e}"]


# ---------------------------------------------------------------- train step beside OFA's model
def train_step_part(check: Check) -> Dict[str, Any]:
    """train_step_vs_ofa's configurations on this device: OFA's model (from --ofa-dir) and ours, same weights."""
    if check.ofa_dir is None:
        return {"skipped": "needs --ofa-dir (a checkout of OFA's repository) to build OFA's model"}
    sizes = check.sizes
    options = argparse.Namespace(ofa_dir=check.ofa_dir, rounds=max(3, sizes.rounds), memory_rounds=1,
                                 threads=torch.get_num_threads(), device=check.device,
                                 dtype="float16" if check.device == "cuda" else "float32",
                                 image_size=sizes.train_step_image_size)
    rows = [train_step_vs_ofa.run_configuration(options, recipe, arch, sizes.train_step_batch)
            for recipe in train_step_vs_ofa.RECIPES for arch in sizes.train_step_archs]
    return {"dtype": options.dtype, "rounds": options.rounds,
            "memory_measure": "cuda_max_memory_allocated" if check.device == "cuda" else "cpu_peak_rss_above_start",
            "configurations": rows}


def train_step_lines(result: Dict[str, Any]) -> List[str]:
    if "skipped" in result:
        return [f"skipped: {result['skipped']}"]
    return ([f"{result['dtype']}, medians of {result['rounds']} interleaved rounds; ratios ours / OFA's",
             train_step_vs_ofa.HEADER]
            + [train_step_vs_ofa.format_row(row) for row in result["configurations"]])


# ---------------------------------------------------------------- fp16 against bf16
def precision_part(check: Check) -> Dict[str, Any]:
    """The caption recipe's EL Trainer in each of the two precisions, interleaved on the same batches."""
    from ofa_el.precision import check_bf16_device

    sizes = check.sizes
    if check.device == "cuda":
        check_bf16_device(torch.cuda.device_count(), torch.cuda.get_device_capability, torch.cuda.get_device_name)
    ensure_demo_data(check.data_dir, grounding=True)
    extra = list(sizes.recipe_extra) + [f"--save-dir={check.scratch / 'checkpoints'}"]
    first, second = sizes.precision_devices
    task, cfg, built = e2e_step_time.caption_trainers(check.data_dir, first, demo=sizes.demo_recipe, extra=extra,
                                                      bpe_dir=check.bpe_dir, criteria=("el",))
    other = copy.deepcopy(cfg)
    e2e_step_time.place(other, second)
    torch.manual_seed(cfg.common.seed)  # the same initial weights
    trainers = {first: built["el"], second: build_trainer(task, other)}
    if check.device == "cuda":
        for trainer in trainers.values():
            trainer.cuda_env = None  # keep fairseq from resetting the peak counter (see end_to_end)
    batches = e2e_step_time.preload_batches(task, cfg, sizes.warmup_steps + sizes.precision_batches)
    warmup_outputs = e2e_step_time.warm_up(trainers, batches[:sizes.warmup_steps])
    observe = StepWatch(list(trainers), check.device == "cuda")
    if check.device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = e2e_step_time.interleaved_train_steps(trainers, batches[sizes.warmup_steps:], sizes.rounds, first,
                                                  after_step=observe)
    median = {name: statistics.median(values) for name, values in times.items()}
    return {
        "recipe": str(e2e_step_time.CAPTION_RECIPE.relative_to(REPO_ROOT)) + (" (demo block)" if sizes.demo_recipe
                                                                              else ""),
        "arch": cfg.model.arch, "patch_image_size": cfg.task.patch_image_size, "batch_size": cfg.dataset.batch_size,
        "criterion": "adjust_label_smoothed_encouraging_loss", "precisions": list(sizes.precision_devices),
        "steps": len(times[first]), "seconds_per_step": median,
        "time_ratio": median[second] / median[first],
        "paired_time_ratio": statistics.median(b / a for a, b in zip(times[first], times[second])),
        "peak_memory_gib": observe.peak if check.device == "cuda" else None,
        "memory_measure": "cuda_max_memory_allocated (per step, both models resident)" if check.device == "cuda"
        else "not measured on CPU (one process holds both)",
        "loss_scale": {name: _loss_scale(trainer) for name, trainer in trainers.items()},
        "overflow_steps": observe.overflow, "nan_loss_steps": observe.nan_loss,
        "warmup_overflow_steps": {name: sum(output is None for key, output in warmup_outputs if key == name)
                                  for name in trainers},
    }


def precision_lines(result: Dict[str, Any]) -> List[str]:
    first, second = result["precisions"]
    seconds = result["seconds_per_step"]
    lines = [f"{result['recipe']}: {result['arch']} at {result['patch_image_size']} px, batch {result['batch_size']}, "
             f"EL; {result['steps']} interleaved steps each",
             f"s/step {first} {seconds[first]:.4f}, {second} {seconds[second]:.4f}; {second}/{first} "
             f"{result['time_ratio']:.3f} (per batch {result['paired_time_ratio']:.3f})"]
    for name in result["precisions"]:
        memory = result["peak_memory_gib"]
        lines.append(f"{name}: peak {'%.2f GiB' % memory[name] if memory else 'n/a'}, loss scale "
                     f"{result['loss_scale'][name]}, {result['overflow_steps'][name]} overflowed steps, "
                     f"{result['nan_loss_steps'][name]} NaN losses, {result['warmup_overflow_steps'][name]} overflows "
                     "in warm-up")
    return lines


# ---------------------------------------------------------------- the run
RUNNERS: Dict[str, Tuple[Callable[[Check], Dict[str, Any]], Callable[[Dict[str, Any]], List[str]]]] = {
    "environment": (environment_part, environment_lines),
    "criterion": (criterion_part, criterion_lines),
    "end_to_end": (end_to_end_part, end_to_end_lines),
    "generation": (generation_part, generation_lines),
    "nccl": (nccl_part, nccl_lines),
    "train_step": (train_step_part, train_step_lines),
    "precision": (precision_part, precision_lines),
}


def finite_json(value: Any) -> Any:
    """JSON has no NaN or infinity: those become null (a NaN loss is still counted where it matters)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: finite_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(item) for item in value]
    return value


def write_report(report: Dict[str, Any], out: Path) -> None:
    """Replace the JSON in one step, so a run killed mid-write leaves the previous parts readable."""
    partial = out.with_name(out.name + ".partial")
    partial.write_text(json.dumps(finite_json(report), indent=2, allow_nan=False) + "\n")
    os.replace(partial, out)


def summary(name: str, report: Dict[str, Any]) -> str:
    """One cell of the closing table."""
    result = report.get(name, {})
    if report["status"].get(name) != "ok":
        return result.get("error") or result.get("skipped") or ""
    if name == "environment":
        return f"{result['gpu_name'] or 'CPU'}, torch {result['torch']}, CUDA {result['cuda']}"
    if name == "criterion":
        targets = result["targets"]
        return (f"{targets['dtype']}: fused EL {targets['fused_el_time_ratio']['value']:.2f}x CE time, "
                f"{targets['fused_el_peak_buffers']['value']:.2f} buffers")
    if name == "end_to_end":
        return (f"EL/CE {result['el_ce_ratio']:.3f}, {result['samples_per_s']['el']:.1f} samples/s (EL), "
                f"overflowed {result['overflowed']}")
    if name == "generation":
        return (f"{result['caption']['items_per_s']:.1f} captions/s, {result['refcoco']['items_per_s']:.1f} boxes/s, "
                f"non-bin {result['refcoco']['non_bin_tokens']}")
    if name == "train_step":
        return "; ".join(f"{row['recipe']} {row['arch']}: time {row['time_ratio']:.2f}x, memory "
                         f"{row['memory_ratio']:.2f}x OFA's" for row in result["configurations"])
    if name == "precision":
        first, second = result["precisions"]
        return (f"{second}/{first} time {result['time_ratio']:.3f}; overflowed steps "
                + ", ".join(f"{key} {value}" for key, value in result["overflow_steps"].items()))
    return f"all-reduce {result['bus_bandwidth_gb_s']:.1f} GB/s"


def run(check: Check, parts: Sequence[str], out: Path, fail_part: Optional[str]) -> int:
    """Every part in turn, the JSON rewritten after each; 1 if any part failed."""
    started = time.perf_counter()
    report: Dict[str, Any] = {"smoke": check.smoke, "device": check.device,
                              "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                              "status": {}, "part_seconds": {}, "failed_parts": []}
    for name in parts:
        part, lines = RUNNERS[name]
        print(f"== {name}", flush=True)
        part_start = time.perf_counter()
        try:
            if name == fail_part:
                raise RuntimeError(f"failure injected by --fail-part {name}")
            result = part(check)
            status = "skipped" if "skipped" in result else "ok"
        except (Exception, SystemExit) as err:  # a failed part must not stop the others
            result = {"error": f"{type(err).__name__}: {err}"}
            status = "error"
            report["failed_parts"].append(name)
            traceback.print_exc()
        finally:
            gc.collect()
            if check.device == "cuda":
                torch.cuda.empty_cache()
        report[name] = result
        report["status"][name] = status
        report["part_seconds"][name] = time.perf_counter() - part_start
        report["total_seconds"] = time.perf_counter() - started
        write_report(report, out)
        for line in (lines(result) if status != "error" else [result["error"]]):
            print("  " + line, flush=True)
    where = report.get("environment", {}).get("gpu_name") or check.device
    print(f"\ngpu_check on {where}{' (smoke run)' if check.smoke else ''}: {report['total_seconds']:.0f} s; {out}")
    print(f"{'part':<12} {'status':<8} {'seconds':>8}  summary")
    for name in parts:
        print(f"{name:<12} {report['status'][name]:<8} {report['part_seconds'][name]:8.1f}  {summary(name, report)}")
    return 1 if report["failed_parts"] else 0


#: Where a GPU run's report belongs, and where a smoke run's goes instead (the CPU numbers are no GPU results).
GPU_REPORT = REPO_ROOT / "results" / "gpu_check.json"
SMOKE_REPORT = Path(tempfile.gettempdir()) / "ofa_el_gpu_check_smoke.json"


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="run every part on CPU at toy sizes (under a minute)")
    parser.add_argument("--out", default=None,
                        help=f"the JSON report (default: {GPU_REPORT.relative_to(REPO_ROOT)}; with --smoke "
                             f"{SMOKE_REPORT}, so a smoke run never replaces a GPU run's results)")
    parser.add_argument("--data-dir", default=str(REPO_ROOT / "demo" / "data"),
                        help="the demo data (written there if missing)")
    parser.add_argument("--bpe-dir", default=None,
                        help="a GPT-2 BPE folder (encoder.json, vocab.bpe, dict.txt; default: the demo data's); "
                             "OFA's utils/BPE gives the real 59457-entry vocabulary")
    parser.add_argument("--ofa-dir", default=None,
                        help="a checkout of OFA's repository: the train_step part builds OFA's model from it")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="run only these parts")
    parser.add_argument("--fail-part", choices=PARTS, default=None, help=argparse.SUPPRESS)  # tests: a part that raises
    return parser.parse_args(argv)


def prepare(args: argparse.Namespace) -> Tuple[Path, Optional[Path]]:
    """Check the options a run cannot start without; returns (out, bpe_dir)."""
    if not args.smoke and not torch.cuda.is_available():
        raise UserError(f"no CUDA device visible to torch {torch.__version__} (built for CUDA {torch.version.cuda}); "
                        f"use --smoke to run the same code on CPU")
    out = Path(args.out) if args.out else (SMOKE_REPORT if args.smoke else GPU_REPORT)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"--out {out}: cannot create its folder ({err.strerror})") from None
    if not os.access(out.parent, os.W_OK):
        raise UserError(f"--out {out}: its folder is not writable")
    if args.ofa_dir:
        try:
            check_ofa_dir(Path(args.ofa_dir))
        except OFADirError as err:
            raise UserError(str(err)) from None
    bpe_dir = Path(args.bpe_dir) if args.bpe_dir else None
    if bpe_dir is not None:
        missing = [name for name in ("encoder.json", "vocab.bpe", "dict.txt") if not (bpe_dir / name).is_file()]
        if missing:
            raise UserError(f"--bpe-dir {bpe_dir}: missing {', '.join(missing)}")
    return out, bpe_dir


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    try:
        out, bpe_dir = prepare(args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    quiet()
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as scratch:
        check = Check(smoke=args.smoke, device="cpu" if args.smoke else "cuda",
                      sizes=SMOKE_SIZES if args.smoke else GPU_SIZES, data_dir=Path(args.data_dir).resolve(),
                      bpe_dir=bpe_dir, scratch=Path(scratch),
                      ofa_dir=Path(args.ofa_dir).resolve() if args.ofa_dir else None)
        return run(check, [name for name in PARTS if name in args.parts], out, args.fail_part)


if __name__ == "__main__":
    sys.exit(main())
