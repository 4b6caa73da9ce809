"""A compute budget instead of knobs: plan M2's rounds from a share of `full`'s compute.

A user knows "give me full accuracy for 30 % of the cost", not how many rows to add per round.
`strategy.budget_fraction` says the share; this module turns it, the training-set size and
`full`'s epochs into the rounds, the rows added per round and the final phase, and leaves the
knobs the job sets by hand as they are.

Costs are the engine's sample-passes (pipelines/run_state.py `compute_totals`: train + infer / 3),
counted as upper bounds so a plan never spends more than the budget: each pool scan is counted
over the whole pool (the early stop can only save), and a validation counts wherever the job
validates. With `strategy.round_prune_ratio` an epoch that InfoBatch's rule prunes counts only
the rows it keeps when half the rows score below the mean (`BELOW_MEAN_SHARE`), so the budget
buys the rows that pruning saves instead of leaving them unspent. The DDP padding of an epoch
(a few rows where the ranks' shares differ) is not in the plan: the plan's budget becomes the
job's `strategy.budget`, which stops the rounds when the real spend reaches it, and the run's
last phase trains only the whole steps that fit in it (`rows_within`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from raysift.config import PLANNED_KEYS, ConfigError, JobConfig
from raysift.selection.infobatch import pruned_epochs
from raysift.training.schedule import planned_train_passes

# What a free knob starts from before the budget decides the rows added per round: few rounds
# of few epochs from a larger first subset, so the budget buys rows rather than epochs over
# small subsets. Measured against 4 rounds of 3 epochs from 10 % on three jobs (RESULTS.md,
# "The planner's defaults"): level on the demo, ahead on Fashion-MNIST and the long tail.
DEFAULT_ROUNDS = 3
DEFAULT_EPOCHS = 2
DEFAULT_INITIAL_RATIO = 0.2
HARD_SHARE = 2 / 3  # of the rows added per round, the mispredictions (M2's 2000 : 1000)
# The share of a phase's rows the plan takes to score below the mean loss in a pruned epoch.
# Training losses are right-skewed (most rows near zero, a tail of hard ones: the mean lies
# above the median), so more than half do (about 0.73 on Fashion-MNIST: RESULTS.md) and the
# plan's count stays high; where fewer do, the budget still holds: the last phase stops at it.
BELOW_MEAN_SHARE = 0.5


@dataclass(frozen=True)
class Plan:
    """Rows and epochs of a budgeted M2 run, and the compute they cost at most (pruned epochs
    as `planned_compute` counts them)."""

    initial: int  # rows of round 0
    hard: int  # mispredictions to add per round
    reps: int  # cluster representatives to add per round
    rounds: int
    epochs: int  # per round
    final_epochs: int
    compute: float  # the plan's upper bound, in sample-passes
    budget: float  # budget_fraction of full's compute
    full_compute: float

    @property
    def increment(self) -> int:
        return self.hard + self.reps


def full_compute(n_train: int, n_val: int, epochs: int, val_every_epoch: bool) -> float:
    """`full`'s compute: every row each epoch, and its validations (a third of a pass each)."""
    return n_train * epochs + n_val * (epochs if val_every_epoch else 1) / 3


def pruned_epochs_cost(epochs: int, prune_ratio: float, anneal_delta: float) -> float:
    """A phase of `epochs` in passes over its rows, with InfoBatch's rule inside it (its scores
    start over each phase: pipelines/selection/strategies.py `Policy.plan_epoch`): a pruned
    epoch leaves out `prune_ratio` of the rows below the mean, counted as `BELOW_MEAN_SHARE`."""
    if not prune_ratio:
        return epochs
    return epochs - pruned_epochs(epochs, anneal_delta) * prune_ratio * BELOW_MEAN_SHARE


def planned_compute(
    n_train: int,
    n_val: int,
    initial: int,
    increment: int,
    rounds: int,
    epochs: int,
    final_epochs: int,
    val_every_epoch: bool,
    prune: tuple[float, float] = (0.0, 1.0),
) -> float:
    """What a run of these sizes spends at most: round r trains `epochs` passes over
    min(n_train, initial + r * increment) rows; every round but the last scans its whole pool;
    the final phase trains `final_epochs` over the last subset; validations as the job does.
    `prune`: (round_prune_ratio, anneal_delta), the pruned epochs counted as above."""
    sizes = [min(n_train, initial + r * increment) for r in range(rounds)]
    train = planned_train_passes(
        n_train,
        initial,
        increment,
        rounds,
        pruned_epochs_cost(epochs, *prune),
        pruned_epochs_cost(final_epochs, *prune),
    )
    scans = sum(n_train - s for s in sizes[:-1]) / 3
    validations = rounds * (epochs if val_every_epoch else 1) + (
        final_epochs if val_every_epoch else min(final_epochs, 1)
    )
    return train + scans + validations * n_val / 3


def plan_budget(
    fraction: float,
    n_train: int,
    n_val: int,
    full_epochs: int,
    val_every_epoch: bool,
    *,
    initial_ratio: float | None = None,
    hard: int | None = None,
    reps: int | None = None,
    rounds: int | None = None,
    epochs: int | None = None,
    final_epochs: int | None = None,
    prune: tuple[float, float] = (0.0, 1.0),
) -> Plan:
    """The plan within `fraction` of full's compute; a knob given (not None) is kept as given.

    Free knobs start at 3 rounds of 2 epochs, a final phase of one round's epochs and a 20 %
    first subset; the rows added per round are then the most the budget allows (two thirds of
    them mispredictions), up to the whole training set. When even the smallest addition does
    not fit, the free knobs shrink in turn: final epochs, then rounds, then the first subset.
    A ConfigError names budget_fraction when the hand-set knobs alone spend more. `prune` as
    in `planned_compute`.
    """
    budget = fraction * full_compute(n_train, n_val, full_epochs, val_every_epoch)
    e = DEFAULT_EPOCHS if epochs is None else epochs
    f = e if final_epochs is None else final_epochs
    r = DEFAULT_ROUNDS if rounds is None else rounds
    ratio = DEFAULT_INITIAL_RATIO if initial_ratio is None else initial_ratio
    initial = min(n_train, max(1, math.floor(ratio * n_train + 0.5)))
    fixed = (hard or 0) + (reps or 0)
    both_fixed = hard is not None and reps is not None

    def cost(init: int, inc: int, r_: int, f_: int) -> float:
        return planned_compute(n_train, n_val, init, inc, r_, e, f_, val_every_epoch, prune)

    def least(r_: int) -> int:
        """The smallest addition a plan of `r_` rounds may have."""
        return fixed if (both_fixed or r_ == 1) else max(fixed, 1)

    while cost(initial, least(r), r, f) > budget:
        if final_epochs is None and f > 0:
            f -= 1
        elif rounds is None and r > 1:
            r -= 1
        elif initial_ratio is None and initial > 1:
            fits = lambda i, r_=r, f_=f: cost(i, least(r_), r_, f_) <= budget  # noqa: E731
            initial = _largest(1, initial - 1, fits) or 1
            if cost(initial, least(r), r, f) > budget:
                raise _over(fraction, budget, cost(initial, least(r), r, f))
        else:
            raise _over(fraction, budget, cost(initial, least(r), r, f))
    if both_fixed or r == 1:
        inc = fixed
    else:  # the most rows per round the budget allows; more than fill the set buys nothing
        top = max(least(r), math.ceil((n_train - initial) / (r - 1)))
        inc = _largest(least(r), top, lambda i: cost(initial, i, r, f) <= budget)
    if r == 1:
        h, p = hard or 0, reps or 0
    elif hard is None and reps is None:
        h = round(inc * HARD_SHARE)
        h, p = h, inc - h
    else:
        h, p = (hard, inc - hard) if reps is None else (inc - reps, reps)
    return Plan(
        initial=initial,
        hard=h,
        reps=p,
        rounds=r,
        epochs=e,
        final_epochs=f,
        compute=cost(initial, h + p, r, f),
        budget=budget,
        full_compute=full_compute(n_train, n_val, full_epochs, val_every_epoch),
    )


def rows_within(left: float, world: int, batch: int, length: int) -> int:
    """The rows per rank an epoch of `length` rows per rank (padded alike on every rank) may
    train with `left` sample-passes to spend: all of them, else the whole steps of `batch` rows
    that fit."""
    if length * world <= left:
        return length
    return max(0, math.floor(left / (world * batch))) * batch


def _largest(lo: int, hi: int, fits) -> int | None:
    """The largest i in [lo, hi] with fits(i), for `fits` true up to some point and false
    after it; None when fits(lo) is false."""
    if not fits(lo):
        return None
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    return lo


def _over(fraction: float, budget: float, need: float) -> ConfigError:
    return ConfigError(
        f"strategy.budget_fraction: got {fraction}, the knobs set by hand need "
        f"at least {need:.0f} sample-passes against a budget of {budget:.0f}; "
        f"raise it or set fewer knobs"
    )


def apply_budget(
    job: JobConfig, n_train: int, n_val: int, plans: bool
) -> tuple[JobConfig, Plan | None]:
    """The job with its planned knobs (None: left to the plan) filled in: by the plan when the
    strategy `plans` (it grows a subset by rounds) and budget_fraction is set, else with the
    defaults; a plan's budget becomes `strategy.budget` too (the smaller, where the job sets
    one). Returns the plan too (None when there was none)."""
    s, t = job.strategy, job.train
    plan = None
    if plans and s.budget_fraction is not None:
        ratio = s.initial_ratio
        plan = plan_budget(
            s.budget_fraction,
            n_train,
            n_val,
            s.epochs,
            t.val_every_epoch,
            initial_ratio=ratio,
            hard=s.hard_per_round,
            reps=s.reps_per_round,
            rounds=s.max_rounds,
            epochs=t.epochs_per_round,
            final_epochs=t.final_epochs,
            prune=(s.round_prune_ratio, s.anneal_delta),
        )
        values = {
            "strategy": {
                "initial_ratio": plan.initial / n_train if ratio is None else ratio,
                "hard_per_round": plan.hard,
                "reps_per_round": plan.reps,
                "max_rounds": plan.rounds,
            },
            "train": {"epochs_per_round": plan.epochs, "final_epochs": plan.final_epochs},
        }
    else:
        values = {section: {} for section in PLANNED_KEYS}
    sections = {}
    for section, keys in PLANNED_KEYS.items():
        config = getattr(job, section)
        defaults = {f.name: f.default for f in dataclasses.fields(config)}
        filled = {
            k: values[section].get(k, defaults[k]) for k in keys if getattr(config, k) is None
        }
        sections[section] = dataclasses.replace(config, **filled)
    if plan is not None:  # the run stops where the plan's budget is spent (rows_within)
        budget = plan.budget if s.budget is None else min(s.budget, plan.budget)
        sections["strategy"] = dataclasses.replace(sections["strategy"], budget=budget)
    return dataclasses.replace(job, **sections).validate(), plan
