"""M2's de-duplication claim (issue 13, item 4), measured on MNIST-1D augmented offline.

The source claims that M2's clustering removes the redundancy offline augmentation adds. Here the
training rows get `--copies` noisy copies each (`raysift augment --transforms noise:S`), then
four runs on the same validation and test rows (real rows only, split by id hash):

    full-original   `full` on the real rows alone
    full-augmented  `full` on the real rows and their copies
    m2              M2 on the augmented rows, representatives as the source picks them
    m2-dedup        the same with strategy.reps_dedup: a representative within D of one already
                    chosen that round (in raw x: cluster_on x) is passed over for the next

D is set from the data, between the two distances it must tell apart: twice the median distance
of a copy to its original, and below the median distance of an original to its nearest other
original (both printed). The table gives the subset, how many representatives were copies of a
sample already represented, compute (sample-passes: train + infer / 3) and wall seconds against
`full-augmented`, and test accuracy.

    .venv/bin/python benchmarks/bench_dedup.py [--samples 5000] [--copies 4] [--seeds 0]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from ray.data.extensions import ArrowTensorArray

from raysift.batch.augment import augment_job
from raysift.config import from_dict
from raysift.data.sources import MNIST1D_SEED, _mnist1d_arrays
from raysift.job.rounds import init_ray, run_job
from raysift.manifest import MANIFEST
from raysift.operators.contract import ID

ROOT_MASK = 2**32 - 1  # an augmented row's id is copy * 2**32 + its original's id


def originals(path: Path, n: int) -> np.ndarray:
    data = _mnist1d_arrays(n, MNIST1D_SEED)
    x = data["x"].astype(np.float32)[:, None, :]
    table = pa.table(
        {
            ID: pa.array(np.arange(len(x)), pa.int64()),
            "label": pa.array(data["y"], pa.int64()),
            "x": ArrowTensorArray.from_numpy(x),
        }
    )
    pq.write_table(table, path)
    return x[:, 0]


def threshold(x: np.ndarray, noise: float, rng: np.random.Generator) -> tuple[float, float, float]:
    """(D, median copy-to-original distance, median nearest-original distance), on a sample."""
    sample = x[rng.choice(len(x), min(500, len(x)), replace=False)]
    copy = float(np.median(np.linalg.norm(rng.normal(0, noise, sample.shape), axis=1)))
    d = np.linalg.norm(sample[:, None] - sample[None], axis=2)
    np.fill_diagonal(d, np.inf)
    nearest = float(np.median(d.min(1)))
    return min(2 * copy, nearest / 2), copy, nearest


def job(name: str, path: Path, run_dir: Path, seed: int, strategy: dict, train_rows: int) -> dict:
    hard = max(100, train_rows // 25)
    return {
        "name": name,
        "seed": seed,
        "run_dir": str(run_dir / name),
        "source": {"kind": "parquet", "path": str(path), "val_fraction": 0.1, "test_fraction": 0.2},
        "model": {"name": "cnn1d"},
        "train": {
            "num_workers": 2,
            "batch_size": 128,
            "epochs_per_round": 3,
            "lr": 0.01,
            "weight_decay": 0.0001,
            "final_epochs": 10,
        },
        "strategy": {
            "initial_ratio": 0.1,
            "hard_per_round": hard,
            "reps_per_round": hard // 2,
            "cluster_k": 20,
            "cluster_on": "x",
            "max_rounds": 4,
            "epochs": 20,
            **strategy,
        },
    }


def repeated_reps(run_dir: Path) -> tuple[int, int]:
    """(representatives, those whose original another chosen row already stands for)."""
    m = pq.read_table(run_dir / MANIFEST).to_pandas()
    chosen_roots = set((m[ID][m["reason"] != "representative"] & ROOT_MASK).tolist())
    reps = m[m["reason"] == "representative"].sort_values(["round", ID])
    repeated = 0
    for root in (reps[ID] & ROOT_MASK).tolist():
        repeated += root in chosen_roots
        chosen_roots.add(root)
    return len(reps), repeated


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=5000, help="MNIST-1D samples (80%% train part)")
    p.add_argument("--copies", type=int, default=4)
    p.add_argument("--noise", type=float, default=0.05, help="std of the copies' Gaussian noise")
    p.add_argument("--seeds", default="0")
    args = p.parse_args()
    init_ray()
    work = Path(tempfile.mkdtemp(prefix="bench-dedup-"))
    orig = work / "original.parquet"
    x = originals(orig, args.samples)
    augmented = work / "augmented"
    augment_job(str(orig), str(augmented), f"noise:{args.noise}", copies=args.copies, seed=0)
    d, copy, nearest = threshold(x, args.noise, np.random.default_rng(0))
    print(
        f"{len(x)} originals, {args.copies} copies each; copy-to-original median {copy:.3f}, "
        f"nearest other original median {nearest:.3f}: D = {d:.3f}"
    )
    runs = {
        "full-original": (orig, {"name": "full"}),
        "full-augmented": (augmented, {"name": "full"}),
        "m2": (augmented, {"name": "m2"}),
        "m2-dedup": (augmented, {"name": "m2", "reps_dedup": d}),
    }
    results = {name: [] for name in runs}
    for seed in [int(s) for s in args.seeds.split(",")]:
        for name, (path, strategy) in runs.items():
            raw = job(name, path, work / f"seed{seed}", seed, strategy, len(x))
            t = time.perf_counter()
            summary = run_job(from_dict(raw), echo=lambda *_: None)
            reps, repeated = repeated_reps(work / f"seed{seed}" / name)
            results[name].append((summary, time.perf_counter() - t, reps, repeated))
            print(f"seed {seed} {name}: done in {results[name][-1][1]:.0f} s", flush=True)

    def med(name, f):
        return statistics.median(f(r) for r in results[name])

    base_compute = med("full-augmented", lambda r: r[0]["compute"])
    base_wall = med("full-augmented", lambda r: r[1])
    print(f"\nmedians over seeds {args.seeds}; ratios against full-augmented")
    head = (
        "run              train rows  subset  reps  repeated  compute  vs full  "
        "wall s  vs full  test acc"
    )
    print(head + "\n" + "-" * len(head))
    for name in runs:
        rows = med(name, lambda r: r[0]["train_rows"]["real"] + r[0]["train_rows"]["synthetic"])
        compute, wall = med(name, lambda r: r[0]["compute"]), med(name, lambda r: r[1])
        print(
            f"{name:<16} {rows:>10.0f}  {med(name, lambda r: r[0]['subset_size']):>6.0f}  "
            f"{med(name, lambda r: r[2]):>4.0f}  {med(name, lambda r: r[3]):>8.0f}  "
            f"{compute:>7.0f}  {compute / base_compute:>7.3f}  {wall:>6.0f}  "
            f"{wall / base_wall:>7.3f}  {med(name, lambda r: r[0]['test_accuracy']):>8.4f}"
        )


if __name__ == "__main__":
    main()
