"""The InfoBatch rule on hand-made scores, its per-sample loss, validation's balanced accuracy,
the policy on one rank, and a two-worker job whose every loss is known ahead (the model's
logits are its input)."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from raysift.config import ConfigError, from_dict
from raysift.data.share import Share, owner
from raysift.job.engine import advance_schedule, evaluate
from raysift.job.rounds import run_job
from raysift.seeding import derive_seed
from raysift.selection.infobatch import (
    INITIAL_SCORE,
    anneal_epoch,
    initial_scores,
    plan_epoch,
    pruned_epochs,
    update_scores,
)
from raysift.selection.strategies import InfoBatch
from raysift.training.loss import batch_loss, sample_losses
from raysift.training.models import build_model

# mean 4: rows 0-3 are below it, rows 4 and 9 sit on it (not below), rows 5-8 above
SCORES = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 4.0], dtype=torch.float64)


def plan(scores=SCORES, epoch=0, epochs=8, r=0.5, delta=0.875, seed=0):
    return plan_epoch(scores, epoch, epochs, r, delta, torch.Generator().manual_seed(seed))


def test_half_the_below_mean_rows_are_pruned_and_the_kept_ones_weigh_double():
    rows, weights = plan()
    assert torch.equal(torch.nonzero(weights).flatten(), rows)
    pruned = sorted(set(range(10)) - set(rows.tolist()))
    assert len(pruned) == 2 and set(pruned) <= {0, 1, 2, 3}
    kept_below = sorted({0, 1, 2, 3} - set(pruned))
    assert weights[kept_below].tolist() == [2.0, 2.0]
    assert weights[[4, 5, 6, 7, 8, 9]].tolist() == [1.0] * 6  # at or above the mean: kept as is


@pytest.mark.parametrize("r, n_pruned, weight", [(0.25, 1, 4 / 3), (0.75, 3, 4.0), (0.0, 0, 1.0)])
def test_the_authors_count_k_minus_floor_of_1_minus_r_times_k_is_pruned(r, n_pruned, weight):
    rows, weights = plan(r=r)
    assert len(rows) == 10 - n_pruned
    assert weights[rows[rows < 4]].tolist() == pytest.approx([weight] * (4 - n_pruned))


def test_a_float_product_a_hair_under_an_integer_still_keeps_it():
    scores = torch.cat([torch.zeros(10), torch.ones(10)]).double()  # 10 below the mean
    rows, _ = plan(scores, r=0.9)  # (1 - 0.9) * 10 is 0.9999999999999998: one row is kept
    assert len(rows) == 11


def test_equal_scores_prune_nothing():
    rows, weights = plan(initial_scores(6))
    assert rows.tolist() == list(range(6)) and weights.tolist() == [1.0] * 6
    assert initial_scores(2).tolist() == [INITIAL_SCORE] * 2


@pytest.mark.parametrize(
    "epochs, delta, first_full", [(8, 0.875, 7), (20, 0.875, 18), (10, 0.7, 7), (10, 1.0, 10)]
)
def test_annealing_starts_at_epoch_ceil_delta_times_epochs(epochs, delta, first_full):
    assert anneal_epoch(epochs, delta) == first_full
    assert len(plan(epoch=first_full - 1, epochs=epochs, delta=delta)[0]) == 8
    if first_full < epochs:
        rows, weights = plan(epoch=first_full, epochs=epochs, delta=delta)
        assert rows.tolist() == list(range(10)) and weights.tolist() == [1.0] * 10


@pytest.mark.parametrize("epochs, delta", [(1, 0.875), (2, 0.875), (4, 0.5), (8, 0.875), (5, 0.1)])
def test_pruned_epochs_counts_the_epochs_the_rule_prunes_from_equal_scores(epochs, delta):
    scores, pruning = initial_scores(10), 0
    for epoch in range(epochs):
        rows, weights = plan(scores, epoch, epochs, delta=delta)
        pruning += int(len(rows) < 10)
        scores = SCORES  # what the first epoch's losses left
    assert pruned_epochs(epochs, delta) == pruning


def test_the_draw_is_fixed_by_the_seed():
    scores = torch.arange(40, dtype=torch.float64)  # 20 below the mean
    assert all(torch.equal(a, b) for a, b in zip(plan(scores, seed=5), plan(scores, seed=5)))
    assert not torch.equal(plan(scores, seed=5)[0], plan(scores, seed=6)[0])


def test_trained_rows_take_their_new_loss_and_pruned_rows_keep_their_score():
    new = update_scores(SCORES, torch.tensor([1, 4, 7]), torch.tensor([0.5, 0.25, 9.0]))
    assert new.tolist() == [0.0, 0.5, 2.0, 3.0, 0.25, 5.0, 6.0, 9.0, 8.0, 4.0]
    assert SCORES[1] == 1.0  # the input is left alone


def test_a_shortened_epoch_covers_the_same_stretch_of_the_one_cycle_schedule():
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(()))], lr=1.0)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1.0, total_steps=3 * 4)
    # 3 epochs of 4 steps when full
    positions = []
    for epoch, steps in enumerate([4, 3, 4]):  # epoch 1 pruned to 3 steps
        for step in range(steps):
            optimizer.step()
            advance_schedule(scheduler, epoch, step, steps, 4)
            positions.append(scheduler.last_epoch)
    assert positions == [1, 2, 3, 4, 5, 6, 8, 9, 10, 11, 12]


def small_model():
    job = from_dict(
        {
            "model": {"name": "mlp", "kwargs": {"hidden": [8]}},
            "augment": {"transforms": [{"name": "flip", "p": 1.0}]},
            "mixup": {"smoothing": 0.1},
            "strategy": {"name": "infobatch"},
        }
    )
    torch.manual_seed(0)
    model = build_model(job.model, (1, 6), 3).double()
    x = torch.randn(4, 1, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return job, model, x, torch.tensor([0, 1, 2, 1])


def test_sample_losses_are_the_plain_path_per_sample():
    job, model, x, y = small_model()
    losses = sample_losses(model, x, y, job, torch.Generator().manual_seed(0))
    expect = F.cross_entropy(model(x.flip(-1)), y, label_smoothing=0.1, reduction="none")
    torch.testing.assert_close(losses, expect)
    torch.testing.assert_close(losses.mean(), batch_loss(model, x, y, 3, job, torch.Generator()))


def test_a_pruned_row_and_a_doubled_one_give_the_loss_of_the_batch_with_it_twice():
    job, model, x, y = small_model()
    weights = torch.tensor([2.0, 0.0, 1.0, 1.0], dtype=torch.float64)
    weighted = (weights * sample_losses(model, x, y, job, torch.Generator())).mean()
    twice = [0, 0, 2, 3]
    torch.testing.assert_close(
        weighted, batch_loss(model, x[twice], y[twice], 3, job, torch.Generator())
    )


def test_infobatch_refuses_mixup_by_name():
    with pytest.raises(ConfigError, match="mixup.kind: got 'cutmix'"):
        from_dict({"strategy": {"name": "infobatch"}, "mixup": {"kind": "cutmix"}})


# Logits are the input: class 0 is recalled 3 of 4 times, class 1 once of once, class 2 never;
# class 3 has no samples and is left out of the mean.
VAL_X = np.array(
    [[5, 0, 0, 0], [5, 0, 0, 0], [5, 0, 0, 0], [0, 5, 0, 0], [0, 5, 0, 0], [5, 0, 0, 0]],
    dtype=np.float32,
)
VAL_Y = np.array([0, 0, 0, 0, 1, 2])


def test_validation_reports_the_mean_recall_over_the_classes_present():
    share = Share.from_arrays(np.arange(6), VAL_Y, VAL_X)
    out = evaluate(nn.Identity(), share, 4, "cpu", 3, "val")
    assert out["val_accuracy"] == pytest.approx(4 / 6)
    assert out["val_balanced_accuracy"] == pytest.approx((3 / 4 + 1 + 0) / 3)
    assert out["val_samples"] == 6
    expect = F.cross_entropy(torch.from_numpy(VAL_X), torch.from_numpy(VAL_Y))
    assert out["val_loss"] == pytest.approx(float(expect))


def test_the_policy_prunes_below_the_mean_and_learns_the_losses_of_what_it_trained():
    job = from_dict(
        {"seed": 7, "strategy": {"name": "infobatch", "prune_ratio": 0.5, "anneal_delta": 0.75}}
    )
    policy = InfoBatch()
    first = policy.plan_epoch(job, 10, 0, 0, 4)  # equal starting scores: nothing pruned
    assert first.pick.tolist() == list(range(10)) and first.weights.tolist() == [1.0] * 10
    policy.end_epoch(first.pick, SCORES)
    second = policy.plan_epoch(job, 10, 0, 1, 4)
    generator = torch.Generator().manual_seed(derive_seed(7, "infobatch", 0, 1, 0))
    rows, weights = plan_epoch(SCORES, 1, 4, 0.5, 0.75, generator)
    assert second.pick.tolist() == rows.tolist()
    assert second.weights.tolist() == weights[rows].tolist()
    policy.end_epoch(second.pick, torch.full((len(rows),), 0.5, dtype=torch.float64))
    assert policy.scores[rows].tolist() == [0.5] * len(rows)  # trained rows: their new loss
    pruned = sorted(set(range(10)) - set(rows.tolist()))
    assert policy.scores[pruned].tolist() == SCORES[pruned].tolist()  # pruned rows keep theirs
    assert policy.plan_epoch(job, 10, 0, 3, 4).pick.tolist() == list(range(10))  # annealing
    restored = InfoBatch()
    restored.load_state_dict(policy.state_dict())
    assert torch.equal(restored.scores, policy.scores)


class InputLogits(nn.Module):
    """Logits = the input; the parameter (times 0) only gives DDP and AdamW something to hold."""

    def __init__(self):
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return x + 0 * self.unused


def input_logits(input_shape, num_classes):
    return InputLogits()


def _write_splits(path, x, y, val_x, val_y):
    n, m = len(y), len(val_y)
    ids = np.arange(n + m + 2)
    features = np.concatenate([x, val_x, val_x[:2]]).astype(np.float64)
    labels = np.concatenate([y, val_y, val_y[:2]])
    split = ["train"] * n + ["val"] * m + ["test"] * 2
    pq.write_table(
        pa.table(
            {
                "id": ids,
                "label": labels,
                "split": split,
                "x": pa.array(features.tolist(), pa.list_(pa.float64())),
            }
        ),
        path,
    )


def run_two_workers(
    tmp_path, x, y, seed, strategy: dict, run_dir: str | None = None, train: dict | None = None
) -> dict:
    """A pruning strategy's job on rows `x`, `y` with two workers, every epoch validated; the
    model's logits are its inputs (`input_logits`), so each row's loss is known beforehand."""
    _write_splits(tmp_path / "data.parquet", x, y, VAL_X[:, :3], VAL_Y)
    job = from_dict(
        {
            "seed": seed,
            "run_dir": run_dir or str(tmp_path / "run"),
            "source": {"kind": "parquet", "path": str(tmp_path / "data.parquet")},
            "model": {"name": "test_infobatch:input_logits"},
            "train": {
                "num_workers": 2,
                "batch_size": 8,
                "val_every_epoch": True,
                "checkpoint_every_s": 0,
                **(train or {}),
            },
            "strategy": strategy,
        }
    )
    return run_job(job, echo=lambda *_: None)


def test_a_two_worker_job_trains_the_rows_the_rule_keeps(ray_session, tmp_path, monkeypatch):
    n, epochs, seed = 45, 4, 7
    g = np.random.default_rng(0)
    x = g.normal(size=(n, 3)).astype(np.float32)
    y = g.integers(0, 3, n)
    # the run directory and the spill folder named from the driver's folder, as `make demo`
    # names its run directory (the workers run in folders of their own); every row spills
    monkeypatch.chdir(tmp_path)
    (tmp_path / "spill").mkdir()
    summary = run_two_workers(
        tmp_path,
        x,
        y,
        seed,
        {
            "name": "infobatch",
            "epochs": epochs,
            "prune_ratio": 0.5,
            "anneal_delta": 0.5,
        },
        run_dir="run",
        train={"cache_mb": 0, "spill_dir": "spill"},
    )

    losses = F.cross_entropy(torch.from_numpy(x), torch.from_numpy(y), reduction="none").double()
    order = pq.read_table(tmp_path / "run" / "data" / "train")["id"].to_numpy()
    ranks = owner(order, seed, 2)
    shares = [order[ranks == r] for r in (0, 1)]  # each worker's rows, in its file order
    # Epoch 0 trains all rows (equal scores); epoch 1 what each rank keeps of its own rows by
    # the mean over both; epochs 2 and 3 all (annealing from ceil(0.5 * 4)).
    mean = float(losses.mean())
    kept = [
        len(
            plan_epoch(
                losses[share],
                1,
                epochs,
                0.5,
                0.5,
                torch.Generator().manual_seed(derive_seed(seed, "infobatch", 0, 1, r)),
                mean=mean,
            )[0]
        )
        for r, share in enumerate(shares)
    ]
    assert 23 <= sum(kept) < n
    longest = max(len(s) for s in shares)
    per_epoch = [longest, max(kept), longest, longest]  # every rank steps with the longest
    passes = np.cumsum([2 * k for k in per_epoch]).tolist()
    curve = summary["per_round"][0]["curve"]
    assert summary["train_sample_passes"] == passes[-1]
    assert [p["train_sample_passes"] for p in curve] == passes
    assert [p["epoch"] for p in curve] == [0, 1, 2, 3]
    assert [p["val_sample_passes"] for p in curve] == [6, 12, 18, 24]
    # On three classes the input-logits model recalls class 0 three times of four, class 1 once
    # and class 2 never (its row's logits point at class 0).
    assert [p["val_accuracy"] for p in curve] == pytest.approx([4 / 6] * epochs)
    assert [p["val_balanced_accuracy"] for p in curve] == pytest.approx(
        [(3 / 4 + 1 + 0) / 3] * epochs
    )
    assert summary["test_samples"] == 2
    # Each worker's scores, in its last checkpoint: every row's loss from the last (full) epoch.
    last = sorted(
        p for p in (tmp_path / "run" / "train" / "job").glob("checkpoint_*") if p.is_dir()
    )[-1]
    for r, share in enumerate(shares):
        scores = torch.load(last / f"policy_rank{r}.pt", weights_only=True)["scores"]
        torch.testing.assert_close(scores, losses[share], rtol=0, atol=1e-6)
