"""Strategies and M2 variants over several seeds: mean ± std against `full` of the same seed.

    .venv/bin/python benchmarks/bench_seeds.py [--job configs/demo_mnist1d.yaml] [--seeds 0,1,2]
        [--variants m2,m2-all] [--budget-fraction 0.3] [--set source.num_samples=20000 ...]
        [--root runs/bench_seeds] [--repeats 3]

Runs the baselines (`full`, `infobatch`, `seta`) and each variant of VARIANTS (M2's options, and
`random` on M2's plan) once per seed
under ROOT/seed<k>/<label>/, as `raysift compare --seeds` does, but with several M2 variants
side by side (one job cannot hold two M2 configurations). A finished run (its summary.json is
there) is read, not run again, so the seeds can be run a few at a time and the table grows.
Prints the seeds' table (pipelines/report/seeds.py: test accuracy, points under `full`, compute
and wall time against `full`, the compute and wall time to come within 0.5 points) and writes
ROOT/seeds.json, ROOT/comparison.md and ROOT/accuracy.png.

`--repeats N` runs every (seed, label) N times, the repeats interleaved so that a noisy spell
of a shared machine falls on all labels alike, and keeps each one's median run by wall time:
the same seed gives the same selections and numbers, so only the wall clock differs between
repeats. Each label's wall seconds per repeat are printed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

from raysift.config import load_job
from raysift.job.rounds import SUMMARY, init_ray, run_job
from raysift.report.comparison import write_report
from raysift.report.seeds import SEEDS_JSON, seeds_text, write_seeds_report
from raysift.run_state import atomic_write_json

BASELINES = ("full", "infobatch", "seta")
# label -> overrides of the job for an M2 run. The planned knobs are set to null so the budget
# plans them (the demo job sets them by hand).
PLANNED_NULL = {
    "strategy.initial_ratio": None,
    "strategy.hard_per_round": None,
    "strategy.reps_per_round": None,
    "strategy.max_rounds": None,
    "train.epochs_per_round": None,
    "train.final_epochs": None,
}
# The planner's starting points until they became 3 rounds of 2 epochs from 20 % (budget.py's
# DEFAULT_*): 4 rounds of 3 epochs from 10 %, pinned so that each variant below measures what
# RESULTS.md reports under its name.
BEFORE = {"strategy.max_rounds": 4, "train.epochs_per_round": 3, "strategy.initial_ratio": 0.1}
# ... and the representatives' rule until the seeded draw across each cluster became the default
NEAREST = {"strategy.reps_pick": "nearest"}
SPREAD = {"strategy.reps_pick": "spread"}
# the budget plan (--budget-fraction replaces its share)
PLAN = {"strategy.budget_fraction": 0.3, **PLANNED_NULL, **BEFORE, **NEAREST}
SCHED = {"train.lr_schedule": "run_onecycle"}
FILL = {"strategy.hard_fill": "margin"}
PRUNE = {"strategy.round_prune_ratio": 0.3}
PRUNE_HALF = {"strategy.round_prune_ratio": 0.5}
PRUNE_MOST = {"strategy.round_prune_ratio": 0.7}
FINAL_3 = {"train.final_epochs": 3}
WIDE = {**PLAN, **SCHED, **FILL, "strategy.max_rounds": 3, "train.epochs_per_round": 2}
START = {"strategy.initial_ratio": 0.2}  # with WIDE: the planner's own defaults since then
BUDGET_EPOCHS = object()  # stands for --budget-fraction of the job's strategy.epochs
# stands for the epochs at which a pruning baseline spends --budget-fraction of `full`'s compute,
# from its own run of the job's epochs on the same seed (spend_epochs)
SPEND_EPOCHS = object()
VARIANTS = {
    "m2": NEAREST,
    "m2-plan": PLAN,
    "m2-all": {**PLAN, **SCHED, **FILL, "train.final_keep_best": True},
    # the two changes that paid, without the one that did not (final_keep_best)
    "m2-sched-fill": {**PLAN, **SCHED, **FILL},
    # the same, planned over 3 rounds of 2 epochs: the budget buys more rows instead of epochs
    "m2-wide": WIDE,
    # ... with twice the first round's rows, or InfoBatch's pruning inside the rounds' epochs
    "m2-wide-start": {**WIDE, **START},
    "m2-wide-prune": {**WIDE, **PRUNE},
    "m2-wide-start-prune": {**WIDE, **START, **PRUNE},
    # ... with the whole increment hard (mispredictions, then the margin fill), no
    # representatives: where a round adds most of the pool, the rows near the boundary
    "m2-wide-start-hard": {**WIDE, **START, "strategy.reps_per_round": 0},
    # ... from a 30 % first subset, or in 2 rounds of 3 epochs: the planner's starting points
    # moved on the way that paid on Fashion-MNIST (fewer, larger rounds)
    "m2-wide-start-30": {**WIDE, "strategy.initial_ratio": 0.3},
    "m2-2x3-start": {**WIDE, **START, "strategy.max_rounds": 2, "train.epochs_per_round": 3},
    # representatives drawn across each cluster instead of its core (the default since), on
    # the demo job and on the planner's defaults; then with half of each increment hard
    "m2-spread": SPREAD,
    "m2-spread-prune-half": {**SPREAD, **PRUNE_HALF},
    "m2-wide-start-spread": {**WIDE, **START, **SPREAD},
    "m2-wide-start-spread-half": {
        **WIDE,
        **START,
        **SPREAD,
        "strategy.hard_per_round": 7708,
        "strategy.reps_per_round": 7708,
    },
    # ... with InfoBatch's pruning inside the phases (`r` 0.3, then 0.5): what it saves, the
    # planner spends on more rows a round
    "m2-wide-start-spread-prune": {**WIDE, **START, **SPREAD, **PRUNE},
    "m2-wide-start-spread-prune-half": {**WIDE, **START, **SPREAD, **PRUNE_HALF},
    # ... and, without the pruning, the final phase of 3 epochs alone
    "m2-wide-start-spread-f3": {**WIDE, **START, **SPREAD, **FINAL_3},
    # ... with seven in ten of them pruned
    "m2-wide-start-spread-prune-most": {**WIDE, **START, **SPREAD, **PRUNE_MOST},
    # ... with half, and a final phase of 3 epochs: what pruning saves as passes over the
    # rows the model has not learned yet
    "m2-wide-start-spread-prune-half-f3": {**WIDE, **START, **SPREAD, **PRUNE_HALF, **FINAL_3},
    # each change alone on top of the plan
    "m2-plan-sched": {**PLAN, **SCHED},
    "m2-plan-best": {**PLAN, "train.final_keep_best": True},
    "m2-plan-fill": {**PLAN, **FILL},
    "m2-plan-prune": {**PLAN, **PRUNE},
    # random additions on M2's plan and schedule: the equal-compute control
    "random-plan": {**PLAN, **SCHED, "strategy.name": "random"},
    # `full` cut to the budget's share of its epochs, its schedule whole: the plain way to
    # spend the same compute, which a selection has to beat
    "full-short": {"strategy.name": "full", "strategy.epochs": BUDGET_EPOCHS},
    # InfoBatch and SeTa cut to the same compute, their schedules whole: equal compute
    "infobatch-short": {"strategy.name": "infobatch", "strategy.epochs": SPEND_EPOCHS},
    "seta-short": {"strategy.name": "seta", "strategy.epochs": SPEND_EPOCHS},
}
DEFAULT_VARIANTS = ("m2", "m2-plan", "m2-all")


def run_one(
    job_file: str, overrides: dict, seed: int, strategy: str, label: str, root: Path, rep: int = 0
) -> dict:
    run_dir = root / f"seed{seed}" / (label if rep == 0 else f"{label}.rep{rep}")
    done = run_dir / SUMMARY
    if done.exists():
        summary = json.loads(done.read_text())
    else:
        job = load_job(
            job_file,
            {
                **overrides,
                "seed": seed,
                "run_dir": str(run_dir),
                "name": f"{label}-s{seed}-r{rep}",
                "strategy.name": strategy,
            },
        )
        summary = run_job(job, overwrite=True, echo=lambda *_: None)
    return {**summary, "strategy": label, "seed": seed}


def spend_epochs(fraction: float, epochs: int, own: dict, full: dict) -> int:
    """The epochs at which a strategy that spent `own["compute"]` over `epochs` spends
    `fraction` of `full`'s compute: its share of `full`'s per epoch taken as it was (InfoBatch's
    and SeTa's pruned share and full-data tail scale with the epochs)."""
    return max(1, round(fraction * epochs * full["compute"] / own["compute"]))


def median_by_wall(repeats: list[dict]) -> dict:
    """The repeat whose wall time is the median (the lower one of an even count): a whole run,
    so its reach on the wall clock comes from the same records as its total."""
    ordered = sorted(repeats, key=lambda s: s["wall_seconds"]["total"])
    return ordered[(len(ordered) - 1) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--job", default="configs/demo_mnist1d.yaml")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--root", default="runs/bench_seeds")
    parser.add_argument(
        "--variants", default=",".join(DEFAULT_VARIANTS), help=f"of {', '.join(VARIANTS)}"
    )
    parser.add_argument("--baselines", default=",".join(BASELINES))
    parser.add_argument(
        "--budget-fraction", type=float, default=0.3, help="of full's compute, for planned variants"
    )
    parser.add_argument("--repeats", type=int, default=1, help="runs per seed and label")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats: {args.repeats}, expected 1 or more")
    common = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}
    root = Path(args.root)
    epochs = load_job(args.job, common).strategy.epochs
    # (strategy, label, overrides) of every run a seed makes, the same for every seed
    # (SPEND_EPOCHS resolved per seed, from the seed's own runs)
    runs = [(name, name, {}) for name in args.baselines.split(",") if name]
    for label in filter(None, args.variants.split(",")):
        overrides = dict(VARIANTS[label])
        if "strategy.budget_fraction" in overrides:
            overrides["strategy.budget_fraction"] = args.budget_fraction
        if overrides.get("strategy.epochs") is BUDGET_EPOCHS:
            overrides["strategy.epochs"] = max(1, round(args.budget_fraction * epochs))
        strategy = overrides.pop("strategy.name", "m2")
        if overrides.get("strategy.epochs") is SPEND_EPOCHS and not {"full", strategy} <= {
            name for name, _, _ in runs
        }:
            parser.error(f"--variants {label}: needs --baselines with full and {strategy}")
        runs.append((strategy, label, overrides))
    init_ray()
    summaries = []
    for seed in (int(s) for s in args.seeds.split(",")):
        repeats = {label: [] for _, label, _ in runs}
        for rep in range(args.repeats):
            for strategy, label, overrides in runs:
                if overrides.get("strategy.epochs") is SPEND_EPOCHS:
                    own, full = repeats[strategy][0], repeats["full"][0]
                    spend = spend_epochs(args.budget_fraction, epochs, own, full)
                    overrides = {**overrides, "strategy.epochs": spend}
                s = run_one(args.job, {**common, **overrides}, seed, strategy, label, root, rep)
                print(
                    f"seed {seed} {label} repeat {rep}: test {s['test_accuracy']:.4f}, compute "
                    f"{s['compute']:.0f}, wall {s['wall_seconds']['total']:.0f} s",
                    flush=True,
                )
                repeats[label].append(s)
        mine = [median_by_wall(r) for r in repeats.values()]
        write_report(root / f"seed{seed}", mine)
        summaries += mine
    atomic_write_json(root / SEEDS_JSON, summaries)
    write_seeds_report(root, summaries)
    print(seeds_text(summaries))
    plans = {s["strategy"]: s["plan"] for s in summaries if s.get("plan")}
    for label, plan in plans.items():
        print(
            f"{label} plan: "
            + ", ".join(
                f"{k} {v:.0f}" if isinstance(v, float) else f"{k} {v}" for k, v in plan.items()
            )
        )


if __name__ == "__main__":
    main()
