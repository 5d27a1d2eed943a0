"""Train-step time and peak memory of this plugin's OFA model beside OFA's own model code, same weights.

    python benchmarks/train_step_vs_ofa.py --ofa-dir /path/to/OFA [--archs ofa_tiny ofa_base]
        [--recipes caption refcoco] [--batches 2 4] [--rounds 5] [--threads 2]
        [--device cpu|cuda] [--dtype float32|float16|bfloat16] [--json out.json]

One train step is forward + backward + optimizer step (AdamW, the recipes' weight decay) of the model alone,
the loss a cross-entropy over the logits, on one fixed batch: the caption recipe's input at 480 px (the
caption prompt, 20 target tokens) or the refcoco recipe's at 512 px (a prompt around referring expressions
of different lengths, so the source is padded; 4 location bins + eos). Each configuration (recipe x arch x
batch) builds:

* ``ofa``: OFA's model, built by OFA's code from ``--ofa-dir`` with the recipe's model flags (as in
  benchmarks/generation_vs_ofa.py, whose loaders this script uses; no OFA code is copied here);
* ``ours``: ``ofa_el``'s model from the same arguments and dictionary, OFA's weights loaded strictly.

Before timing, both run the batch in eval mode (no dropout) in float32: logits must agree within
``LOGIT_TOLERANCE`` and every parameter's gradient within ``GRAD_TOLERANCE`` of its largest entry (or of
``GRAD_FLOOR`` times the model's largest gradient entry, if that is larger). Then
interleaved rounds in train mode (dropout, drop-path, BatchNorm statistics), the order flipped every round,
after one untimed step each; the median step time and the median of the per-round ratios are reported.

Peak memory is measured in a fresh process per model (``--memory-rounds`` of them, alternating), since a
process's peak resident set only grows: that process builds one model alone, takes 2 train steps on the
same batch, and reports its peak resident set (``VmHWM``) minus its resident set before the model was built
(CPU), or ``torch.cuda.max_memory_allocated`` (CUDA). Both therefore include the weights, gradients and
optimizer state, which the two models share in size: the ratio understates the saving on activations.

``--json FILE`` writes every configuration with its ``time_ratio`` and ``memory_ratio`` (ours / OFA's), the
medians, the per-round times and the equivalence check, rewritten after each configuration.
"""
import argparse
import copy
import gc
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

from criterion_bench import process_memory
from generation_vs_ofa import (ARCHS, CAPTION_MODEL_FLAGS, PROMPT, SEED, ArgumentParser, build_ofa, build_ours,
                               forget_ofa_registrations, ofa_args_and_task, paths_usable, positive_int)

#: The model flags of configs/refcoco/refcoco_ce.yaml: the caption recipe's but drop-path 0.2, embeddings trained.
REFCOCO_MODEL_FLAGS = [flag.replace("drop-path-rate=0.1", "drop-path-rate=0.2") for flag in CAPTION_MODEL_FLAGS
                       if not flag.startswith(("--freeze-encoder-embedding", "--freeze-decoder-embedding"))]
RECIPES = {"caption": (CAPTION_MODEL_FLAGS, 480), "refcoco": (REFCOCO_MODEL_FLAGS, 512)}
REFCOCO_PROMPT = ' which region does the text " {} " describe?'  # OFA's refcoco prompt
REFERRING_EXPRESSIONS = ("man on the left", "the small dog in the back next to the red car", "blue cup",
                         "woman holding an umbrella")
CAPTION_TARGET_TOKENS = 20
LOGIT_TOLERANCE = 1e-4  # the equivalence tests' tolerance (tests/test_ofa_model.py)
#: Relative to each gradient's largest entry. Loose: in a randomly initialised ofa_base at 480 px, float32's own
#: error in the ResNet's weight gradients is ~3e-3 of float64's (sums over 4 x 240 x 240 positions, 33 blocks).
GRAD_TOLERANCE = 1e-2
GRAD_FLOOR = 1e-3
MEMORY_STEPS = 2
LEARNING_RATE = 1e-5
WEIGHT_DECAY = 0.01
MODEL_NAMES = ("ofa", "ours")
#: What a child process runs: one configuration's equivalence check and timing, or one model's peak memory.
CHILD_PARTS = ("time",) + MODEL_NAMES
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
CHILD_MARK = "train_step_vs_ofa result: "


def parse_command_line(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ofa-dir", required=True, type=Path, help="a checkout of OFA's repository")
    parser.add_argument("--archs", nargs="+", default=["ofa_tiny", "ofa_base"], choices=ARCHS)
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--batches", nargs="+", type=positive_int, default=[2, 4], help="samples per step")
    parser.add_argument("--rounds", type=positive_int, default=5, help="timed rounds; medians are reported")
    parser.add_argument("--memory-rounds", type=positive_int, default=1,
                        help="fresh processes per model for the peak memory; the median is reported")
    parser.add_argument("--threads", type=positive_int, default=2, help="torch CPU threads")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--dtype", choices=list(DTYPES), default="float32",
                        help="the timed steps' dtype (the model cast to it; float16/bfloat16 on CUDA only)")
    parser.add_argument("--image-size", type=positive_int, default=None,
                        help="override the recipes' patch image sizes (480 caption, 512 refcoco); a multiple of 16")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--child", choices=CHILD_PARTS, default=None, help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    if options.image_size is not None and options.image_size % 16:
        parser.error(f"--image-size {options.image_size} is not a multiple of 16 (OFA's ResNet stride)")
    if options.device == "cpu" and options.dtype == "float16":
        parser.error("--dtype float16 needs --device cuda (fairseq's --fp16 is a GPU mode)")
    if options.device == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device cuda: no CUDA device visible to torch {torch.__version__}")
    return options


def image_size(options: argparse.Namespace, recipe: str) -> int:
    return options.image_size or RECIPES[recipe][1]


def gpt2_bpe(ofa_dir: Path):
    """OFA's GPT-2 BPE (what its task ``ofa`` builds with its model)."""
    from fairseq.data import encoders
    from omegaconf import DictConfig

    return encoders.build_bpe(DictConfig({"_name": "gpt2", "gpt2_encoder_json": str(ofa_dir / "utils/BPE/encoder.json"),
                                          "gpt2_vocab_bpe": str(ofa_dir / "utils/BPE/vocab.bpe")}))


def make_batch(task, recipe: str, batch: int, size: int) -> Dict[str, object]:
    """The recipe's source and target shapes, random images; refcoco's sources differ in length (padded)."""
    dictionary = task.source_dictionary
    generator = torch.Generator().manual_seed(SEED)

    def encode(text: str) -> torch.Tensor:
        body = dictionary.encode_line(task.bpe.encode(text), add_if_not_exist=False, append_eos=False).long()
        return torch.cat([torch.tensor([dictionary.bos()]), body, torch.tensor([dictionary.eos()])])

    if recipe == "caption":
        sources = [encode(PROMPT)] * batch
        targets = torch.randint(4, len(dictionary) - 10000, (batch, CAPTION_TARGET_TOKENS), generator=generator)
    else:
        sources = [encode(REFCOCO_PROMPT.format(REFERRING_EXPRESSIONS[i % len(REFERRING_EXPRESSIONS)]))
                   for i in range(batch)]
        first_bin = dictionary.index("<bin_0>")
        targets = torch.randint(first_bin, first_bin + 1000, (batch, 4), generator=generator)
    targets = torch.cat([targets, torch.full((batch, 1), dictionary.eos())], dim=1)
    src_tokens = torch.full((batch, max(len(s) for s in sources)), dictionary.pad())
    for row, source in enumerate(sources):
        src_tokens[row, :len(source)] = source
    return {
        "net_input": {
            "src_tokens": src_tokens,
            "src_lengths": torch.tensor([len(s) for s in sources]),
            "patch_images": torch.randn(batch, 3, size, size, generator=generator),
            "patch_masks": torch.ones(batch, dtype=torch.bool),
            "prev_output_tokens": torch.cat([torch.full((batch, 1), dictionary.bos()), targets[:, :-1]], dim=1),
        },
        "target": targets,
    }


def to_device(batch: Dict[str, object], device: str, dtype: torch.dtype) -> Dict[str, object]:
    def move(value):
        if isinstance(value, dict):
            return {key: move(item) for key, item in value.items()}
        value = value.to(device)
        return value.to(dtype) if value.is_floating_point() else value

    return move(batch)


def step_loss(model: torch.nn.Module, batch: Dict[str, object]) -> torch.Tensor:
    logits, _ = model(**batch["net_input"])
    return torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), batch["target"].flatten())


def make_optimizer(model: torch.nn.Module) -> torch.optim.Optimizer:
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LEARNING_RATE,
                             weight_decay=WEIGHT_DECAY)


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: Dict[str, object]) -> float:
    optimizer.zero_grad(set_to_none=True)
    loss = step_loss(model, batch)
    loss.backward()
    optimizer.step()
    return float(loss)


def check_equivalence(ofa: torch.nn.Module, ours: torch.nn.Module, batch: Dict[str, object]) -> Dict[str, object]:
    """Eval-mode float32 logits and parameter gradients of both; raises if they differ beyond the tolerances."""
    results = {}
    for name, model in (("ofa", ofa), ("ours", ours)):
        model.eval().zero_grad(set_to_none=True)
        logits, _ = model(**batch["net_input"])
        torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), batch["target"].flatten()).backward()
        results[name] = (logits.detach(), {key: p.grad.detach().clone() for key, p in model.named_parameters()
                                           if p.grad is not None})
        model.zero_grad(set_to_none=True)
    (ofa_logits, ofa_grads), (our_logits, our_grads) = results["ofa"], results["ours"]
    logit_diff = float((ofa_logits - our_logits).abs().max())
    if logit_diff > LOGIT_TOLERANCE:
        raise RuntimeError(f"logits differ from OFA's by {logit_diff:.3g} (> {LOGIT_TOLERANCE})")
    if set(ofa_grads) != set(our_grads):
        raise RuntimeError(f"gradients for different parameters: {sorted(set(ofa_grads) ^ set(our_grads))[:5]}")
    # a gradient that is zero in exact arithmetic (a key bias under softmax) is rounding noise in both models:
    # its scale is floored at GRAD_FLOOR of the model's largest gradient entry
    floor = GRAD_FLOOR * max(float(g.abs().max()) for g in ofa_grads.values())
    worst, worst_name = 0.0, None
    for key, reference in ofa_grads.items():
        scale = max(float(reference.abs().max()), floor)
        relative = float((reference - our_grads[key]).abs().max()) / scale if scale > 0 else 0.0
        if relative > worst:
            worst, worst_name = relative, key
    if worst > GRAD_TOLERANCE:
        raise RuntimeError(f"gradient of {worst_name} differs from OFA's by {worst:.3g} of its largest entry "
                           f"(> {GRAD_TOLERANCE})")
    return {"max_abs_logit_diff": logit_diff, "logit_tolerance": LOGIT_TOLERANCE,
            "max_relative_grad_diff": worst, "worst_grad": worst_name, "grad_tolerance": GRAD_TOLERANCE,
            "gradients_compared": len(ofa_grads)}


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_steps(models: Dict[str, torch.nn.Module], batch: Dict[str, object], rounds: int,
               device: str) -> Dict[str, List[float]]:
    """Seconds per train step of each model, one untimed step first, the order flipped every round."""
    optimizers = {name: make_optimizer(model) for name, model in models.items()}
    for name, model in models.items():
        train_step(model.train(), optimizers[name], batch)
    seconds: Dict[str, List[float]] = {name: [] for name in models}
    for round_index in range(rounds):
        order = list(models) if round_index % 2 == 0 else list(reversed(list(models)))
        for name in order:
            sync(device)
            start = time.perf_counter()
            train_step(models[name], optimizers[name], batch)
            sync(device)
            seconds[name].append(time.perf_counter() - start)
    for optimizer in optimizers.values():
        optimizer.state.clear()
    return seconds


def memory_child(options: argparse.Namespace, recipe: str, arch: str, batch_size: int) -> Dict[str, float]:
    """One model alone in this process: bytes at its peak over ``MEMORY_STEPS`` train steps (see the docstring)."""
    flags, _ = RECIPES[recipe]
    size = image_size(options, recipe)
    with tempfile.TemporaryDirectory() as scratch:
        args, task = ofa_args_and_task(options.ofa_dir.resolve(), Path(scratch), arch, size, flags)
        task.bpe = gpt2_bpe(options.ofa_dir.resolve())  # OFA's task makes it in build_model, after the baseline
        batch = to_device(make_batch(task, recipe, batch_size, size), options.device, DTYPES[options.dtype])
        gc.collect()
        before = process_memory("VmRSS")
        torch.manual_seed(SEED)
        if options.child == "ofa":
            model = task.build_model(copy.deepcopy(args))
        else:
            forget_ofa_registrations()
            from ofa_el.models.ofa.model import OFAModel

            model = OFAModel.build_model(copy.deepcopy(args), task)
    model = model.to(options.device, DTYPES[options.dtype]).train()
    optimizer = make_optimizer(model)
    for _ in range(MEMORY_STEPS):
        train_step(model, optimizer, batch)
    sync(options.device)
    if options.device == "cuda":
        return {"peak_bytes": float(torch.cuda.max_memory_allocated()), "measure": "cuda_max_memory_allocated"}
    return {"peak_bytes": float(process_memory("VmHWM") - before), "measure": "cpu_peak_rss_above_start",
            "process_peak_rss_bytes": float(process_memory("VmHWM"))}


def in_child(options: argparse.Namespace, part: str, recipe: str, arch: str, batch: int) -> Dict[str, object]:
    """Run ``part`` for one configuration in a fresh process (OFA's and our model register the same fairseq
    names, so each process builds OFA's model once) and return what it printed."""
    cmd = [sys.executable, str(Path(__file__).resolve()), f"--ofa-dir={options.ofa_dir}", f"--archs={arch}",
           f"--recipes={recipe}", f"--batches={batch}", f"--threads={options.threads}", f"--rounds={options.rounds}",
           f"--device={options.device}", f"--dtype={options.dtype}", f"--child={part}"]
    if options.image_size is not None:
        cmd.append(f"--image-size={options.image_size}")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(CHILD_MARK)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{recipe} {arch} batch {batch}: the {part} process failed (exit {proc.returncode}):\n"
                           + proc.stdout[-2000:] + proc.stderr[-3000:])
    return json.loads(lines[-1][len(CHILD_MARK):])


def measure_memory(options: argparse.Namespace, recipe: str, arch: str, batch: int) -> Dict[str, List[float]]:
    """Peak bytes per model, each from ``--memory-rounds`` fresh processes, alternating which goes first."""
    peaks: Dict[str, List[float]] = {name: [] for name in MODEL_NAMES}
    for round_index in range(options.memory_rounds):
        order = MODEL_NAMES if round_index % 2 == 0 else tuple(reversed(MODEL_NAMES))
        for name in order:
            peaks[name].append(in_child(options, name, recipe, arch, batch)["peak_bytes"])
    return peaks


def equivalence_and_times(options: argparse.Namespace, recipe: str, arch: str, batch_size: int) -> Dict[str, object]:
    """Build both models, check they agree, time them in interleaved rounds (a child process's part)."""
    flags, _ = RECIPES[recipe]
    size = image_size(options, recipe)
    with tempfile.TemporaryDirectory() as scratch:
        ofa_args, task, ofa_model = build_ofa(options.ofa_dir.resolve(), Path(scratch), arch, size, flags)
        ours = build_ours(ofa_args, task, ofa_model)
    batch = make_batch(task, recipe, batch_size, size)
    models = {"ofa": ofa_model.to(options.device), "ours": ours.to(options.device)}
    equivalence = check_equivalence(models["ofa"], models["ours"], to_device(batch, options.device, torch.float32))
    dtype = DTYPES[options.dtype]
    models = {name: model.to(dtype) for name, model in models.items()}
    seconds = time_steps(models, to_device(batch, options.device, dtype), options.rounds, options.device)
    return {"seconds": seconds, "equivalence": equivalence,
            "source_tokens": int(batch["net_input"]["src_tokens"].size(1)),
            "target_tokens": int(batch["target"].size(1))}


def run_configuration(options: argparse.Namespace, recipe: str, arch: str, batch_size: int) -> Dict[str, object]:
    """Equivalence and timing in one fresh process, then the peak memory of each model in its own."""
    timed = in_child(options, "time", recipe, arch, batch_size)
    seconds = timed["seconds"]
    peaks = measure_memory(options, recipe, arch, batch_size)
    median_s = {name: statistics.median(values) for name, values in seconds.items()}
    median_peak = {name: statistics.median(values) for name, values in peaks.items()}
    return {
        "recipe": recipe, "arch": arch, "image_size": image_size(options, recipe), "batch": batch_size,
        "source_tokens": timed["source_tokens"], "target_tokens": timed["target_tokens"],
        "time_ratio": median_s["ours"] / median_s["ofa"],
        "paired_time_ratio": statistics.median(o / r for o, r in zip(seconds["ours"], seconds["ofa"])),
        "memory_ratio": median_peak["ours"] / median_peak["ofa"],
        "median_step_s": median_s, "median_peak_bytes": median_peak,
        "per_round_s": seconds, "peak_bytes": peaks, "equivalence": timed["equivalence"],
    }


def format_row(row: Dict[str, object]) -> str:
    seconds, peak = row["median_step_s"], row["median_peak_bytes"]
    return (f"{row['recipe']:<8}{row['arch']:<10}{row['image_size']:>5}{row['batch']:>6}"
            f"{seconds['ofa']:>9.3f}{seconds['ours']:>9.3f}{row['time_ratio']:>7.3f}{row['paired_time_ratio']:>8.3f}"
            f"{peak['ofa'] / 2 ** 20:>10.0f}{peak['ours'] / 2 ** 20:>10.0f}{row['memory_ratio']:>7.3f}")


HEADER = (f"{'recipe':<8}{'arch':<10}{'px':>5}{'batch':>6}{'OFA s':>9}{'ours s':>9}{'time':>7}{'paired':>8}"
          f"{'OFA MiB':>10}{'ours MiB':>10}{'memory':>7}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    options = parse_command_line(argv)
    if not paths_usable(options):
        return 2
    torch.set_num_threads(options.threads)
    if options.child is not None:
        part = equivalence_and_times if options.child == "time" else memory_child
        result = part(options, options.recipes[0], options.archs[0], options.batches[0])
        print(CHILD_MARK + json.dumps(result), flush=True)
        return 0
    settings = {"device": options.device, "dtype": options.dtype, "rounds": options.rounds,
                "memory_rounds": options.memory_rounds, "threads": options.threads, "torch": torch.__version__,
                "memory_measure": "cuda_max_memory_allocated" if options.device == "cuda"
                else "cpu_peak_rss_above_start", "optimizer": f"AdamW lr {LEARNING_RATE} wd {WEIGHT_DECAY}"}
    print(f"train step (forward + backward + AdamW) on {options.device} in {options.dtype}, {options.threads} "
          f"threads; medians of {options.rounds} interleaved rounds; ratios are ours / OFA's", flush=True)
    print(HEADER, flush=True)
    rows = []
    for recipe in options.recipes:
        for arch in options.archs:
            for batch in options.batches:
                rows.append(run_configuration(options, recipe, arch, batch))
                print(format_row(rows[-1]), flush=True)
                if options.json is not None:
                    options.json.write_text(json.dumps({"settings": settings, "configurations": rows}, indent=1)
                                            + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
