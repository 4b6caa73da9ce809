"""The learning-rate schedule over the whole run: each phase's stretch of one curve."""

import pytest
import torch
from torch import nn

from raysift.config import ConfigError, from_dict
from raysift.job.engine import advance_schedule
from raysift.training.schedule import (
    GRID,
    make_scheduler,
    move_to,
    phase_span,
    planned_train_passes,
)


def _optimizer():
    return torch.optim.SGD([nn.Parameter(torch.zeros(()))], lr=1.0)


def test_planned_train_passes_by_hand():
    # rounds of 100, 150, 200 rows for 3 epochs, then 2 final epochs on 200
    assert planned_train_passes(1000, 100, 50, 3, 3, 2) == 3 * 450 + 2 * 200
    assert planned_train_passes(220, 100, 100, 3, 1, 0) == 100 + 200 + 220  # capped at the set
    assert planned_train_passes(500, 500, 0, 1, 20, 0) == 10000  # full: one phase


def test_a_phase_takes_its_share_of_the_grid_and_the_last_runs_to_the_end():
    assert phase_span(0, 300, 1200, last=False) == (0, GRID // 4)
    assert phase_span(300, 300, 1200, last=False) == (GRID // 4, GRID // 2)
    assert phase_span(600, 100, 1200, last=True) == (GRID // 2, GRID)  # an early stop
    assert phase_span(1500, 300, 1200, last=False) == (GRID, GRID)  # past the plan: held


def test_phase_steps_are_laid_onto_their_stretch():
    scheduler = make_scheduler("run_onecycle", _optimizer(), 1.0, 10)
    move_to(scheduler, 100)
    advance_schedule(scheduler, 0, 4, 10, 10, span=(100, 200, 10))  # halfway through
    assert scheduler.last_epoch == 150
    advance_schedule(scheduler, 0, 9, 10, 10, span=(100, 200, 10))
    assert scheduler.last_epoch == 200


@pytest.mark.parametrize("kind", ["run_onecycle", "run_cosine"])
def test_the_next_phase_starts_at_the_learning_rate_the_last_one_ended_with(kind):
    first = make_scheduler(kind, _optimizer(), 1.0, 8)
    for step in range(8):  # one epoch of 8 steps on the first quarter of the run
        advance_schedule(first, 0, step, 8, 8, span=(0, GRID // 4, 8))
    ended = first.get_last_lr()[0]
    second = make_scheduler(kind, _optimizer(), 1.0, 20)  # a new phase, a new optimiser
    move_to(second, GRID // 4)
    assert second.get_last_lr()[0] == pytest.approx(ended)
    for step in range(20):
        advance_schedule(second, 0, step, 20, 20, span=(GRID // 4, GRID, 20))
    assert second.get_last_lr()[0] < 1e-3  # the run's end: annealed


def test_the_per_phase_schedule_is_each_phase_its_own_one_cycle():
    scheduler = make_scheduler("phase", _optimizer(), 1.0, 12)
    assert scheduler.total_steps == 12
    with pytest.raises(ConfigError, match="train.lr_schedule: got 'linear'"):
        from_dict({"train": {"lr_schedule": "linear"}})
