"""The budget planner on hand-made sizes: the plan never spends more than its share of full's
compute, keeps the knobs set by hand, fills the job's planned keys and caps the job at its
budget; the rows of an epoch the budget still leaves."""

import pytest

from raysift.config import ConfigError, from_dict
from raysift.selection.budget import (
    apply_budget,
    full_compute,
    plan_budget,
    planned_compute,
    pruned_epochs_cost,
    rows_within,
)


def test_full_compute_counts_every_row_each_epoch_and_its_validations():
    assert full_compute(1000, 300, 10, False) == 10000 + 100
    assert full_compute(1000, 300, 10, True) == 10000 + 1000


def test_planned_compute_by_hand():
    # sizes 100, 123, 146, 169; scans after rounds 0-2 over pools 900, 877, 854
    got = planned_compute(1000, 0, 100, 23, 4, 3, 3, False)
    assert got == 3 * (100 + 123 + 146 + 169) + 3 * 169 + (900 + 877 + 854) / 3
    # 4 rounds x 2 validations + 3 final ones, 30 rows each, a third of a pass
    assert planned_compute(1000, 30, 100, 0, 4, 2, 3, True) - planned_compute(
        1000, 0, 100, 0, 4, 2, 3, True
    ) == pytest.approx((4 * 2 + 3) * 10)
    # the subset never grows past the training set
    assert planned_compute(100, 0, 50, 40, 3, 1, 0, False) == 50 + 90 + 100 + (50 + 10) / 3


def test_the_default_plan_by_hand():
    # full: 1000 rows x 10 epochs; 30 % is 3000. 3 rounds of 2 epochs from 200 rows, 2 final
    # epochs: training 2 * (600 + 3 i) + 2 * (200 + 2 i) = 1600 + 10 i, scans after rounds 0
    # and 1 over pools 800 and 800 - i: 1600 + 10 i + (1600 - i) / 3 <= 3000, so i = 89
    # rows a round (90 would cost 3003.3), 59 of them hard.
    plan = plan_budget(0.3, 1000, 0, 10, False)
    assert (plan.initial, plan.rounds, plan.epochs, plan.final_epochs) == (200, 3, 2, 2)
    assert (plan.hard, plan.reps) == (59, 30)
    assert plan.compute == pytest.approx(1600 + 10 * 89 + (1600 - 89) / 3)
    assert plan.compute <= plan.budget == 3000
    assert planned_compute(1000, 0, 200, 90, 3, 2, 2, False) > 3000


@pytest.mark.parametrize("n", [10, 97, 1000, 48000])
@pytest.mark.parametrize("n_val", [0, 13, 5000])
@pytest.mark.parametrize("fraction", [0.01, 0.1, 0.3, 0.5, 1.0])
@pytest.mark.parametrize("val_every", [False, True])
def test_never_plans_past_the_budget(n, n_val, fraction, val_every):
    try:
        plan = plan_budget(fraction, n, n_val, 20, val_every)
    except ConfigError:  # a budget below even one epoch on one row: refused, not overspent
        assert fraction * full_compute(n, n_val, 20, val_every) < planned_compute(
            n, n_val, 1, 0, 1, 3, 0, val_every
        )
        return
    again = planned_compute(
        n,
        n_val,
        plan.initial,
        plan.increment,
        plan.rounds,
        plan.epochs,
        plan.final_epochs,
        val_every,
    )
    assert again == plan.compute <= plan.budget
    assert 1 <= plan.initial <= n and plan.rounds >= 1
    if plan.rounds > 1:
        assert plan.increment >= 1
        # one more row a round would not fit, unless the set is already full
        more = planned_compute(
            n,
            n_val,
            plan.initial,
            plan.increment + 1,
            plan.rounds,
            plan.epochs,
            plan.final_epochs,
            val_every,
        )
        assert more > plan.budget or plan.initial + (plan.rounds - 1) * plan.increment >= n


def test_hand_set_knobs_stay_and_the_rest_fits_around_them():
    plan = plan_budget(0.3, 1000, 0, 10, False, rounds=2, hard=50, epochs=5, final_epochs=0)
    assert (plan.rounds, plan.hard, plan.epochs, plan.final_epochs) == (2, 50, 5, 0)
    # 5 * (200 + 200 + inc) + 800 / 3 <= 3000: inc 146, so 96 representatives
    assert plan.reps == 96 and plan.compute <= 3000


def test_a_tight_budget_shrinks_the_final_phase_then_the_rounds():
    plan = plan_budget(0.05, 1000, 0, 10, False)  # 500: round 0 alone costs 400
    assert plan.final_epochs == 0 and plan.rounds == 1 and plan.compute <= 500
    assert plan.hard == plan.reps == 0


def test_hand_set_knobs_over_the_budget_are_refused_by_name():
    with pytest.raises(ConfigError, match="strategy.budget_fraction: got 0.05"):
        plan_budget(0.05, 1000, 0, 10, False, rounds=4, final_epochs=3)


def test_the_job_leaves_the_planned_keys_to_the_plan_and_keeps_the_ones_it_sets():
    job = from_dict(
        {
            "train": {"final_epochs": 2},
            "strategy": {"name": "m2", "budget_fraction": 0.3, "epochs": 10, "max_rounds": 3},
        }
    )
    assert job.strategy.hard_per_round is None and job.train.epochs_per_round is None
    assert job.strategy.max_rounds == 3 and job.train.final_epochs == 2
    planned, plan = apply_budget(job, 1000, 0, plans=True)
    assert plan == plan_budget(0.3, 1000, 0, 10, False, rounds=3, final_epochs=2)
    s, t = planned.strategy, planned.train
    assert (s.hard_per_round, s.reps_per_round, s.max_rounds) == (plan.hard, plan.reps, 3)
    assert (t.epochs_per_round, t.final_epochs) == (2, 2)
    assert round(s.initial_ratio * 1000) == plan.initial
    assert s.budget == plan.budget  # the run stops where the plan's budget is spent
    tighter = from_dict({**job.to_dict(), "strategy": {**job.to_dict()["strategy"], "budget": 50}})
    assert apply_budget(tighter, 1000, 0, plans=True)[0].strategy.budget == 50
    # a strategy that does not grow a subset gets the defaults
    other, none = apply_budget(job, 1000, 0, plans=False)
    assert none is None and other.strategy.hard_per_round == 2000
    assert other.strategy.budget is None
    assert other.train.epochs_per_round == 3 and other.train.final_epochs == 2
    # the job's pruning inside the rounds reaches the plan
    strategy = {**job.to_dict()["strategy"], "round_prune_ratio": 0.3, "anneal_delta": 0.5}
    pruning = from_dict({**job.to_dict(), "strategy": strategy})
    assert apply_budget(pruning, 1000, 0, plans=True)[1] == plan_budget(
        0.3, 1000, 0, 10, False, rounds=3, final_epochs=2, prune=(0.3, 0.5)
    )


def test_a_left_out_knob_without_a_budget_is_refused_by_name():
    with pytest.raises(ConfigError, match="strategy.hard_per_round: got None"):
        from_dict({"strategy": {"hard_per_round": None}})
    with pytest.raises(ConfigError, match="strategy.budget_fraction: got 1.5"):
        from_dict({"strategy": {"budget_fraction": 1.5}})


def test_an_epoch_trains_the_whole_steps_the_budget_leaves():
    # 2 ranks of 300 rows (600 passes), batches of 64 per rank (128 passes a step)
    assert rows_within(600, 2, 64, 300) == 300  # all of it fits
    assert rows_within(10**6, 2, 64, 300) == 300
    assert rows_within(599, 2, 64, 300) == 256  # 4 whole steps (512 passes), not 299 rows
    assert rows_within(256, 2, 64, 300) == 128
    assert rows_within(127.9, 2, 64, 300) == 0  # not one step
    assert rows_within(-50, 2, 64, 300) == 0  # spent already


def test_pruned_epochs_count_the_rows_kept_when_half_score_below_the_mean():
    # 4 epochs at delta 0.875: epoch 0 trains every row (equal scores), 1-3 are pruned, none
    # anneals (ceil(3.5) = 4): 1 + 3 * (1 - 0.3 * 0.5) epochs' worth of passes
    assert pruned_epochs_cost(4, 0.3, 0.875) == pytest.approx(1 + 3 * 0.85)
    assert pruned_epochs_cost(4, 0.3, 0.5) == pytest.approx(3 + 0.85)  # epochs 2, 3 anneal
    assert pruned_epochs_cost(2, 0.5, 0.875) == pytest.approx(1 + 0.75)
    assert pruned_epochs_cost(1, 0.5, 0.875) == 1  # a one-epoch phase trains its every row
    assert pruned_epochs_cost(3, 0.0, 0.875) == 3
    # one round of 4 epochs over 100 rows, 2 final ones, no scan: 100 * (3.55 + 1.85)
    assert planned_compute(1000, 0, 100, 0, 1, 4, 2, False, (0.3, 0.875)) == pytest.approx(540)


def test_a_pruned_plan_buys_more_rows_within_the_same_budget():
    plain = plan_budget(0.3, 1000, 0, 10, False)
    pruned = plan_budget(0.3, 1000, 0, 10, False, prune=(0.3, 0.875))
    assert pruned.increment > plain.increment
    assert pruned.compute <= pruned.budget == plain.budget
    assert pruned.compute == pytest.approx(
        planned_compute(1000, 0, 200, pruned.increment, 3, 2, 2, False, (0.3, 0.875))
    )
