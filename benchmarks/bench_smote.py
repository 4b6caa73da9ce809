"""`raysift smote --balance` on a long-tailed set several times larger than Ray's object store.

    .venv/bin/python benchmarks/bench_smote.py                       # 10x a 128 MiB store
    .venv/bin/python benchmarks/bench_smote.py --store-mb 256 --times 10

Writes a long-tailed Parquet file of random (1, 28, 28) rows (10 classes, class c holding
imbalance^(-c/9) of the largest class's rows) whose features are `--times` the object store,
starts a local Ray with `--cpus` CPUs and that store, and runs `smote_job` (new rows only, every
class brought up to the largest). Prints one table: the input against the store, the rows
written, wall time, rows/s, the driver's and the largest Ray worker's peak RSS (sampled every
0.2 s), the bytes Ray spilled to disk, and whether every class came out at the target count.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads
import ray
from bench_mixup import make_input
from ray._private.internal_api import memory_summary
from ray.data import DataContext

from raysift.batch.augment import smote_job


class WorkerPeak:
    """The largest resident memory of any Ray worker process (named `ray::...`), sampled from
    /proc in a thread."""

    def __init__(self, every_s: float = 0.2):
        self.every_s, self.peak_mb = every_s, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _watch(self) -> None:
        while not self._stop.wait(self.every_s):
            for status in Path("/proc").glob("[0-9]*/status"):
                try:
                    fields = dict(line.split(":", 1) for line in status.read_text().splitlines())
                except (OSError, ValueError):  # the process ended meanwhile
                    continue
                if fields.get("Name", "").strip().startswith("ray::") and "VmRSS" in fields:
                    rss_mb = int(fields["VmRSS"].split()[0]) // 1024
                    self.peak_mb = max(self.peak_mb, rss_mb)


def label_counts(folder: Path) -> np.ndarray:
    """Rows per label of a Parquet folder, read one batch of the label column at a time."""
    counts = np.zeros(0, np.int64)
    for batch in pads.dataset(folder).to_batches(columns=["label"]):
        c = np.bincount(batch.column(0).to_numpy())
        counts = np.pad(counts, (0, max(0, len(c) - len(counts))))
        counts[: len(c)] += c
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store-mb", type=int, default=128)
    ap.add_argument("--times", type=float, default=10.0, help="input features / object store")
    ap.add_argument("--imbalance", type=float, default=10.0)
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--workdir", default="/tmp/raysift-bench-smote")
    args = ap.parse_args()
    shape, classes = (1, 28, 28), 10
    shares = args.imbalance ** -(np.arange(classes) / (classes - 1))
    shares /= shares.sum()
    row_bytes = 4 * int(np.prod(shape))
    n = int(args.times * args.store_mb * 2**20 / row_bytes)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    src = work / f"longtail-{n}-{args.imbalance:g}.parquet"
    make_input(src, n, shape, classes, shares)
    real = label_counts(src)
    dst = work / "out"
    shutil.rmtree(dst, ignore_errors=True)

    ray.init(
        num_cpus=args.cpus,
        object_store_memory=args.store_mb * 2**20,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    DataContext.get_current().enable_progress_bars = False
    with WorkerPeak() as workers:
        start = time.perf_counter()
        smote_job(str(src), str(dst), new_only=True)
        seconds = time.perf_counter() - start
    spilled = memory_summary(stats_only=True)
    made = label_counts(dst)
    made = np.pad(made, (0, classes - len(made)))
    balanced = bool(np.all(real + made == real.max()))
    driver_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024

    print(
        f"SMOTE --balance, {n:,} x {shape} rows, imbalance {args.imbalance:g}, "
        f"{args.cpus} CPUs, object store {args.store_mb} MiB"
    )
    print(f"classes in: {real.tolist()}\nnew rows:   {made.tolist()}")
    header = (
        f"{'input GB':>9}{'x store':>8}{'new rows':>10}{'wall s':>8}{'rows/s':>8}"
        f"{'driver MB':>10}{'worker MB':>10}{'balanced':>9}"
    )
    print(header)
    print(
        f"{n * row_bytes / 1e9:>9.2f}{n * row_bytes / (args.store_mb * 2**20):>8.1f}"
        f"{int(made.sum()):>10,}{seconds:>8.0f}{made.sum() / seconds:>8,.0f}"
        f"{driver_mb:>10,}{workers.peak_mb:>10,}{str(balanced):>9}"
    )
    spill_lines = [line for line in spilled.splitlines() if "spill" in line.lower()]
    print("\n".join(spill_lines) or "Ray reported no object spilled to disk")


if __name__ == "__main__":
    main()
