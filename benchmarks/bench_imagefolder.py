"""Image folders: the reader's Ray Data decode against one process decoding every image.

    .venv/bin/python benchmarks/bench_imagefolder.py [--images 20000] [--size 28] [--repeats 3]

Writes `--images` grey PNGs of `--size`x`--size` in 10 class folders, then reads them all as
(n, 1, H, W) uint8 two ways: one process opening every image for its header and again for its
pixels (what the reader did before), and `read_imagefolder`'s chunks (Ray Data tasks for the
headers, then for the pixels, in path order). Prints the median seconds of `--repeats` and the
ratio. On 2 cores the ceiling is 2x, less Ray Data's start-up.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import ray
from PIL import Image

from raysift.config import SourceConfig
from raysift.data.sources import read_imagefolder
from raysift.job.rounds import init_ray


def write_images(root: Path, n: int, size: int) -> None:
    rng = np.random.default_rng(0)
    for i in range(n):
        folder = root / f"class{i % 10}"
        folder.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8), mode="L").save(
            folder / f"{i:07d}.png"
        )


def one_process(root: Path) -> int:
    """Headers, then pixels, of every image in one process (the former reader's work)."""
    paths = sorted(root.glob("*/*.png"))
    modes = set()
    for p in paths:
        with Image.open(p) as img:
            modes.add((img.mode, img.size))
    return len(np.stack([np.asarray(Image.open(p).convert("L"))[None] for p in paths]))


def ray_data(root: Path) -> int:
    cfg = SourceConfig(kind="imagefolder", path=str(root))
    return sum(len(c.label) for c in read_imagefolder(cfg, 4096).chunks)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=20000)
    ap.add_argument("--size", type=int, default=28)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    init_ray()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_images(root, args.images, args.size)
        seconds = {"one process": [], "Ray Data": []}
        for _ in range(args.repeats):
            for name, read in (("one process", one_process), ("Ray Data", ray_data)):
                start = time.perf_counter()
                assert read(root) == args.images
                seconds[name].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in seconds.items()}
    print(
        f"{args.images} images {args.size}x{args.size}, {int(ray.cluster_resources()['CPU'])} "
        f"CPUs, median of {args.repeats}"
    )
    print(f"{'reader':<12} {'seconds':>8} {'images/s':>9}")
    for name, s in med.items():
        print(f"{name:<12} {s:>8.2f} {args.images / s:>9.0f}")
    print(f"speed-up of Ray Data over one process: {med['one process'] / med['Ray Data']:.2f}x")


if __name__ == "__main__":
    main()
