"""The learning-rate schedule: one per phase, or one over the whole run.

Each phase (a round, the final phase) used to start its own one-cycle schedule: a fresh
warm-up every round. With every round inside one Ray Train run, one schedule can span the
whole job instead. The run's schedule is torch's own curve (OneCycleLR, or CosineAnnealingLR)
laid over `GRID` steps; a phase covers the stretch of it that its planned share of the run's
training sample-passes takes, so the curve runs on across rounds and reaches its end with
the last phase. The run's length is the plan's (every round adding all it may), which an early
stop can only shorten: the final phase then runs the rest of the curve, so the job always
ends annealed.
"""

from __future__ import annotations

import warnings

import torch

from raysift.config import LR_SCHEDULES

GRID = 10_000  # steps the run's curve is laid over


def planned_train_passes(
    n_train: int,
    initial: int,
    increment: int,
    rounds: int,
    epochs: float,
    final_epochs: float,
) -> float:
    """Training sample-passes of a run whose round r trains `epochs` over
    min(n_train, initial + r * increment) rows, then `final_epochs` over the last subset (a
    pruned epoch may count part of one: pipelines/selection/budget.py)."""
    sizes = [min(n_train, initial + r * increment) for r in range(max(rounds, 1))]
    return epochs * sum(sizes) + final_epochs * sizes[-1]


def phase_span(done: int, phase_passes: int, total: int, last: bool) -> tuple[int, int]:
    """The grid steps [start, end] of a phase that starts after `done` of the run's `total`
    planned training passes and trains `phase_passes`; the `last` phase runs to the end."""
    start = min(GRID, round(GRID * done / max(total, 1)))
    end = GRID if last else min(GRID, round(GRID * (done + phase_passes) / max(total, 1)))
    return start, max(start, end)


def make_scheduler(kind: str, optimizer, max_lr: float, phase_steps: int):
    """The phase's scheduler: its own one-cycle over `phase_steps`, or the run's curve."""
    if kind == "phase":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=max_lr, total_steps=max(1, phase_steps)
        )
    if kind == "run_onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=max_lr, total_steps=GRID)
    if kind == "run_cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=GRID)
    raise ValueError(f"train.lr_schedule: got {kind!r}, expected one of {', '.join(LR_SCHEDULES)}")


def move_to(scheduler, target: int) -> None:
    """Step `scheduler` until it stands at `target` (never back, never past its end)."""
    end = getattr(scheduler, "total_steps", None)
    target = target if end is None else min(target, end)
    with warnings.catch_warnings():  # stepped ahead of the optimiser on purpose
        warnings.simplefilter("ignore", UserWarning)
        while scheduler.last_epoch < target:
            scheduler.step()
