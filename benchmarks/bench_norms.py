"""Norms throughput: the Ray Data operator against one NumPy process on the same data.

    .venv/bin/python benchmarks/bench_norms.py                 # 2,000,000 x (1, 28, 28)
    .venv/bin/python benchmarks/bench_norms.py --n 200000      # a quick run

NumPy computes the norms of the whole array in memory. Ray Data runs `Norms` over the same
values, generated chunk by chunk with the same seeds and already materialised in the object
store, consumed as a stream by the driver: with the features passed through (the operator as a
pipeline stage) and emitting only id and norm (as `balanced_draw` uses it), each under Ray
Data's default per-operator resource reservation and without it; `add_norms` hands `Norms`
zero-copy batches, and one row per setting shows Ray Data's default (writable, copied batches)
for comparison. The table gives the median
samples/s of `--repeats` runs and the ratio to NumPy, measured in this one run, for Ray Data's
default block size and for larger blocks (fewer tasks).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import ray
from ray.data import DataContext

from raysift.operators.contract import ID, X
from raysift.operators.norms import Norms, add_norms

CHUNK = 65536


def chunk(start: int, rows: int, shape: tuple) -> np.ndarray:
    """Rows [start, start + rows) of the benchmark data; depends on nothing else."""
    return np.random.default_rng(start).random((rows, *shape), dtype=np.float32)


def _generate(batch: dict, n: int, shape: tuple) -> dict:
    start = int(batch["id"][0]) * CHUNK
    rows = min(CHUNK, n - start)
    return {ID: np.arange(start, start + rows, dtype=np.int64), X: chunk(start, rows, shape)}


def numpy_norms(n: int, shape: tuple, repeats: int) -> tuple[list[float], np.ndarray]:
    x = np.empty((n, *shape), np.float32)
    for start in range(0, n, CHUNK):
        x[start : start + CHUNK] = chunk(start, min(CHUNK, n - start), shape)
    times = []
    for _ in range(repeats):
        begin = time.perf_counter()
        flat = x.reshape(n, -1)
        norms = np.sqrt(np.einsum("ij,ij->i", flat, flat))
        times.append(time.perf_counter() - begin)
    return times, norms


def ray_norms(
    ds, keep_features: bool, zero_copy: bool, repeats: int
) -> tuple[list[float], np.ndarray]:
    times = []
    for _ in range(repeats):
        ids, norms = [], []
        begin = time.perf_counter()
        op = Norms(keep_features=keep_features)
        out = add_norms(ds, op) if zero_copy else ds.map_batches(op, batch_format="numpy")
        for batch in out.iter_batches(batch_size=None, batch_format="numpy"):
            ids.append(batch[ID])
            norms.append(batch["norm"])
        times.append(time.perf_counter() - begin)
    ids, norms = np.concatenate(ids), np.concatenate(norms)
    return times, norms[np.argsort(ids)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2_000_000, help="samples (default 2,000,000)")
    parser.add_argument("--shape", default="1,28,28", help="sample shape (default 1,28,28)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of each (default 5)")
    parser.add_argument("--cpus", type=int, default=2, help="Ray CPUs (default 2)")
    parser.add_argument(
        "--block-mb",
        type=int,
        nargs="+",
        default=[128, 256],
        help="Ray Data's target block size(s) in MiB (default: 128, its own "
        "default, and 256, one 65,536-sample chunk per block)",
    )
    args = parser.parse_args()
    shape = tuple(int(s) for s in args.shape.split(","))
    n = args.n
    gib = n * int(np.prod(shape)) * 4 / 2**30

    np_times, np_norms = numpy_norms(n, shape, args.repeats)  # the array is freed on return
    ray.init(
        num_cpus=args.cpus,
        include_dashboard=False,
        log_to_driver=False,
        object_store_memory=int(gib * 1.5 * 2**30) + 2**29,
    )
    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    rows = [("NumPy, one process", np_times, np_norms)]
    chunks = -(-n // CHUNK)  # whole chunks per block, so both sides draw the same numbers
    for block_mb in args.block_mb:
        ctx.target_max_block_size = block_mb * 2**20  # a Dataset copies the context it is made in
        ds = (
            ray.data.range(chunks, override_num_blocks=chunks)
            .map_batches(
                _generate, fn_kwargs={"n": n, "shape": shape}, batch_size=1, batch_format="numpy"
            )
            .materialize()
        )
        for reserve in (True, False):
            # Ray Data's default reserves half the CPUs per operator: on 2 CPUs a lone map
            # operator then runs one task at a time. Both settings are measured.
            ds.context.op_resource_reservation_enabled = reserve
            for keep, zero_copy in ((False, True), (True, True), (False, False)):
                label = (
                    f"Ray {ds.num_blocks()} blocks, reserve {'on' if reserve else 'off'}, "
                    f"{'x + norm' if keep else 'id + norm'}"
                    f"{'' if zero_copy else ', copied batches'}"
                )
                times, norms = ray_norms(ds, keep, zero_copy, args.repeats)
                rows.append((label, times, norms))
        del ds

    print(
        f"\nnorms (pixel_weighted_l2) of {n:,} samples of shape {shape} ({gib:.2f} GiB float32), "
        f"Ray on {args.cpus} CPUs, median of {args.repeats} runs; load average at the end "
        f"{os.getloadavg()[0]:.1f} (other work on the machine slows the 2-process side most)"
    )
    np_rate = n / statistics.median(np_times)
    print(f"{'':58s} {'median s':>9s} {'samples/s':>12s} {'vs NumPy':>9s} {'max |diff|':>11s}")
    for label, times, norms in rows:
        rate = n / statistics.median(times)
        diff = float(np.abs(norms - np_norms).max())
        print(
            f"{label:58s} {statistics.median(times):9.3f} {rate:12,.0f} {rate / np_rate:8.2f}x "
            f"{diff:11.2e}"
        )


if __name__ == "__main__":
    main()
