"""The InfoBatch rule on hand-made scores, its per-sample loss, validation's balanced accuracy,
and one Ray Train round whose every loss is known ahead (the model's logits are its input)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from operators.contract import from_columns
from pipelines.augmentation import batch_loss, sample_losses
from pipelines.config import ConfigError, from_dict
from pipelines.infobatch import (INITIAL_SCORE, anneal_epoch, initial_scores, plan_epoch,
                                 update_scores)
from pipelines.models import build_model
from pipelines.seeding import derive_seed
from pipelines.train import MODEL_FILE, _advance_schedule, _scheduler, _validate, train_round

# mean 4: rows 0-3 are below it, rows 4 and 9 sit on it (not below), rows 5-8 above
SCORES = torch.tensor([0., 1., 2., 3., 4., 5., 6., 7., 8., 4.], dtype=torch.float64)


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


@pytest.mark.parametrize("epochs, delta, first_full", [(8, 0.875, 7), (20, 0.875, 18),
                                                       (10, 0.7, 7), (10, 1.0, 10)])
def test_annealing_starts_at_epoch_ceil_delta_times_epochs(epochs, delta, first_full):
    assert anneal_epoch(epochs, delta) == first_full
    assert len(plan(epoch=first_full - 1, epochs=epochs, delta=delta)[0]) == 8
    if first_full < epochs:
        rows, weights = plan(epoch=first_full, epochs=epochs, delta=delta)
        assert rows.tolist() == list(range(10)) and weights.tolist() == [1.0] * 10


def test_the_draw_is_fixed_by_the_seed():
    scores = torch.arange(40, dtype=torch.float64)  # 20 below the mean
    assert all(torch.equal(a, b) for a, b in zip(plan(scores, seed=5), plan(scores, seed=5)))
    assert not torch.equal(plan(scores, seed=5)[0], plan(scores, seed=6)[0])


def test_trained_rows_take_their_new_loss_and_pruned_rows_keep_their_score():
    new = update_scores(SCORES, torch.tensor([1, 4, 7]), torch.tensor([0.5, 0.25, 9.0]))
    assert new.tolist() == [0., 0.5, 2., 3., 0.25, 5., 6., 9., 8., 4.]
    assert SCORES[1] == 1.0  # the input is left alone


def test_a_shortened_epoch_covers_the_same_stretch_of_the_one_cycle_schedule():
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(()))], lr=1.0)
    scheduler = _scheduler(optimizer, "onecycle", 1.0, 3 * 4)  # 3 epochs of 4 steps when full
    positions = []
    for epoch, steps in enumerate([4, 3, 4]):  # epoch 1 pruned to 3 steps
        for step in range(steps):
            optimizer.step()
            _advance_schedule(scheduler, epoch, step, steps, 4)
            positions.append(scheduler.last_epoch)
    assert positions == [1, 2, 3, 4, 5, 6, 8, 9, 10, 11, 12]


def small_model():
    job = from_dict({"model": {"name": "mlp", "kwargs": {"hidden": [8]}},
                     "augment": {"transforms": [{"name": "flip", "p": 1.0}]},
                     "mixup": {"smoothing": 0.1}, "strategy": {"name": "infobatch"}})
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
    torch.testing.assert_close(weighted, batch_loss(model, x[twice], y[twice], 3, job,
                                                    torch.Generator()))


def test_infobatch_refuses_mixup_by_name():
    with pytest.raises(ConfigError, match="mixup.kind: got 'cutmix'"):
        from_dict({"strategy": {"name": "infobatch"}, "mixup": {"kind": "cutmix"}})


# Logits are the input: class 0 is recalled 3 of 4 times, class 1 once of once, class 2 never;
# class 3 has no samples and is left out of the mean.
VAL_X = np.array([[5, 0, 0, 0], [5, 0, 0, 0], [5, 0, 0, 0], [0, 5, 0, 0],
                  [0, 5, 0, 0], [5, 0, 0, 0]], dtype=np.float32)
VAL_Y = np.array([0, 0, 0, 0, 1, 2])


def test_validation_reports_the_mean_recall_over_the_classes_present():
    out = _validate(nn.Identity(), VAL_X, VAL_Y, 4, rank=0, world=1, device="cpu")
    assert out["val_accuracy"] == pytest.approx(4 / 6)
    assert out["val_balanced_accuracy"] == pytest.approx((3 / 4 + 1 + 0) / 3)
    assert out["val_sample_passes"] == 6
    expect = F.cross_entropy(torch.from_numpy(VAL_X), torch.from_numpy(VAL_Y))
    assert out["val_loss"] == pytest.approx(float(expect))


class InputLogits(nn.Module):
    """Logits = the input; the parameter (times 0) only gives DDP and AdamW something to hold."""

    def __init__(self):
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return x + 0 * self.unused


def input_logits(input_shape, num_classes):
    return InputLogits()


def test_a_round_trains_the_rows_the_rule_keeps_and_validates_every_epoch(ray_session, tmp_path):
    n, epochs = 45, 4  # odd: the two workers' shares are padded
    g = np.random.default_rng(0)
    x = g.normal(size=(n, 3)).astype(np.float32)
    y = g.integers(0, 3, n)
    job = from_dict({
        "seed": 7, "model": {"name": "test_infobatch:input_logits"},
        "train": {"num_workers": 2, "batch_size": 8, "val_every_epoch": True},
        "strategy": {"name": "infobatch", "epochs": epochs, "prune_ratio": 0.5,
                     "anneal_delta": 0.5}})
    train = from_columns({"id": np.arange(n), "label": y, "x": x})
    val = from_columns({"id": np.arange(6), "label": VAL_Y, "x": VAL_X[:, :3]})
    shown = []  # what the driver's progress bar gets while the workers train
    result = train_round(job, train, val, round_index=0, epochs=epochs, schedule="onecycle",
                         init_checkpoint=None, storage=tmp_path, num_classes=3, x_shape=(3,),
                         on_epoch=shown.append)

    losses = F.cross_entropy(torch.from_numpy(x), torch.from_numpy(y),
                             reduction="none").double()
    # Epoch 0 trains all rows (equal scores), epoch 1 what the rule keeps given epoch 0's losses,
    # epochs 2 and 3 all (annealing from ceil(0.5 * 4)).
    kept, _ = plan_epoch(losses, 1, epochs, 0.5, 0.5,
                         torch.Generator().manual_seed(derive_seed(7, "infobatch", 0, 1)))
    assert 23 <= len(kept) < n
    per_epoch = [n, len(kept), n, n]
    passes = np.cumsum([k + k % 2 for k in per_epoch]).tolist()  # padded to an even split
    assert result.train_sample_passes == passes[-1]
    assert [p["train_sample_passes"] for p in result.curve] == passes
    assert [p["epoch"] for p in result.curve] == [0, 1, 2, 3]
    assert [p["val_sample_passes"] for p in result.curve] == [6, 12, 18, 24]
    assert result.val_sample_passes == 24
    # On three classes the input-logits model recalls class 0 three times of four, class 1 once
    # and class 2 never (its row's logits point at class 0).
    assert [p["val_accuracy"] for p in result.curve] == pytest.approx([4 / 6] * epochs)
    assert [p["val_balanced_accuracy"] for p in result.curve] == pytest.approx(
        [(3 / 4 + 1 + 0) / 3] * epochs)
    assert result.val_balanced_accuracy == result.curve[-1]["val_balanced_accuracy"]
    assert [(m["epoch"], m["epochs"], m["train_sample_passes"], m["val_accuracy"])
            for m in shown] == [(p["epoch"], epochs, p["train_sample_passes"], p["val_accuracy"])
                                for p in result.curve]
    state = torch.load(f"{result.checkpoint}/{MODEL_FILE}", weights_only=True)
    # every row scored by its own entry of the last (full) epoch, summed over both ranks
    torch.testing.assert_close(state["scores"], losses, rtol=0, atol=1e-6)
