"""8-bit images kept uint8: bytes on disk and time to read a split, against float32 rows.

    .venv/bin/python benchmarks/bench_bytes.py [--job configs/compare_fashion_mnist.yaml]
                                               [--repeats 3]

Ingests the job's source as raysift does (8-bit sources stay uint8), writes the same train rows
again as float32 in [0, 1] (what the ingest wrote before), then reads each train split as
rank 0 of 2 workers fills its share (`raysift.data.share.read_share`, everything in memory): bytes
on disk, the share's bytes in memory and the median read time of `--repeats`, with the ratios.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from ray.data.extensions import ArrowTensorArray

from raysift.config import load_job
from raysift.data.ingest import ingest
from raysift.data.share import read_share
from raysift.operators.contract import X, as_float


def as_float32_copy(src: Path, dst: Path) -> None:
    """Every shard of `src` again, its `x` scaled to float32 as the ingest once stored it."""
    dst.mkdir()
    for shard in sorted(src.glob("*.parquet")):
        table = pq.read_table(shard)
        floats = ArrowTensorArray.from_numpy(as_float(table.column(X).combine_chunks().to_numpy()))
        pq.write_table(
            table.set_column(table.schema.get_field_index(X), X, floats), dst / shard.name
        )


def read_seconds(folder: Path, x_shape, dtype) -> tuple[float, int]:
    """Seconds to fill rank 0's share of 2 from `folder`, and the share's feature bytes."""
    start = time.perf_counter()
    share = read_share(folder, 0, 0, 2, x_shape, budget_bytes=2**40, dtype=dtype)
    return time.perf_counter() - start, len(share) * share.x.row_bytes


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.glob("*.parquet"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--job", default="configs/compare_fashion_mnist.yaml")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    job = load_job(args.job)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        info = ingest(job.source, job.seed, data)
        floats = Path(tmp) / "train-float32"
        as_float32_copy(data / "train", floats)
        folders = {
            "uint8 (now)": (data / "train", np.uint8),
            "float32 (before)": (floats, np.float32),
        }
        rows = {}
        for name, (folder, dtype) in folders.items():
            reads = [read_seconds(folder, info.x_shape, dtype) for _ in range(args.repeats)]
            rows[name] = (folder_bytes(folder), reads[0][1], statistics.median(r[0] for r in reads))
    print(
        f"{job.name}: train split, {info.counts['train']:,} rows of x {tuple(info.x_shape)}; "
        f"rank 0's share of 2 read, median of {args.repeats}"
    )
    print(f"| {'rows stored as':<16} | {'MB on disk':>10} | {'share MB':>8} | {'read s':>6} |")
    print(f"| {'-' * 16} | {'-' * 10}:| {'-' * 8}:| {'-' * 6}:|")
    for name, (size, held, seconds) in rows.items():
        print(f"| {name:<16} | {size / 2**20:>10.1f} | {held / 2**20:>8.1f} | {seconds:>6.2f} |")
    (d8, m8, s8), (d32, m32, s32) = rows.values()
    print(
        f"float32 / uint8: {d32 / d8:.2f}x on disk, {m32 / m8:.2f}x in a share, "
        f"{s32 / s8:.2f}x the read time"
    )


if __name__ == "__main__":
    main()
