"""k-means at scale: the streaming Ray `KMeans` against scikit-learn, and a run past the store.

    .venv/bin/python benchmarks/bench_kmeans.py                    # 1,000,000 x 40, k = 50
    .venv/bin/python benchmarks/bench_kmeans.py --n 100000         # a quick run
    .venv/bin/python benchmarks/bench_kmeans.py --stream --n 10000000 --object-store-mb 128

Default mode: Gaussian blobs in memory. One k-means++ start (on a 10,000-row sample) is shared
by every method: our Lloyd passes over a materialised Dataset, our mini-batch steps,
scikit-learn `KMeans` (n_init=1, Lloyd) and `MiniBatchKMeans`, all on the same CPUs. The table
gives median wall time of `--repeats` fits, the ratio to scikit-learn `KMeans`, and inertia on
the full data relative to it (the target: within 1%).

`--stream`: the data is written to Parquet under /tmp and fitted from there with Ray's object
store capped at `--object-store-mb`, far below the data's size; the table reports the driver's
peak resident memory, which stays bounded because every pass streams.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import time

import numpy as np
import ray
from ray.data import DataContext
from sklearn.cluster import KMeans as SkKMeans
from sklearn.cluster import MiniBatchKMeans

from raysift.operators.cluster import KMeans, kmeans_plusplus
from raysift.operators.contract import ID, X, from_columns

CHUNK = 65536


def centres(k: int, d: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-10, 10, (k, d)).astype(np.float32)


def chunk(start: int, rows: int, means: np.ndarray, seed: int) -> np.ndarray:
    """Rows [start, start + rows) of the blobs; the same whoever generates them."""
    rng = np.random.default_rng([seed, start])
    which = rng.integers(len(means), size=rows)
    return (means[which] + 2.5 * rng.standard_normal((rows, means.shape[1]))).astype(np.float32)


def blobs(n: int, means: np.ndarray, seed: int) -> np.ndarray:
    return np.concatenate([chunk(s, min(CHUNK, n - s), means, seed) for s in range(0, n, CHUNK)])


def full_inertia(x: np.ndarray, c: np.ndarray) -> float:
    """Sum of squared distances to the nearest centre, in float64, in slices."""
    c = c.astype(np.float64)
    total = 0.0
    for s in range(0, len(x), CHUNK):
        part = x[s : s + CHUNK].astype(np.float64)
        d2 = (part * part).sum(1)[:, None] - 2 * part @ c.T + (c * c).sum(1)[None, :]
        total += float(np.maximum(d2.min(1), 0).sum())
    return total


def timed(fit, repeats: int):
    times, model = [], None
    for _ in range(repeats):
        begin = time.perf_counter()
        model = fit()
        times.append(time.perf_counter() - begin)
    return statistics.median(times), model


def compare(args) -> None:
    means = centres(args.k, args.d, args.seed)
    x = blobs(args.n, means, args.seed)
    rng = np.random.default_rng(args.seed)
    init = kmeans_plusplus(
        x[rng.choice(len(x), min(10_000, len(x)), replace=False)].astype(np.float64), args.k, rng
    )
    blocks = max(1, args.n // args.blocks)
    ds = from_columns(
        {ID: np.arange(args.n, dtype=np.int64), X: x}, rows_per_block=blocks
    ).materialize()
    mini = max(args.k, args.n // 10)
    runs = {
        "Ray KMeans (Lloyd)": lambda: KMeans(
            args.k, init=init, max_iter=args.max_iter, tol=args.tol
        ).fit(ds),
        f"Ray KMeans (mini-batch {mini:,})": lambda: KMeans(
            args.k, init=init, max_iter=args.max_iter, tol=args.tol, mini_batch=mini
        ).fit(ds),
        "sklearn KMeans (n_init=1)": lambda: SkKMeans(
            args.k, init=init, n_init=1, max_iter=args.max_iter, tol=args.tol, algorithm="lloyd"
        ).fit(x),
        "sklearn MiniBatchKMeans": lambda: MiniBatchKMeans(
            args.k, init=init, n_init=1, max_iter=args.max_iter, random_state=args.seed
        ).fit(x),
    }
    rows = []
    for name, fit in runs.items():
        seconds, model = timed(fit, args.repeats)
        rows.append((name, seconds, model.n_iter_, full_inertia(x, model.cluster_centers_)))
    ref_s, ref_inertia = rows[2][1], rows[2][3]
    print(
        f"\nk-means on {args.n:,} x {args.d} float32, k={args.k}, same k-means++ start, "
        f"max_iter={args.max_iter}, tol={args.tol}; Ray on {args.cpus} CPUs ({args.blocks} "
        f"blocks), scikit-learn on {os.cpu_count()} threads; median of {args.repeats} fits; "
        f"load average at the end {os.getloadavg()[0]:.1f}"
    )
    print(
        f"{'':34s} {'median s':>9s} {'vs sklearn':>10s} {'steps':>6s} {'inertia':>14s} "
        f"{'vs sklearn':>11s}"
    )
    for name, seconds, steps, inertia in rows:
        print(
            f"{name:34s} {seconds:9.2f} {seconds / ref_s:9.2f}x {steps:6d} {inertia:14.6g} "
            f"{(inertia / ref_inertia - 1) * 100:+10.3f}%"
        )


def _generate(batch: dict, n: int, means: np.ndarray, seed: int) -> dict:
    start = int(batch["id"][0]) * CHUNK
    rows = min(CHUNK, n - start)
    return {ID: np.arange(start, start + rows, dtype=np.int64), X: chunk(start, rows, means, seed)}


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def stream(args) -> None:
    means = centres(args.k, args.d, args.seed)
    path = "/tmp/raysift_bench_kmeans_stream"
    shutil.rmtree(path, ignore_errors=True)
    chunks = -(-args.n // CHUNK)
    ray.data.range(chunks, override_num_blocks=chunks).map_batches(
        _generate,
        fn_kwargs={"n": args.n, "means": means, "seed": args.seed},
        batch_size=1,
        batch_format="numpy",
    ).write_parquet(path)
    on_disk = sum(e.stat().st_size for e in os.scandir(path)) / 2**20
    before = peak_rss_mib()
    begin = time.perf_counter()
    km = KMeans(args.k, max_iter=args.max_iter, tol=args.tol, seed=args.seed).fit(
        ray.data.read_parquet(path)
    )
    seconds = time.perf_counter() - begin
    data_mib = args.n * args.d * 4 / 2**20
    print(
        f"\nstreaming k-means: {args.n:,} x {args.d} float32 ({data_mib:,.0f} MiB in memory, "
        f"{on_disk:,.0f} MiB Parquet), k={args.k}, object store capped at "
        f"{args.object_store_mb} MiB, Ray on {args.cpus} CPUs; "
        f"load average at the end {os.getloadavg()[0]:.1f}"
    )
    print(f"{'data / object store':>26s} {data_mib / args.object_store_mb:10.1f}x")
    print(f"{'fit wall time':>26s} {seconds:10.1f} s ({km.n_iter_} Lloyd steps + sample + final)")
    print(f"{'inertia / row':>26s} {km.inertia_ / args.n:10.3f}")
    after = peak_rss_mib()
    print(f"{'driver peak RSS before fit':>26s} {before:10.0f} MiB")
    print(
        f"{'driver peak RSS after fit':>26s} {after:10.0f} MiB (+{after - before:.0f} MiB, "
        f"{(after - before) / data_mib:.3f}x the data)"
    )
    shutil.rmtree(path, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="rows (default 1,000,000)")
    parser.add_argument("--d", type=int, default=40, help="features (default 40)")
    parser.add_argument("--k", type=int, default=50, help="clusters (default 50)")
    parser.add_argument("--max-iter", type=int, default=100, help="default 100")
    parser.add_argument("--tol", type=float, default=1e-4, help="default 1e-4")
    parser.add_argument("--repeats", type=int, default=3, help="fits of each (default 3)")
    parser.add_argument(
        "--blocks",
        type=int,
        default=4,
        help="Dataset blocks (default 4: two tasks per CPU per pass)",
    )
    parser.add_argument("--cpus", type=int, default=2, help="Ray CPUs (default 2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--stream", action="store_true", help="fit from Parquet with a small object store instead"
    )
    parser.add_argument(
        "--object-store-mb",
        type=int,
        default=128,
        help="object store size for --stream (default 128)",
    )
    parser.add_argument(
        "--reservation",
        action="store_true",
        help="keep Ray Data's per-operator CPU reservation (on 2 CPUs it runs "
        "one task at a time; off by default here)",
    )
    args = parser.parse_args()
    ray.init(
        num_cpus=args.cpus,
        include_dashboard=False,
        log_to_driver=False,
        object_store_memory=args.object_store_mb * 2**20 if args.stream else None,
    )
    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.op_resource_reservation_enabled = args.reservation
    stream(args) if args.stream else compare(args)


if __name__ == "__main__":
    main()
