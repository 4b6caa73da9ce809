"""The SeTa rule on a hand-made loss table, the policy on one rank, and a two-worker job whose
every loss is known ahead (the model's logits are its input)."""

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
from test_infobatch import run_two_workers

from raysift.config import ConfigError, from_dict
from raysift.data.share import owner
from raysift.seeding import derive_seed
from raysift.selection.seta import group_of, keep_ratio, kmeans_1d, plan_epoch, random_keep, window
from raysift.selection.strategies import Seta

# Three loss groups, shuffled: easy rows 1, 3, 6; middling 2, 5, 8; hard 0, 4, 7.
TABLE = np.array([2.1, 0.0, 1.1, 0.2, 2.2, 1.0, 0.1, 2.0, 1.2])
EASY, MID, HARD = [1, 3, 6], [2, 5, 8], [0, 4, 7]


def plan(epoch, scores=TABLE, ratio=0.0, groups=3, scale=2 / 3, epochs=8, delta=0.5, seed=0, **kw):
    return plan_epoch(
        scores, epoch, epochs, ratio, groups, scale, delta, np.random.default_rng(seed), **kw
    ).tolist()


def test_kmeans_on_one_number_finds_the_three_groups():
    centres = kmeans_1d(TABLE, 3)
    assert centres.tolist() == pytest.approx([0.1, 1.1, 2.1])
    assert group_of(TABLE, centres).tolist() == [2, 0, 1, 0, 2, 1, 0, 2, 1]
    assert group_of(np.array([0.6, 0.61]), np.array([0.1, 1.1])).tolist() == [0, 1]  # tie: low


def test_the_window_slides_from_easy_to_hard_and_starts_over():
    assert window(3, 0, 2 / 3) == (0, 3)  # the first epoch: every group
    assert [window(5, t, 0.9) for t in range(1, 5)] == [(1, 5), (0, 4), (1, 5), (0, 4)]
    assert [window(5, t, 0.4) for t in range(1, 6)] == [(1, 3), (2, 4), (3, 5), (0, 2), (1, 3)]


def test_an_epoch_trains_the_groups_in_its_window():
    assert plan(0) == list(range(9))
    assert plan(1) == sorted(MID + HARD)
    assert plan(2) == sorted(EASY + MID)
    assert plan(3) == sorted(MID + HARD)


def test_annealing_trains_a_random_share_of_every_row_whatever_its_loss():
    # from epoch ceil(0.5 * 8) = 4 on: 9 * 0.6 rows drawn, as the first step draws them
    assert plan(4, ratio=0.4) == sorted(random_keep(9, 0.4, np.random.default_rng(0)).tolist())
    assert len(plan(4, ratio=0.4)) == 5 and plan(4) == list(range(9))


def test_the_random_share_comes_first_and_only_its_rows_are_grouped():
    rng = np.random.default_rng(3)
    kept = random_keep(9, 0.5, rng)  # 4 rows
    assert len(kept) == 4 and keep_ratio(0.5) == 0.5 and keep_ratio(0.95) == 0.1
    centres = kmeans_1d(TABLE[kept], 3)
    g = group_of(TABLE[kept], centres)
    expect = sorted(kept[(g >= 1) & (g < 3)].tolist())
    assert plan(1, ratio=0.5, seed=3) == expect


def test_equal_scores_are_cut_into_equal_parts_in_the_drawn_order():
    scores = np.full(9, 3.0)
    order = random_keep(9, 0.0, np.random.default_rng(0))
    assert plan(1, scores=scores) == sorted(order[3:].tolist())  # parts 1 and 2 of 3


def test_the_groups_can_be_fitted_to_every_ranks_scores():
    mine = np.array([0.0, 0.1, 1.0, 1.1])
    assert plan(1, scores=mine, groups=2, scale=0.5) == [2, 3]  # the harder half of its own
    # pooled with another rank's far harder rows, all four are easy here: the window on the
    # hard group holds none of them, and one row trains rather than none
    pooled = plan(
        1, scores=mine, groups=2, scale=0.5, pooled=lambda v: np.concatenate([v, [5.0, 5.1]])
    )
    order = random_keep(4, 0.0, np.random.default_rng(0))
    assert pooled == [int(order[0])]
    assert plan(
        2, scores=mine, groups=2, scale=0.5, pooled=lambda v: np.concatenate([v, [5.0, 5.1]])
    ) == [0, 1, 2, 3]


def test_the_policy_learns_the_losses_of_what_it_trained_and_keeps_them():
    job = from_dict(
        {
            "seed": 7,
            "strategy": {
                "name": "seta",
                "seta_ratio": 0.0,
                "num_group": 3,
                "window_scale": 2 / 3,
                "anneal_delta": 0.5,
            },
        }
    )
    policy = Seta()
    first = policy.plan_epoch(job, 9, 0, 0, 8)
    assert first.pick.tolist() == list(range(9)) and first.weights.tolist() == [1.0] * 9
    policy.end_epoch(first.pick, torch.from_numpy(TABLE))
    second = policy.plan_epoch(job, 9, 0, 1, 8)
    assert second.pick.tolist() == sorted(MID + HARD)
    policy.end_epoch(second.pick, torch.zeros(6, dtype=torch.float64))
    assert policy.scores[EASY].tolist() == TABLE[EASY].tolist()  # left out: kept their loss
    restored = Seta()
    restored.load_state_dict(policy.state_dict())
    assert torch.equal(restored.scores, policy.scores)


def test_seta_refuses_mixup_and_an_empty_window_by_name():
    with pytest.raises(ConfigError, match="mixup.kind: got 'mixup'"):
        from_dict({"strategy": {"name": "seta"}, "mixup": {"kind": "mixup"}})
    with pytest.raises(ConfigError, match="strategy.window_scale"):
        from_dict({"strategy": {"name": "seta", "num_group": 5, "window_scale": 0.05}})


def test_a_two_worker_job_trains_the_window_of_the_groups_over_both_ranks(ray_session, tmp_path):
    n, epochs, seed, k = 45, 3, 7, 3
    g = np.random.default_rng(0)
    x = (g.normal(size=(n, 3)) * 3).astype(np.float32)
    y = g.integers(0, 3, n)
    summary = run_two_workers(
        tmp_path,
        x,
        y,
        seed,
        {
            "name": "seta",
            "epochs": epochs,
            "seta_ratio": 0.2,
            "num_group": k,
            "window_scale": 2 / 3,
            "anneal_delta": 1.0,
        },
    )

    losses = (
        F.cross_entropy(torch.from_numpy(x), torch.from_numpy(y), reduction="none").double().numpy()
    )
    order = pq.read_table(tmp_path / "run" / "data" / "train")["id"].to_numpy()
    ranks = owner(order, seed, 2)
    shares = [order[ranks == r] for r in (0, 1)]  # each rank's rows (ids 0..44 = positions)

    def kept(r, epoch):
        return random_keep(
            len(shares[r]), 0.2, np.random.default_rng(derive_seed(seed, "seta", 0, epoch, r))
        )

    # epoch 0 trains every kept row; epoch 1 (window 1-2 of 3) and 2 (window 0-1) the rows in
    # the window of the groups fitted to both ranks' kept scores: the loss of a row trained
    # before (the model never changes it), the starting 3 of one never trained
    scores = [np.full(len(s), 3.0) for s in shares]
    trained = [kept(r, 0) for r in (0, 1)]
    per_epoch = [max(len(t) for t in trained)]
    for epoch in (1, 2):
        for r in (0, 1):
            scores[r][trained[r]] = losses[shares[r]][trained[r]]
        centres = kmeans_1d(np.concatenate([scores[r][kept(r, epoch)] for r in (0, 1)]), k)
        start, end = window(k, epoch, 2 / 3)
        groups = [group_of(scores[r][kept(r, epoch)], centres) for r in (0, 1)]
        trained = [kept(r, epoch)[(g >= start) & (g < end)] for r, g in enumerate(groups)]
        per_epoch.append(max(len(t) for t in trained))
    assert per_epoch[1] < per_epoch[0]
    passes = np.cumsum([2 * c for c in per_epoch]).tolist()
    assert [p["train_sample_passes"] for p in summary["per_round"][0]["curve"]] == passes
