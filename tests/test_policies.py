"""The strategy policies on one rank, on hand-made rows with a model whose answers are fixed:
`full`, `random` and M2 (M1 and InfoBatch have their own files)."""

import math

import numpy as np
import torch
import torch.nn.functional as F

from raysift.config import from_dict
from raysift.data.share import Share
from raysift.job.engine import share_scorer
from raysift.manifest import ShareManifest
from raysift.operators.keys import hash_keys
from raysift.seeding import derive_seed
from raysift.selection.strategies import M2, Full, RandomGrowth, RoundView

SEED = 5
N = 30
IDS = np.arange(100, 100 + N)
LABELS = IDS % 3
WRONG = {103, 107, 108, 115, 121, 122, 129}  # the stub's mistakes


class ReadsItsAnswer(torch.nn.Module):
    """Predicts the class written in channel 0 of the sample."""

    def forward(self, x):
        return 20.0 * F.one_hot(x[:, 0, 0].long(), 3).float()


def _share(features=None):
    x = np.zeros((N, 2, 1), np.float32)
    x[:, 0, 0] = [(y + 1) % 3 if i in WRONG else y for i, y in zip(IDS, LABELS)]
    if features is not None:
        x[:, 1, 0] = features
    return Share.from_arrays(IDS, LABELS, x)


def _job(**strategy):
    return from_dict(
        {
            "seed": SEED,
            "train": {"num_workers": 1},
            "score": {"batch_size": 4},
            "strategy": {"name": "m2", **strategy},
        }
    )


def _pool(share, manifest_ids):
    """The share's rows outside a manifest of `manifest_ids`."""
    manifest = ShareManifest(share.ids)
    manifest.add(manifest_ids, "taken", 0)
    return manifest.pool_rows()


def _view(job, share, manifest_ids, round_index=0):
    return RoundView(
        job=job,
        round_index=round_index,
        num_classes=3,
        share=share,
        pool=_pool(share, manifest_ids),
        score_rows=share_scorer(ReadsItsAnswer(), share, "cpu"),
    )


def test_full_takes_every_row_once_and_stops_after_its_round():
    job, share = _job(name="full"), _share()
    first = Full().initial(_view(job, share, []))
    assert first.ids.tolist() == IDS.tolist() and set(first.reasons) == {"all"}
    assert Full().after_round(_view(job, share, IDS)).stop_reason == "full data trained"
    assert Full.single_round and not M2.single_round


def test_random_draws_the_smallest_seeded_hashes():
    job = _job(name="random", initial_ratio=0.3, hard_per_round=4, reps_per_round=1)
    share = _share()
    first = RandomGrowth().initial(_view(job, share, []))
    n = math.floor(0.3 * N + 0.5)
    keys = hash_keys(IDS, derive_seed(SEED, "initial"))
    assert first.ids.tolist() == sorted(IDS[np.argsort(keys)[:n]].tolist())
    added = RandomGrowth().after_round(_view(job, share, first.ids, round_index=2))
    pool = IDS[~np.isin(IDS, first.ids)]
    keys = hash_keys(pool, derive_seed(SEED, "random", 2))
    assert added.ids.tolist() == sorted(pool[np.argsort(keys)[:5]].tolist())
    assert set(added.reasons) == {"random"} and added.stop_reason is None


def test_m2_takes_the_first_mistakes_of_its_scan_and_the_rest_as_representatives():
    job, share = _job(hard_per_round=3, reps_per_round=100), _share()
    subset = IDS[:6]
    added = M2().after_round(_view(job, share, subset, round_index=1))
    pool = np.arange(6, N)
    order = IDS[pool[np.random.default_rng(derive_seed(SEED, "pool", 1, 0)).permutation(len(pool))]]
    misses = np.flatnonzero(np.isin(order, list(WRONG)))
    stop_at = -(-(misses[2] + 1) // 4) * 4  # batches of 4 until the third miss is in hand
    scored = order[:stop_at]
    hard = [i for i in scored if i in WRONG][:3]
    assert added.ids[:3].tolist() == hard and added.hard_found == 3
    assert added.infer_sample_passes == len(scored)
    # Fewer correct scored rows than reps_per_round: all of them, in scan order.
    assert added.ids[3:].tolist() == [i for i in scored if i not in WRONG]
    assert list(added.reasons) == ["hard"] * 3 + ["representative"] * (len(added.ids) - 3)


def test_m2_representatives_are_the_rows_nearest_each_centre():
    # Feature channel 1: two groups, around 0 and around 1000, far wider than channel 0 (the
    # stub's answer, 0-2); the mistakes are in the subset already, so nothing is left to find.
    features = np.where(np.arange(N) < 15, 0.0, 1000.0) + np.tile([0, -10, 10, -20, 20], 6)
    job = _job(hard_per_round=1, reps_per_round=2, cluster_k=2, cluster_on="x", reps_pick="nearest")
    share = _share(features)
    right = ~np.isin(IDS, list(WRONG))
    added = M2().after_round(_view(job, share, IDS[~right]))  # no mistakes left to find
    assert added.stop_reason == "no hard samples left in the pool"
    centred = IDS[(features == 0) | (features == 1000)]  # the rows nearest each group's mean
    reps = added.ids.tolist()
    assert len(reps) == 2 and set(reps) <= set(centred.tolist())
    assert {r < 115 for r in reps} == {True, False}  # one from each group


def test_m2_representatives_are_by_default_each_clusters_smallest_seeded_hashes():
    # The two groups of the test above; 12 and 11 right rows, so 6 representatives split 3 / 3
    # (largest remainder), each group's the 3 rows of smallest hash(k-means seed, id).
    features = np.where(np.arange(N) < 15, 0.0, 1000.0) + np.tile([0, -10, 10, -20, 20], 6)
    job = _job(hard_per_round=1, reps_per_round=6, cluster_k=2, cluster_on="x")  # the default
    right = ~np.isin(IDS, list(WRONG))
    added = M2().after_round(_view(job, _share(features), IDS[~right]))
    seed = derive_seed(SEED, "kmeans", 0) % 2**31
    expected = []
    for group in (IDS[right & (IDS < 115)], IDS[right & (IDS >= 115)]):
        expected += group[np.argsort(hash_keys(group, seed))[:3]].tolist()
    assert sorted(added.ids.tolist()) == sorted(expected)
    assert set(added.reasons) == {"representative"}
    nearest = M2().after_round(
        _view(
            _job(
                hard_per_round=1, reps_per_round=6, cluster_k=2, cluster_on="x", reps_pick="nearest"
            ),
            _share(features),
            IDS[~right],
        )
    )
    assert set(nearest.ids.tolist()) != set(expected)  # not the cluster cores


class InputLogits(torch.nn.Module):
    def forward(self, x):
        return x


# Logits per row (label): 0 right and sure, 1 wrong, 2 right with a small margin (0.05, loss
# 0.64), 3 right with the highest loss (0.79, margin 0.18), 4 and 5 right and sure.
FILL_X = np.array(
    [[5, 0, 0], [0, 5, 0], [2, 1.9, -10], [0.5, 0, 0], [0, 5, 0], [0, 0, 5]], np.float32
)
FILL_Y = np.array([0, 0, 0, 0, 1, 2])


def _fill_view(job, subset=()):
    share = Share.from_arrays(np.arange(6), FILL_Y, FILL_X)
    return RoundView(
        job=job,
        round_index=1,
        num_classes=3,
        share=share,
        pool=_pool(share, np.array(subset, np.int64)),
        score_rows=share_scorer(InputLogits(), share, "cpu"),
    )


def test_m2_fills_the_hard_rows_the_pool_lacks_by_loss_or_by_margin():
    for by, nearest in (("loss", [3]), ("margin", [2])):
        job = _job(hard_per_round=2, reps_per_round=0, hard_fill=by)
        added = M2().after_round(_fill_view(job))
        assert added.ids.tolist() == [1] + nearest and added.hard_found == 1
        assert list(added.reasons) == ["hard", "hard_fill"] and added.stop_reason is None
    job = _job(hard_per_round=3, reps_per_round=0, hard_fill="loss")
    assert M2().after_round(_fill_view(job)).ids.tolist() == [1, 3, 2]  # hardest first
    # the source rule: only the one misprediction
    assert M2().after_round(_fill_view(_job(hard_per_round=2, reps_per_round=0))).ids.tolist() == [
        1
    ]


def test_a_filled_row_is_no_representative_and_no_mistake_left_still_adds_the_nearest():
    job = _job(hard_per_round=1, reps_per_round=10, hard_fill="margin", cluster_on="x")
    added = M2().after_round(_fill_view(job, subset=[1]))  # the one mistake is trained on
    assert added.ids[0] == 2 and added.reasons[0] == "hard_fill"
    assert sorted(added.ids[1:].tolist()) == [0, 3, 4, 5]  # every other right row: reps
    assert added.stop_reason is None and added.hard_found == 0
    none = M2().after_round(_fill_view(_job(hard_per_round=1, reps_per_round=0), subset=[1]))
    assert none.stop_reason == "no hard samples left in the pool"
