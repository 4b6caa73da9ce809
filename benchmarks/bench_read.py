"""Reading an ingested split with Ray Data: Ray's default Parquet reader against raysift's.

    .venv/bin/python benchmarks/bench_read.py [--job configs/demo_mnist1d.yaml] [--repeats 5]

Ingests the job's source as raysift does, starts a local Ray as jobs do, then reads each split
to the object store (`materialize`) through Ray 2.60's default reader (DataSource V2: a listing
task, then the reads) and through `raysift.data.parquet.read_parquet` (Ray's first reader),
the two interleaved, `--repeats` times each after one unmeasured read of each: the median
seconds per split and the ratio.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import ray

from raysift.config import load_job
from raysift.data.ingest import ingest
from raysift.data.parquet import read_parquet
from raysift.data.sources import SPLITS
from raysift.job.rounds import init_ray

READERS = {
    "Ray's default (V2)": ray.data.read_parquet,
    "raysift (V1)": read_parquet,
}


def read_seconds(reader, folder: Path) -> float:
    start = time.perf_counter()
    reader(str(folder), file_extensions=["parquet"]).materialize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--job", default="configs/demo_mnist1d.yaml")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    job = load_job(args.job)
    init_ray()
    with tempfile.TemporaryDirectory() as tmp:
        info = ingest(job.source, job.seed, Path(tmp))
        seconds = {split: {name: [] for name in READERS} for split in SPLITS}
        for split in SPLITS:
            folder = Path(tmp) / split
            for reader in READERS.values():
                read_seconds(reader, folder)
            for _ in range(args.repeats):
                for name, reader in READERS.items():
                    seconds[split][name].append(read_seconds(reader, folder))
    default, ours = READERS
    print(f"{job.name}: each split read to the object store, median of {args.repeats}")
    print(f"| {'split':<5} | {'rows':>6} | {default:>18} | {ours:>12} | {'ratio':>5} |")
    print(f"| {'-' * 5} | {'-' * 6}:| {'-' * 18}:| {'-' * 12}:| {'-' * 5}:|")
    for split, by_reader in seconds.items():
        a, b = (statistics.median(by_reader[name]) for name in READERS)
        print(
            f"| {split:<5} | {info.counts[split]:>6,} | {a:>16.2f} s | {b:>10.2f} s "
            f"| {a / b:>4.1f}x |"
        )


if __name__ == "__main__":
    main()
