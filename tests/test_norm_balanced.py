"""M1's drop-the-learned rounds on hand-made classes with a model whose answers are fixed,
and one short run of the driver on digits."""

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F

from raysift.config import StrategyConfig, from_dict
from raysift.data.share import Share
from raysift.job.engine import share_scorer
from raysift.job.rounds import run_job
from raysift.manifest import DROPPED, ShareManifest
from raysift.selection.strategies import NormBalanced, RoundView, remaining_stop

# id -> (label, norm, the stub's prediction). With per_class 2, a = b = 1 per class.
ROWS = {
    # class 0, mean 4.5: initial 4 (5, closest above) and 3 (4, closest below); of the pool,
    # 0 2 5 7 are right (dropped), 1 (2) and 6 (7) wrong: mean 4.5, next draw 6 then 1.
    0: (0, 1, 0),
    1: (0, 2, 1),
    2: (0, 3, 0),
    3: (0, 4, 2),
    4: (0, 5, 1),
    5: (0, 6, 0),
    6: (0, 7, 2),
    7: (0, 8, 0),
    # class 1, mean 35: initial 13 (40) and 12 (30); of the pool 10 14 15 are right, only 11
    # is left: the next draw takes it alone and says the class is short.
    10: (1, 10, 1),
    11: (1, 20, 0),
    12: (1, 30, 1),
    13: (1, 40, 1),
    14: (1, 50, 1),
    15: (1, 60, 1),
    # class 2, mean 4: initial 22 (9) and 21 (2); the pool's only row, 20, is right.
    20: (2, 1, 2),
    21: (2, 2, 0),
    22: (2, 9, 2),
}
INITIAL = [4, 3, 13, 12, 22, 21]
DROPPED_IDS = [0, 2, 5, 7, 10, 14, 15, 20]
REMAINING = {0: 2, 1: 1}
NEXT_DRAW = [6, 1, 11]


class ReadsItsAnswer(torch.nn.Module):
    """Predicts the class written in channel 0 of the sample."""

    def forward(self, x):
        return 20.0 * F.one_hot(x[:, 0, 0].long(), 3).float()


def _share():
    """The rows in no helpful order, as one worker's share."""
    ids = np.array(list(ROWS), np.int64)
    label, norm, pred = (np.array(col) for col in zip(*ROWS.values()))
    x = np.zeros((len(ids), 2, 1), np.float32)
    x[:, 0, 0] = pred  # channel 0: the stub's answer; weight 0 keeps it out of the norm
    x[:, 1, 0] = norm  # channel 1: the norm
    order = np.random.default_rng(0).permutation(len(ids))
    return Share.from_arrays(ids[order], label[order], x[order])


def _job(tmp_path, **strategy):
    return from_dict(
        {
            "run_dir": str(tmp_path / "run"),
            "score": {"batch_size": 4},
            "train": {"num_workers": 1},
            "strategy": {
                "name": "norm_balanced",
                "per_class": 2,
                "channel_weights": [0.0, 1.0],
                **strategy,
            },
        }
    )


def _view(job, share, manifest, round_index):
    return RoundView(
        job=job,
        round_index=round_index,
        num_classes=3,
        share=share,
        pool=manifest.pool_rows(),
        score_rows=share_scorer(ReadsItsAnswer(), share, "cpu"),
    )


def test_drop_the_learned_then_draw_from_what_remains(tmp_path):
    job, share, strategy = _job(tmp_path), _share(), NormBalanced()
    manifest = ShareManifest(share.ids)
    first = strategy.initial(_view(job, share, manifest, 0))
    assert first.ids.tolist() == INITIAL and set(first.reasons) == {"initial"}
    manifest.add(first.ids, first.reasons, 0)

    added = strategy.after_round(_view(job, share, manifest, 0))
    assert sorted(added.dropped.tolist()) == DROPPED_IDS
    assert added.remaining == REMAINING and added.stop_reason is None
    assert added.ids.tolist() == NEXT_DRAW and set(added.reasons) == {"balanced"}
    assert added.notes == ["fewer than per_class=2, all taken: class (samples) 1 (1)"]
    assert added.infer_sample_passes == 11  # the whole pool: 17 rows - 6 initial
    assert added.hard_found == 3

    # What the engine does with it: the dropped ones leave the pool but are never trained on.
    manifest.add(added.dropped, DROPPED, 0)
    manifest.add(added.ids, added.reasons, 1)
    assert sorted(share.ids[manifest.subset_rows()].tolist()) == sorted(INITIAL + NEXT_DRAW)
    assert len(manifest.pool_rows()) == 0 and len(share) == len(ROWS)

    last = strategy.after_round(_view(job, share, manifest, 1))  # the pool is empty now
    assert last.stop_reason == "no misclassified samples left in the pool"
    assert len(last.ids) == 0 and len(last.dropped) == 0 and last.remaining == {}
    assert last.infer_sample_passes == 0


def test_a_met_stop_condition_draws_nothing_but_still_drops(tmp_path):
    job, share, strategy = _job(tmp_path, remaining_total=3), _share(), NormBalanced()
    manifest = ShareManifest(share.ids)
    manifest.add(INITIAL, "initial", 0)
    added = strategy.after_round(_view(job, share, manifest, 0))
    assert added.stop_reason == "3 misclassified samples left <= remaining_total 3"
    assert len(added.ids) == 0 and sorted(added.dropped.tolist()) == DROPPED_IDS


@pytest.mark.parametrize(
    "total, per_class, stop",
    [
        (None, None, None),  # no condition: only the round cap or an empty remainder stops
        (2, None, None),
        (3, None, "3 misclassified samples left <= remaining_total 3"),
        (None, 1, None),  # class 0 still has 2
        (
            None,
            2,
            "every class has <= remaining_per_class 2 misclassified samples left (at most 2)",
        ),
        (0, 0, None),
    ],
)
def test_stop_conditions_on_what_remains(total, per_class, stop):
    s = StrategyConfig(remaining_total=total, remaining_per_class=per_class)
    assert remaining_stop(s, REMAINING) == stop


def test_an_empty_remainder_always_stops():
    assert remaining_stop(StrategyConfig(), {}) == "no misclassified samples left in the pool"


def test_norm_balanced_run_on_digits(ray_session, tmp_path):
    job = from_dict(
        {
            "name": "m1",
            "seed": 3,
            "run_dir": str(tmp_path / "m1"),
            "source": {"kind": "digits", "val_fraction": 0.15, "test_fraction": 0.2},
            "model": {"name": "mlp", "kwargs": {"hidden": [32]}},
            "train": {"num_workers": 1, "batch_size": 32, "epochs_per_round": 2, "lr": 0.03},
            "strategy": {"name": "norm_balanced", "per_class": 10, "max_rounds": 2},
            "score": {"batch_size": 256},
        }
    )
    lines = []
    summary = run_job(job, echo=lines.append)
    run_dir = Path(job.run_dir)
    manifest = pq.read_table(run_dir / "manifest.parquet").to_pandas()
    rounds = json.loads((run_dir / "rounds.json").read_text())
    n_train = json.loads((run_dir / "data" / "info.json").read_text())["counts"]["train"]
    by = manifest.groupby(["round", "reason"]).size().to_dict()
    assert by[(0, "initial")] == 100  # 10 per class, every digit has far more
    assert set(by) == {(0, "initial"), (0, "dropped"), (1, "balanced")}
    assert manifest["id"].is_unique  # a dropped sample is never drawn again
    first, second = rounds[0], rounds[1]
    assert first["dropped"] == by[(0, "dropped")] and first["added"] == by[(1, "balanced")]
    assert first["dropped"] + first["remaining"] == n_train - 100  # the whole pool scored
    assert sum(first["remaining_per_class"].values()) == first["remaining"]
    # Never trained on: the subsets hold the initial and balanced rows only.
    assert second["subset_size"] == 100 + by[(1, "balanced")]
    assert summary["train_sample_passes"] == 2 * 100 + 2 * second["subset_size"]
    assert summary["stop_reason"] == "max_rounds 2 reached" and "remaining" not in second
    assert any("dropped" in line and "remaining" in line for line in lines)


def test_rescore_dropped_keeps_the_learned_in_the_pool_and_scores_them_again(tmp_path):
    job, share, strategy = _job(tmp_path, rescore_dropped=True), _share(), NormBalanced()
    manifest = ShareManifest(share.ids)
    manifest.add(INITIAL, "initial", 0)
    added = strategy.after_round(_view(job, share, manifest, 0))
    # the same draw from the same remainder, but nothing leaves the pool
    assert added.ids.tolist() == NEXT_DRAW and added.remaining == REMAINING
    assert len(added.dropped) == 0
    manifest.add(added.ids, added.reasons, 1)
    nxt = strategy.after_round(_view(job, share, manifest, 1))
    # round 1 scores the 8 rows round 0 got right again; all still right, none left to draw
    assert nxt.infer_sample_passes == len(DROPPED_IDS)
    assert nxt.stop_reason == "no misclassified samples left in the pool"
    assert len(nxt.dropped) == 0
