"""M2 against `full` and `random` on the same data and model, in one run.

    .venv/bin/python benchmarks/bench_m2.py [--job configs/demo_mnist1d.yaml] [--seeds 0 1 2]

Prints, per seed, the test accuracy, compute and compute relative to `full` of each strategy,
then the medians over the seeds, and whether M2 met the target (within 0.5 points of `full`
at <= 40% of its compute).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics

from raysift.config import load_job
from raysift.job.compare import compare, comparison_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--job", default="configs/demo_mnist1d.yaml")
    parser.add_argument("--strategies", default="m2,full,random")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--run-dir", default="runs/bench_m2")
    args = parser.parse_args()

    base = load_job(args.job)
    by_strategy: dict[str, list[dict]] = {}
    for seed in args.seeds:
        job = dataclasses.replace(base, seed=seed, run_dir=f"{args.run_dir}/seed{seed}")
        for summary in compare(
            job, args.strategies.split(","), overwrite=True, echo=lambda *_: None
        ):
            by_strategy.setdefault(summary["strategy"], []).append(summary)
        print(f"seed {seed}")
        print(comparison_table([runs[-1] for runs in by_strategy.values()]))

    median = {
        name: {key: statistics.median(r[key] for r in runs) for key in ("test_accuracy", "compute")}
        for name, runs in by_strategy.items()
    }
    print(f"\nmedians over seeds {args.seeds}")
    print(f"{'strategy':<10}{'test acc':>10}{'compute':>12}{'vs full':>9}{'acc - full':>12}")
    full = median.get("full")
    for name, m in median.items():
        rel = m["compute"] / full["compute"] if full else float("nan")
        gap = (m["test_accuracy"] - full["test_accuracy"]) * 100 if full else float("nan")
        print(
            f"{name:<10}{m['test_accuracy']:>10.4f}{m['compute']:>12.0f}{rel:>9.3f}{gap:>+11.2f}p"
        )
    if full and "m2" in median:
        ok = (
            median["m2"]["test_accuracy"] >= full["test_accuracy"] - 0.005
            and median["m2"]["compute"] <= 0.4 * full["compute"]
        )
        print(
            f"\ntarget (M2 within 0.5 points of full at <= 40% of its compute): "
            f"{'met' if ok else 'NOT met'}"
        )


if __name__ == "__main__":
    main()
