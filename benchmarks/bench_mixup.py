"""`raysift mixup` throughput against one process doing the same mix in memory.

    .venv/bin/python benchmarks/bench_mixup.py                    # 50,000 x (1, 28, 28)
    .venv/bin/python benchmarks/bench_mixup.py --n 2000000        # the issue's size (~6 GB)

Both read the same Parquet file and write the mixed rows (only the new ones) as Parquet, with
the same rule (operators.mixup.Mixup, partners within batches of 1024 consecutive rows, the same
seeds, so the rows are identical). NumPy/torch: one process reads the whole file into memory,
mixes batch by batch, writes one file. Ray: `mixup_job` on a local Ray with `--cpus` CPUs,
streaming (pipelines/data/user_data.py's reader, Ray Data's writer). Each run is its own process
(Ray started before the clock), so each row's peak RSS is that process's: the driver's for
Ray (the workers hold the stream). The table gives the median rows/s of `--repeats` runs and
the ratio to NumPy, measured in this one run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
BATCH = 1024


def make_input(path: Path, n: int, shape: tuple, classes: int = 10, shares=None) -> None:
    """`n` random float32 rows of `shape` in 64 Ki-row chunks; labels drawn uniformly, or with
    probabilities `shares` per class (a long tail)."""
    from raysift.operators.augment import rows_table

    if path.exists():
        return
    tmp = path.with_suffix(".tmp")
    writer = None
    for start in range(0, n, 65536):
        rows = min(65536, n - start)
        rng = np.random.default_rng(start)
        x = rng.random((rows, *shape), dtype=np.float32)
        table = rows_table(
            np.arange(start, start + rows),
            rng.choice(classes, rows, p=shares),
            x,
            "real",
            np.zeros((rows, 0), np.int64),
        ).select(["id", "label", "x"])
        writer = writer or pq.ParquetWriter(tmp, table.schema)
        writer.write_table(table, row_group_size=16384)
    writer.close()
    tmp.rename(path)


def run_numpy(src: Path, dst: Path, seed: int) -> None:
    import torch

    from raysift.operators.augment import IdScheme, block_generator, rows_table
    from raysift.operators.contract import features
    from raysift.operators.mixup import Mixup

    table = pq.read_table(src)
    ids = table["id"].to_numpy()
    labels = table["label"].to_numpy()
    x = features({"x": table["x"].combine_chunks().to_numpy()})
    k = int(labels.max()) + 1
    eye = np.eye(k, dtype=np.float32)
    scheme, mixer = IdScheme(2**32), Mixup(1.0)
    writer = None
    for s in range(0, len(ids), BATCH):
        g = block_generator(seed, int(ids[s]), 0, "mixup")
        xm, ym, partner = mixer.apply(
            torch.from_numpy(x[s : s + BATCH]), torch.from_numpy(eye[labels[s : s + BATCH]]), g
        )
        part = ids[s : s + BATCH]
        out = rows_table(
            scheme.new_ids(part, 0),
            ym.numpy().argmax(1),
            xm.numpy(),
            "mixup",
            np.stack([part, part[partner.numpy()]], 1),
            ym.numpy(),
        )
        writer = writer or pq.ParquetWriter(dst, out.schema)
        writer.write_table(out)
    writer.close()


def one(method: str, src: str, dst: str, cpus: int, seed: int) -> dict:
    """One timed run in this process."""
    if method == "ray":
        import ray
        from ray.data import DataContext

        ray.init(
            num_cpus=cpus, include_dashboard=False, log_to_driver=False, configure_logging=False
        )
        DataContext.get_current().enable_progress_bars = False
        from raysift.batch.augment import mixup_job

        start = time.perf_counter()
        mixup_job(src, dst, seed=seed, new_only=True, batch_size=BATCH)
    else:
        import torch  # noqa: F401  imported before the clock, as Ray's driver imports its own

        import raysift.operators.mixup  # noqa: F401

        start = time.perf_counter()
        Path(dst).mkdir()
        run_numpy(Path(src), Path(dst) / "part-0.parquet", seed)
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=50_000)
    ap.add_argument("--shape", default="1,28,28")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--workdir", default="/tmp/raysift-bench-mixup")
    ap.add_argument("--one", choices=["ray", "numpy"], help=argparse.SUPPRESS)
    ap.add_argument("--src", help=argparse.SUPPRESS)
    ap.add_argument("--dst", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.src, args.dst, args.cpus, 0)))
        return
    shape = tuple(int(v) for v in args.shape.split(","))
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    src = work / f"in-{args.n}-{'x'.join(map(str, shape))}.parquet"
    make_input(src, args.n, shape)
    results = {"numpy": [], "ray": []}
    for r in range(args.repeats):
        for method in results:
            dst = work / f"out-{method}-{r}"
            shutil.rmtree(dst, ignore_errors=True)
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--one",
                    method,
                    "--src",
                    str(src),
                    "--dst",
                    str(dst),
                    "--cpus",
                    str(args.cpus),
                ],
                cwd=ROOT,
                capture_output=True,
                text=True,
                check=True,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
            )
            results[method].append(json.loads(out.stdout.strip().splitlines()[-1]))
            shutil.rmtree(dst, ignore_errors=True)
    base = statistics.median(args.n / r["seconds"] for r in results["numpy"])
    print(
        f"mixup of {args.n:,} x {shape}, batches of {BATCH}, {args.cpus} CPUs for Ray, "
        f"median of {args.repeats}"
    )
    print(f"{'method':<28}{'rows/s':>12}{'vs numpy':>10}{'wall s':>9}{'peak RSS MB':>13}")
    for method, label in (("numpy", "NumPy/torch, in memory"), ("ray", "raysift mixup (Ray)")):
        rate = statistics.median(args.n / r["seconds"] for r in results[method])
        wall = statistics.median(r["seconds"] for r in results[method])
        rss = max(r["peak_rss_mb"] for r in results[method])
        print(f"{label:<28}{rate:>12,.0f}{rate / base:>10.2f}{wall:>9.1f}{rss:>13,}")


if __name__ == "__main__":
    main()
