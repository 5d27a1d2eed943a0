"""How fast does ``make_tsv`` write real-size photos, and how big are the TSVs against the images?

    python benchmarks/make_tsv_bench.py                    # 300 images, 3 rounds (a few minutes on 2 cores)
    python benchmarks/make_tsv_bench.py --images 100 --rounds 1

Writes ``--images`` photo-like 640x480 JPEGs (quality 90; smooth colour gradients, a few soft shapes and
sensor-like noise, so that they compress about as camera photos do, not as flat synthetic shapes) and a
``jsonl`` caption file naming each once, then converts it with every mode (copy, and re-encode with
``--max-image-size 480 --jpeg-quality 90``) and every worker count, interleaved round by round so that
machine noise hits all alike. It prints the median rows/s of each setting (the converter's own
timing: reading, decoding and encoding the images, writing the TSV; not the Python start-up) and the TSV's
size against the images' total size.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from typing import Dict, List, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ofa_el.tools.make_tsv import main as make_tsv

WIDTH, HEIGHT = 640, 480
MODES = {"copy": [], "re-encode 480 px q90": ["--max-image-size", "480", "--jpeg-quality", "90"]}


def photo_like(rng: np.random.Generator) -> Image.Image:
    """Gradients + blurred shapes + per-pixel noise: compresses like a photo at JPEG quality 90."""
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    channels = [rng.uniform(40, 200) + rng.uniform(-60, 60) * x / WIDTH + rng.uniform(-60, 60) * y / HEIGHT
                for _ in range(3)]
    image = Image.fromarray(np.clip(np.stack(channels, -1), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        x0, y0 = rng.integers(0, WIDTH - 60), rng.integers(0, HEIGHT - 60)
        x1, y1 = x0 + rng.integers(40, 300), y0 + rng.integers(40, 240)
        draw.ellipse((int(x0), int(y0), int(x1), int(y1)), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    pixels = np.asarray(image.filter(ImageFilter.GaussianBlur(2)), dtype=np.float32)
    pixels += rng.normal(0, 10, pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def write_set(folder: str, count: int, seed: int) -> Tuple[str, int]:
    """The images and a caption JSONL naming them; the JSONL's path and the images' total bytes."""
    rng = np.random.default_rng(seed)
    records = []
    for index in range(count):
        name = f"photo_{index:05d}.jpg"
        photo_like(rng).save(os.path.join(folder, name), format="JPEG", quality=90)
        records.append({"image": name, "caption": f"a photo number {index}"})
    path = os.path.join(folder, "photos_train.jsonl")
    with open(path, "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(record) + "\n" for record in records)
    return path, sum(os.path.getsize(os.path.join(folder, r["image"])) for r in records)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", default="1,2", help="worker counts to compare (default 1,2)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    worker_counts = [int(w) for w in args.workers.split(",")]
    rates: Dict[Tuple[str, int], List[float]] = {(mode, w): [] for mode in MODES for w in worker_counts}
    sizes: Dict[str, int] = {}
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as folder:
        jsonl, image_bytes = write_set(folder, args.images, args.seed)
        for _ in range(args.rounds):
            for mode, options in MODES.items():
                for workers in worker_counts:
                    out = os.path.join(folder, "out")
                    (summary,) = make_tsv(["jsonl", "--task", "caption", "--annotations", jsonl, "--out", out,
                                           "--workers", str(workers), "--no-progress", *options])
                    rates[(mode, workers)].append(summary.rows / summary.seconds)
                    sizes[mode] = summary.tsv_bytes
    print(f"\n{args.images} photo-like {WIDTH}x{HEIGHT} JPEGs (quality 90), {image_bytes / 1e6:.1f} MB; "
          f"median of {args.rounds} interleaved round(s), load average before: {load_before:.2f}")
    print(f"{'mode':<22}{'workers':>8}{'rows/s':>10}{'TSV MB':>10}{'TSV/images':>12}")
    for (mode, workers), values in rates.items():
        print(f"{mode:<22}{workers:>8}{statistics.median(values):>10.1f}{sizes[mode] / 1e6:>10.1f}"
              f"{sizes[mode] / image_bytes:>12.3f}")


if __name__ == "__main__":
    main()
