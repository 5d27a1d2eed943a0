"""Time ImageNet-size all-candidate inference: every image scored against 1,000 class names.

    python benchmarks/allcand_imagenet.py --bpe-dir /path/to/OFA/utils/BPE [--arch ofa_tiny] [--batch 8]
        [--classes 1000] [--per-pass 20 100] [--patch-image-size 480] [--rounds 3] [--threads 2] [--cpu]

The class names are made up from GPT-2 words (one to three words each, first words shared between classes as
in ImageNet's "golden retriever" / "golden eagle"), since the real list ships with OFA's data, not its code;
their mean length in OFA's BPE tokens is printed. The model is randomly initialised
(scores are not the point, time is). Each round scores one batch with
:func:`ofa_el.tasks.candidate_scoring.score_candidates` (the image encoded once, then ``--per-pass`` candidates
of every image per decoder pass); the encoder alone is timed too. Medians over ``--rounds`` are printed, per
batch and per image.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

import torch
from fairseq import options

from ofa_el.data.candidates import CandidateSet
from ofa_el.data.dictionary import build_ofa_dictionary
from ofa_el.data.text import TextCodec
from ofa_el.models.ofa.model import OFAModel
from ofa_el.tasks.candidate_scoring import encode_batch, score_candidates


def class_names(encoder_json: Path, count: int, seed: int = 0) -> list:
    """``count`` distinct made-up class names of 1-3 GPT-2 words."""
    words = [w[1:] for w in json.loads(encoder_json.read_text(encoding="utf-8"))
             if w.startswith("\u0120") and w[1:].isalpha() and w[1:].islower() and len(w) > 4][:3000]
    rng = random.Random(seed)
    heads = rng.sample(words, 300)
    names, seen = [], set()
    while len(names) < count:
        size = rng.choice((1, 2, 2, 3))
        name = " ".join([rng.choice(heads)] + rng.sample(words, size - 1))
        if name not in seen:
            seen.add(name)
            names.append(name)
    return names


def build_model(arch: str, dictionary):
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, ["/dev/null", "--arch", arch, "--task", "translation",
                                                "--dropout", "0"])

    class Task:
        source_dictionary = target_dictionary = dictionary

    torch.manual_seed(0)
    return OFAModel.build_model(args, Task()).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bpe-dir", required=True, help="OFA's utils/BPE (encoder.json, vocab.bpe, dict.txt)")
    parser.add_argument("--arch", default="ofa_tiny")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--per-pass", type=int, nargs="+", default=[20, 100], help="candidates per decoder pass")
    parser.add_argument("--patch-image-size", type=int, default=480)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cpu", action="store_true", help="stay on the CPU even with CUDA")
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() and not args.cpu else "cpu"

    dictionary = build_ofa_dictionary(str(Path(args.bpe_dir) / "dict.txt"), num_bins=1000, num_codes=8192)
    codec = TextCodec(args.bpe_dir, dictionary=dictionary)
    names = class_names(Path(args.bpe_dir) / "encoder.json", args.classes)
    candidates = CandidateSet(names, codec, source="made-up class names")
    mean_tokens = sum(len(t) for t in candidates.tokens) / len(candidates)
    model = build_model(args.arch, dictionary).to(device)

    source = torch.cat([torch.tensor([dictionary.bos()]), codec.encode(" what does the image describe?"),
                        torch.tensor([dictionary.eos()])])
    torch.manual_seed(1)
    net_input = {"src_tokens": source.repeat(args.batch, 1).to(device),
                 "src_lengths": torch.full((args.batch,), len(source), device=device),
                 "patch_images": torch.randn(args.batch, 3, args.patch_image_size, args.patch_image_size,
                                             device=device),
                 "patch_masks": torch.ones(args.batch, dtype=torch.bool, device=device)}
    prompts = [torch.tensor([dictionary.bos()])] * args.batch

    def timed(fn):
        """Median wall seconds and median CPU seconds of this process (threads included) over the rounds; on a
        shared machine the CPU time is the steadier figure."""
        walls, cpus = [], []
        for _ in range(args.rounds):
            if device == "cuda":
                torch.cuda.synchronize()
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            if device == "cuda":
                torch.cuda.synchronize()
            walls.append(time.perf_counter() - start)
            cpus.append(time.process_time() - start_cpu)
        return statistics.median(walls), statistics.median(cpus)

    with torch.no_grad():
        encoder_wall, encoder_cpu = timed(lambda: encode_batch(model, net_input))
        results = {"arch": args.arch, "device": device, "threads": args.threads, "batch": args.batch,
                   "classes": len(candidates), "mean_class_tokens": round(mean_tokens, 2),
                   "patch_image_size": args.patch_image_size, "rounds": args.rounds,
                   "encoder": {"wall_s_per_batch": round(encoder_wall, 4), "cpu_s_per_batch": round(encoder_cpu, 4)},
                   "allcand": {}}
        print(f"{args.arch} on {device} ({args.threads} threads), batch {args.batch} at {args.patch_image_size} px, "
              f"{len(candidates)} classes ({mean_tokens:.2f} BPE tokens each on average); medians of "
              f"{args.rounds} rounds; wall and CPU seconds")
        print(f"encoder only: {encoder_wall:.2f} s wall, {encoder_cpu:.2f} s CPU per batch")
        for per_pass in args.per_pass:
            wall, cpu = timed(lambda: score_candidates(model, net_input, prompts, candidates, per_pass))
            results["allcand"][per_pass] = {"wall_s_per_batch": round(wall, 4), "cpu_s_per_batch": round(cpu, 4)}
            print(f"all {len(candidates)} classes, {per_pass} per pass: {wall:.2f} s wall, {cpu:.2f} s CPU per "
                  f"batch; {cpu / args.batch:.2f} s CPU per image")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
