"""Criterion cost, side by side: reference EL, fused EL, fused CE and fairseq's label-smoothed CE.

    python benchmarks/criterion_bench.py            # the full grid (minutes)
    python benchmarks/criterion_bench.py --quick    # a smoke run

Each variant runs forward + backward from logits [N, V] (label smoothing 0.1, log_end 0.75)
in interleaved repetitions, so machine noise hits all variants alike; the table gives the
median time and its ratio to fairseq's CE. Peak memory is measured in a fresh process per
variant and shape (CPU: growth of the peak resident set, VmHWM, over the inputs; CUDA:
``torch.cuda.max_memory_allocated``), in units of one float32 [N, V] buffer; it includes the
gradient of the logits, which every variant must produce.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Callable, Dict, List

import torch

VARIANTS = ("fairseq_ce", "fused_ce", "fused_el", "reference_el")
#: Rough peak buffers per variant, to skip runs that would not fit in memory.
EXPECTED_BUFFERS = {"fairseq_ce": 4, "fused_ce": 2, "fused_el": 2, "reference_el": 9}
EPS, LOG_END = 0.1, 0.75


def make_step(variant: str) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """One forward + backward of ``variant`` on (logits, target)."""
    from ofa_el.losses.fused import fused_token_losses
    from ofa_el.losses.terms import EncouragingBonus, LabelSmoothedCE
    from ofa_el.losses.token_loss import token_losses

    ce_terms = [LabelSmoothedCE(EPS)]
    el_terms = ce_terms + [EncouragingBonus(EPS, LOG_END)]
    if variant == "fairseq_ce":
        from fairseq.criterions.label_smoothed_cross_entropy import label_smoothed_nll_loss

        def step(logits, target):
            lprobs = torch.log_softmax(logits.float(), dim=-1)
            loss, _ = label_smoothed_nll_loss(lprobs, target, EPS, ignore_index=None, reduce=True)
            loss.backward()
    elif variant == "reference_el":
        def step(logits, target):
            lprobs = torch.log_softmax(logits.float(), dim=-1)
            token_losses(lprobs, target, el_terms).loss.backward()
    else:
        terms = el_terms if variant == "fused_el" else ce_terms

        def step(logits, target):
            fused_token_losses(logits, target, terms).loss.backward()
    return step


DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def inputs(n: int, v: int, device: str, seed: int = 0, dtype: str = "float32"):
    """Logits ~ N(0, 2^2) and random targets, made in place (no temporary buffer to inflate the peak)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    logits = torch.empty(n, v).normal_(0.0, 2.0, generator=g).to(device=device, dtype=DTYPES[dtype])
    logits.requires_grad_(True)
    target = torch.randint(0, v, (n,), generator=g).to(device)
    return logits, target


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_variants(n: int, v: int, device: str, repeats: int, variants: List[str], dtype: str) -> Dict[str, float]:
    """Median seconds per forward+backward, variants interleaved within each repetition."""
    logits, target = inputs(n, v, device, dtype=dtype)
    steps = {name: make_step(name) for name in variants}
    times: Dict[str, List[float]] = {name: [] for name in variants}
    for name in variants:  # warm-up
        steps[name](logits, target)
        logits.grad = None
    for _ in range(repeats):
        for name in variants:
            sync(device)
            start = time.perf_counter()
            steps[name](logits, target)
            sync(device)
            times[name].append(time.perf_counter() - start)
            logits.grad = None
    return {name: statistics.median(values) for name, values in times.items()}


def peak_memory_child(variant: str, n: int, v: int, device: str, dtype: str) -> float:
    """In this (fresh) process: extra peak memory of one forward+backward, in [N, V] float32 buffers."""
    logits, target = inputs(n, v, device, dtype=dtype)
    return peak_buffers(make_step(variant), logits, target, device)


def peak_buffers(step: Callable[[torch.Tensor, torch.Tensor], None], logits: torch.Tensor, target: torch.Tensor,
                 device: str) -> float:
    """Extra peak memory of one ``step`` over the inputs already allocated, in float32 [N, V] buffers.

    On CUDA the allocator's own counters are exact in any process; on CPU the resident-set peak is
    only clean in a fresh process (freed blocks may be reused without showing), hence the child."""
    buffer = logits.numel() * 4
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step(logits, target)
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / buffer
    logits.detach().add_(0)  # make sure the inputs are resident before the baseline
    reset_peak_rss()
    base = process_memory("VmRSS")
    step(logits, target)
    return (process_memory("VmHWM") - base) / buffer


def process_memory(field: str) -> int:
    """Bytes of a /proc/self/status memory field. (ru_maxrss would not do: Linux carries the parent's
    resident set into a child's maxrss across fork and exec.)"""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def reset_peak_rss() -> None:
    """Reset VmHWM to the current resident set (Linux >= 4.0), so the peak is this step's."""
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


def peak_memory(variant: str, n: int, v: int, device: str, dtype: str) -> float:
    # A fixed mmap threshold makes glibc return every large freed block to the OS, so the peak
    # resident set tracks live tensors instead of blocks kept for reuse.
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    proc = subprocess.run([sys.executable, __file__, "--child", variant, str(n), str(v), device, dtype],
                          capture_output=True, text=True, check=True, env=env)
    return float(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small shapes, few repetitions")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-gb", type=float, default=12.0, help="skip variants expected to need more memory")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32",
                        help="the logits' dtype (float16/bfloat16: as under --fp16/--bf16 training)")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        variant, n, v, device, dtype = args.child
        print(peak_memory_child(variant, int(n), int(v), device, dtype))
        return
    shapes = [(64, 1024), (256, 2048)] if args.quick else [(n, v) for v in (8192, 59457) for n in (640, 2560, 10240)]
    repeats = args.repeats or (2 if args.quick else 7)
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {args.threads} threads"
    print(f"device: {device_name}; {args.dtype} logits; eps {EPS}, log_end {LOG_END}; "
          f"median of {repeats} interleaved repetitions")
    header = f"{'N':>6} {'V':>6}  " + "  ".join(f"{name:>22}" for name in VARIANTS)
    print(header + "\n" + "-" * len(header))
    results = []
    for n, v in shapes:
        buffer_gb = n * v * 4 / 1e9
        variants = [name for name in VARIANTS if EXPECTED_BUFFERS[name] * buffer_gb <= args.max_gb]
        times = time_variants(n, v, args.device, repeats, variants, args.dtype)
        memory = {name: peak_memory(name, n, v, args.device, args.dtype) for name in variants}
        base = times["fairseq_ce"]
        cells = []
        for name in VARIANTS:
            if name not in variants:
                cells.append(f"{'skipped (memory)':>22}")
                continue
            cells.append(f"{times[name] * 1e3:8.1f}ms {times[name] / base:4.2f}x {memory[name]:4.1f}buf")
        print(f"{n:>6} {v:>6}  " + "  ".join(cells), flush=True)
        results.append({"N": n, "V": v, "seconds": times, "peak_buffers": memory})
    print("cells: median time, ratio to fairseq_ce, extra peak memory in float32 [N, V] buffers")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"device": device_name, "dtype": args.dtype, "repeats": repeats, "results": results}, handle,
                      indent=2)


if __name__ == "__main__":
    main()
