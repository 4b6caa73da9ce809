"""M2's options on one rank with hand-made losses (InfoBatch's rule inside each round), and one
short two-worker run with every new option on (the budget plan, one schedule over the run,
the best final checkpoint, the hard fill, the pruning inside rounds), and a run whose budget
runs out in its final phase."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from parquet_rows import parquet_rows

from raysift.config import ConfigError, JobConfig, from_dict
from raysift.job.rounds import run_job
from raysift.operators.contract import ID, X, features
from raysift.seeding import derive_seed
from raysift.selection.infobatch import plan_epoch
from raysift.selection.strategies import M2, NormBalanced

DEDUP = 1.0  # reps_dedup of the two-worker run, in its raw x (digits scaled to [0, 1])
# mean 4: rows 0-3 below it
SCORES = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 4.0], dtype=torch.float64)


def test_rounds_prune_below_mean_rows_and_start_over_with_each_new_subset():
    job = from_dict(
        {"seed": 7, "strategy": {"name": "m2", "round_prune_ratio": 0.5, "anneal_delta": 0.75}}
    )
    policy = M2()
    first = policy.plan_epoch(job, 10, 2, 0, 4)  # equal starting scores: nothing left out
    assert first.pick.tolist() == list(range(10)) and first.weights.tolist() == [1.0] * 10
    policy.end_epoch(first.pick, SCORES)
    second = policy.plan_epoch(job, 10, 2, 1, 4)
    rows, weights = plan_epoch(
        SCORES,
        1,
        4,
        0.5,
        0.75,
        torch.Generator().manual_seed(derive_seed(7, "round_prune", 2, 1, 0)),
    )
    assert second.pick.tolist() == rows.tolist() and len(rows) == 8
    assert second.weights.tolist() == weights[rows].tolist()  # kept below-mean rows weigh 2
    # the next round's subset (12 rows): the scores start over, its first epoch trains all
    policy.end_epoch(second.pick, torch.zeros(8, dtype=torch.float64))
    assert policy.plan_epoch(job, 12, 3, 0, 4).pick.tolist() == list(range(12))
    restored = M2()
    restored.load_state_dict(policy.state_dict())
    assert torch.equal(restored.scores, policy.scores) and restored.scores_phase == 3


def test_without_the_ratio_every_row_trains_with_no_weights():
    job = from_dict({"strategy": {"name": "norm_balanced"}})
    plan = NormBalanced().plan_epoch(job, 5, 0, 1, 3)
    assert plan.pick.tolist() == list(range(5)) and plan.weights is None
    assert NormBalanced().state_dict() == {}
    with pytest.raises(ConfigError, match="round_prune_ratio"):
        from_dict({"strategy": {"round_prune_ratio": 0.5}, "mixup": {"kind": "mixup"}})


def digits_m2(run_dir, train: dict, strategy: dict, **job) -> JobConfig:
    """A two-worker M2 job on digits with a small MLP, checkpointing every epoch."""
    return from_dict(
        {
            "run_dir": str(run_dir),
            "source": {"kind": "digits", "val_fraction": 0.15, "test_fraction": 0.2},
            "model": {"name": "mlp", "kwargs": {"hidden": [32]}},
            "train": {"num_workers": 2, "batch_size": 64, "checkpoint_every_s": 0, **train},
            "strategy": {"name": "m2", **strategy},
            **job,
        }
    )


def test_a_run_with_every_option_on(ray_session, tmp_path):
    job = digits_m2(
        tmp_path / "run",
        {"lr": 0.01, "lr_schedule": "run_onecycle", "final_keep_best": True},
        {
            "budget_fraction": 0.4,
            "epochs": 6,
            "max_rounds": 3,
            "hard_fill": "loss",
            "round_prune_ratio": 0.3,
            "cluster_k": 4,
            "cluster_on": "x",
            "reps_dedup": DEDUP,
        },
        seed=3,
        score={"batch_size": 256},
    )
    summary = run_job(job, echo=lambda *_: None)
    plan = summary["plan"]
    assert plan["rounds"] == 3 and plan["compute"] <= plan["budget"]
    assert summary["rounds"] <= 3
    assert summary["compute"] <= plan["budget"]
    rounds = json.loads((tmp_path / "run" / "rounds.json").read_text())
    final = rounds[-1]
    assert final["phase"] == "final" and len(final["curve"]) == plan["final_epochs"]
    candidates = [rounds[-2]["val_accuracy"]] + [p["val_accuracy"] for p in final["curve"]]
    assert final["val_accuracy"] == max(candidates)  # the shipped model validated best
    assert final["kept"] in (
        [f"round {rounds[-2]['round']}"] + [f"final epoch {e}" for e in range(plan["final_epochs"])]
    )
    assert summary["val_accuracy"] == final["val_accuracy"]
    # reps_dedup across both ranks: no representative lies within DEDUP of a row chosen before
    # it (earlier rounds, this round's hard rows, this round's earlier representatives)
    x = {r[ID]: r[X] for r in parquet_rows(tmp_path / "run" / "data" / "train", ID)}
    manifest = pq.read_table(tmp_path / "run" / "manifest.parquet").to_pandas()
    reps = manifest[manifest["reason"] == "representative"]
    assert len(reps)
    for r in sorted(set(reps["round"])):
        before = manifest[
            (manifest["round"] < r)
            | ((manifest["round"] == r) & (manifest["reason"] != "representative"))
        ]
        chosen = features({X: np.stack([x[i] for i in before[ID]])}).reshape(len(before), -1)
        for i in reps[reps["round"] == r][ID]:  # in the order they were chosen
            row = features({X: x[i][None]}).reshape(1, -1)
            assert np.sqrt(((chosen - row) ** 2).sum(1)).min() > DEDUP
            chosen = np.concatenate([chosen, row])


def test_the_final_phase_stops_at_the_last_whole_step_the_budget_pays_for(ray_session, tmp_path):
    budget = 1800  # inside the final phase: one round of 2 epochs costs about 830, an epoch 380
    job = digits_m2(
        tmp_path / "run",
        {"epochs_per_round": 2, "final_epochs": 4},
        {"initial_ratio": 0.3, "max_rounds": 1, "budget": budget},
    )
    summary = run_job(job, echo=lambda *_: None)
    round_0, final = json.loads((tmp_path / "run" / "rounds.json").read_text())
    epoch = round_0["train_sample_passes"] / 2  # the same subset, padded alike, each epoch
    validation = round_0["infer_sample_passes"] / 3  # one, at the round's end (no pool scan)
    left = budget - (round_0["train_sample_passes"] + validation) - 2 * epoch - validation
    assert 0 < left < epoch  # two final epochs fit, the third does not
    step = 2 * 32  # two ranks of 32 rows
    assert final["epochs"] == 3 and len(final["curve"]) == 1  # validated once, at the cut
    assert final["train_sample_passes"] == 2 * epoch + left // step * step
    assert budget - step - validation < summary["compute"] <= budget
