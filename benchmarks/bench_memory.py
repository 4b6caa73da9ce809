"""Worker memory against data size: `full` and M2 on MNIST-1D training sets past the cache.

    .venv/bin/python benchmarks/bench_memory.py [--sizes 60000 240000 960000] [--cache-mb 16]

Each size is a whole job with `train.cache_mb` fixed: past it, a worker's rows spill to a file
on local disk. Prints, per size and strategy, the train split's features per worker against the
budget, the workers' peak resident memory (the largest over ranks and phases, as each worker
measures it), the compute (sample-passes), the wall time and the test accuracy. A flat peak as
the data grows is the point; short schedules keep the large sizes affordable on two cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import math

from raysift.config import from_dict
from raysift.data.ingest import load_info
from raysift.job.rounds import init_ray, run_job


def job_for(size: int, strategy: str, cache_mb: int, run_dir: str):
    return from_dict(
        {
            "name": f"mem-{strategy}-{size}",
            "seed": 0,
            "run_dir": f"{run_dir}/{strategy}-{size}",
            "source": {"kind": "mnist1d", "num_samples": size, "val_fraction": 0.05},
            "model": {"name": "cnn1d"},
            "train": {
                "num_workers": 2,
                "batch_size": 512,
                "lr": 0.01,
                "epochs_per_round": 1,
                "final_epochs": 1,
                "cache_mb": cache_mb,
            },
            "strategy": {
                "name": strategy,
                "epochs": 2,
                "initial_ratio": 0.05,
                "hard_per_round": 2000,
                "reps_per_round": 1000,
                "max_rounds": 2,
            },
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[60000, 240000, 960000])
    parser.add_argument("--cache-mb", type=int, default=16)
    parser.add_argument("--strategies", default="full,m2")
    parser.add_argument("--run-dir", default="runs/bench_memory")
    args = parser.parse_args()
    init_ray()
    print(
        f"{'strategy':<9}{'samples':>9}{'MB/worker':>10}{'x budget':>9}{'peak RSS MB':>12}"
        f"{'compute':>10}{'wall s':>8}{'test acc':>9}",
        flush=True,
    )
    for size in args.sizes:
        for strategy in args.strategies.split(","):
            job = job_for(size, strategy, args.cache_mb, args.run_dir)
            s = run_job(dataclasses.replace(job), overwrite=True, echo=lambda *_: None)
            info = load_info(f"{job.run_dir}/data")
            row_bytes = 4 * math.prod(info.x_shape)
            per_worker = info.counts["train"] * row_bytes / job.train.num_workers / 2**20
            print(
                f"{strategy:<9}{size:>9}{per_worker:>10.1f}{per_worker / args.cache_mb:>9.1f}"
                f"{s['peak_rss_mb']:>12.0f}{s['compute']:>10,.0f}{s['wall_seconds']['total']:>8.0f}"
                f"{s['test_accuracy']:>9.4f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
