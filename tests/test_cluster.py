"""Distributed k-means by hand and on blobs, representatives, and the near-duplicate filter."""

import numpy as np
import pyarrow as pa
import pytest
import ray
from ray.data.extensions import ArrowTensorArray
from sklearn.cluster import KMeans as SkKMeans

from raysift.operators.cluster import (
    KMeans,
    drop_near_duplicates,
    greedy_keep,
    proportional_counts,
    representatives,
)
from raysift.operators.contract import ID, LABEL, DataError, X, from_columns


def _points(x, rows_per_block=2, column=X, ids=None):
    x = np.asarray(x, dtype=np.float32)
    ids = np.arange(len(x), dtype=np.int64) if ids is None else np.asarray(ids, np.int64)
    return from_columns(
        {ID: ids, LABEL: np.zeros(len(x), np.int64), column: x}, rows_per_block=rows_per_block
    )


HAND = [[0, 0], [0, 2], [10, 0], [10, 4], [4, 0]]


def test_one_lloyd_step_by_hand(ray_session):
    # Centres (0,0) and (10,0): {p0, p1, p4} and {p2, p3} -> means (4/3, 2/3) and (10, 2).
    km = KMeans(2, init=[[0, 0], [10, 0]], max_iter=1, tol=0.0).fit(_points(HAND))
    np.testing.assert_allclose(km.cluster_centers_, [[4 / 3, 2 / 3], [10, 2]], rtol=1e-6)
    assert km.n_iter_ == 1
    # Inertia at the new centres: (20 + 32 + 68) / 9 for the first cluster, 4 + 4 for the second.
    assert km.inertia_ == pytest.approx(120 / 9 + 8, rel=1e-6)
    assert km.counts_.tolist() == [3, 2]

    out = km.assign(_points(HAND)).take_all()
    assert [r["cluster"] for r in out] == [0, 0, 1, 1, 0]
    np.testing.assert_allclose(
        [r["dist"] for r in out], np.sqrt([20 / 9, 32 / 9, 4, 4, 68 / 9]), rtol=1e-6
    )
    batch = next(iter(km.assign(_points(HAND)).iter_batches(batch_format="numpy")))
    assert batch["cluster"].dtype == np.int64 and batch["dist"].dtype == np.float32

    # The next step moves nothing, so a zero tolerance stops after it.
    assert KMeans(2, init=[[0, 0], [10, 0]], max_iter=10, tol=0.0).fit(_points(HAND)).n_iter_ == 2


def _blobs(n_per=100, seed=0):
    rng = np.random.default_rng(seed)
    truth = np.array([[0, 0, 0, 0], [10, 10, 0, 0], [0, 10, 10, -10]], np.float32)
    x = np.concatenate([c + 0.3 * rng.standard_normal((n_per, 4)) for c in truth])
    return x[rng.permutation(len(x))].astype(np.float32), truth


def _sorted_rows(a):
    return a[np.lexsort(np.round(a).T[::-1])]


def test_recovers_blob_centres_deterministically(ray_session):
    x, truth = _blobs()
    km = KMeans(3, seed=5, column="embedding").fit(_points(x, 40, column="embedding"))
    np.testing.assert_allclose(_sorted_rows(km.cluster_centers_), _sorted_rows(truth), atol=0.1)
    assert sorted(km.counts_.tolist()) == [100, 100, 100]
    again = KMeans(3, seed=5, column="embedding").fit(_points(x, 40, column="embedding"))
    assert np.array_equal(again.cluster_centers_, km.cluster_centers_)
    other_layout = KMeans(3, seed=5, column="embedding").fit(_points(x, 70, column="embedding"))
    # Other blocks, other float32 partial sums: equal up to rounding.
    np.testing.assert_allclose(other_layout.cluster_centers_, km.cluster_centers_, rtol=1e-5)

    mini = KMeans(3, seed=5, mini_batch=100, max_iter=15, column="embedding").fit(
        _points(x, 40, column="embedding")
    )
    np.testing.assert_allclose(_sorted_rows(mini.cluster_centers_), _sorted_rows(truth), atol=0.2)


def test_matches_scikit_learn_from_the_same_start(ray_session):
    x, _ = _blobs(n_per=60, seed=1)
    x = x + np.random.default_rng(2).standard_normal(x.shape).astype(np.float32) * 4
    init = x[:5].astype(np.float64)
    ours = KMeans(5, init=init, max_iter=300, tol=0.0).fit(_points(x, 50))
    ref = SkKMeans(5, init=init, n_init=1, max_iter=300, tol=0.0, algorithm="lloyd").fit(x)
    np.testing.assert_allclose(ours.cluster_centers_, ref.cluster_centers_, rtol=1e-4, atol=1e-4)
    assert ours.inertia_ == pytest.approx(ref.inertia_, rel=1e-5)


def test_empty_cluster_is_reseeded_at_the_farthest_point(ray_session):
    # Step 1: {0,1,2} -> 1 and {10,11,12,20} -> 13.25; nothing near 100, so that centre moves to
    # the point farthest from 1 and 13.25: 20. Step 2 settles on 1, 11 and 20.
    x = [[0], [1], [2], [10], [11], [12], [20]]
    km = KMeans(3, init=[[1], [11], [100]], tol=0.0).fit(_points(x))
    np.testing.assert_allclose(km.cluster_centers_, [[1], [11], [20]])
    assert km.inertia_ == pytest.approx(4.0)
    assert km.counts_.tolist() == [3, 3, 1]


def test_bad_parameters_name_themselves(ray_session):
    ds = _points(HAND)
    for kwargs, name in [
        ({"n_clusters": 0}, "n_clusters"),
        ({"tol": -1.0}, "tol"),
        ({"init": "kmeans"}, "init"),
        ({"mini_batch": 0}, "mini_batch"),
        ({"max_iter": 0}, "max_iter"),
        ({"sample_size": 1}, "sample_size"),
        ({"init": [[0, 0]]}, "init"),
    ]:
        with pytest.raises(ValueError, match=name):
            KMeans(**{"n_clusters": 2, **kwargs}).fit(ds)
    with pytest.raises(ValueError, match=r"n_clusters=6 is larger than the .* \(5\)"):
        KMeans(6).fit(ds)
    with pytest.raises(ValueError, match=r"n_clusters=6 .* \(5\)"):
        KMeans(6, init=np.zeros((6, 2))).fit(ds)
    with pytest.raises(RuntimeError, match="fit"):
        KMeans(2).assign(ds)


def test_bad_features_are_named(ray_session):
    x = np.array(HAND, np.float32)
    x[3, 1] = np.nan
    with pytest.raises(DataError, match="NaN or inf.*id 3"):
        KMeans(2).fit(_points(x))
    with pytest.raises(DataError, match="missing column.*'embedding'"):
        KMeans(2, column="embedding").fit(_points(HAND))
    mixed = ray.data.from_arrow(
        [
            pa.table({ID: [0, 1, 2], X: ArrowTensorArray.from_numpy(np.zeros((3, 2), np.float32))}),
            pa.table({ID: [3, 4], X: ArrowTensorArray.from_numpy(np.ones((2, 3), np.float32))}),
        ]
    )
    with pytest.raises(DataError, match="shape"):
        KMeans(2).fit(mixed)
    with pytest.raises(DataError, match="3 features, but the centres have 2"):
        KMeans(2, init=[[0, 0], [1, 1]], max_iter=1).fit(_points(np.ones((4, 3))))


def test_proportional_counts_by_hand():
    assert proportional_counts([6, 3, 1], 5).tolist() == [3, 2, 0]  # 3, 1.5, 0.5: tie -> lower
    assert proportional_counts([5, 3, 2], 7).tolist() == [4, 2, 1]  # 3.5, 2.1, 1.4
    assert proportional_counts([1, 1, 1], 2).tolist() == [1, 1, 0]
    assert proportional_counts([2, 7], 20).tolist() == [2, 7]


def _assigned(rows, rows_per_block=3):
    ids, cluster, dist = (np.array(c) for c in zip(*rows))
    return from_columns(
        {
            ID: ids.astype(np.int64),
            "cluster": cluster.astype(np.int64),
            "dist": dist.astype(np.float32),
        },
        rows_per_block=rows_per_block,
    )


def test_representatives_are_proportional_and_nearest_first(ray_session):
    rows = (
        [(i, 0, d) for i, d in zip(range(6), [5, 1, 3, 1, 9, 2])]  # 6 rows: 3 taken
        + [(10, 1, 4.0), (11, 1, 0.5), (12, 1, 4.0)]  # 3 rows: 1.5 -> 2 (tie goes to 1)
        + [(20, 2, 0.0)]
    )  # 1 row: 0.5 -> 0
    sel = representatives(_assigned(rows), 5)
    assert sel.ids.tolist() == [1, 3, 5, 11, 10]  # dist ties go to the smaller id
    assert set(sel.reasons) == {"representative"} and not sel.notes
    assert representatives(_assigned(rows, 10), 5).ids.tolist() == sel.ids.tolist()
    everything = representatives(_assigned(rows), 50)
    assert sorted(everything.ids.tolist()) == [0, 1, 2, 3, 4, 5, 10, 11, 12, 20]
    assert everything.notes == ["representatives: asked for 50 but there are 10 rows; all taken"]
    with pytest.raises(ValueError, match="n_total"):
        representatives(_assigned(rows), -1)


def test_near_duplicates_dropped_distinct_points_kept(ray_session):
    x = np.array(
        [
            [0, 0],
            [0.05, 0],
            [1, 0],
            [1, 0.05],
            [0, 1],  # cluster 0, centre (0, 0)
            [0.08, 0],
            [0.16, 0],  # a chain: 0.08 is near the kept (0,0), 0.16 is not
            [10, 10],
            [10, 10],
        ],
        np.float32,
    )  # cluster 1, centre (10, 10): exact copies
    cluster = [0, 0, 0, 0, 0, 0, 0, 1, 1]
    centre = np.array([[0, 0], [10, 10]], np.float32)[cluster]
    ds = from_columns(
        {
            ID: np.array([0, 1, 2, 3, 4, 5, 6, 8, 7]),
            "cluster": np.array(cluster),
            "dist": np.linalg.norm(x - centre, axis=1).astype(np.float32),
            X: x,
        },
        rows_per_block=4,
    )
    kept = drop_near_duplicates(ds, 0.1).take_all()
    assert sorted(r[ID] for r in kept) == [0, 2, 4, 6, 7]  # of the copies, the smaller id stays
    assert len(drop_near_duplicates(ds, 0.01).take_all()) == 8  # only the exact copy goes
    with pytest.raises(ValueError, match="threshold"):
        drop_near_duplicates(ds, 0.0)


def test_greedy_keep_across_chunks():
    # 600 points 0.06 apart on a line: every other one is kept, across chunk boundaries.
    pos = np.arange(600) * 0.06
    x = np.stack([pos, np.zeros(600)], axis=1)
    assert np.flatnonzero(greedy_keep(x, pos, 0.1)).tolist() == list(range(0, 600, 2))


def test_m2_representatives_skip_the_near_copies_of_a_chosen_row():
    """Each blob: a sample with three near-copies at its centre, three distinct rows around it.
    Two per blob without the filter are two copies of one sample; with it, a copy and then the
    nearest distinct row."""
    from raysift.training.collective import representatives as m2_representatives

    base = np.array(
        [[0, 0], [0.01, 0], [0, 0.01], [-0.01, 0], [0, 1.0], [1.2, 0], [-1.4, 0]], np.float32
    )
    x = np.concatenate([base, base + 100])
    rows = {ID: np.arange(100, 114, dtype=np.int64), X: x}
    # Blob centre (-0.2 / 7, 1.01 / 7): the copies (0, 0.01) and (-0.01, 0) are nearest (0.137,
    # 0.146), then (0, 0) and (0.01, 0); of the distinct rows (0, 1) (0.856), then (1.2, 0).
    plain = m2_representatives(rows, X, 4, 2, seed=0)
    assert sorted(plain.tolist()) == [102, 103, 109, 110]  # two copies of one sample, twice
    deduped = m2_representatives(rows, X, 4, 2, seed=0, dedup=0.1)
    assert sorted(deduped.tolist()) == [102, 104, 109, 111]
    everything = m2_representatives(rows, X, 50, 2, seed=0, dedup=0.1)
    assert sorted(everything.tolist()) == [102, 104, 105, 106, 109, 111, 112, 113]
    # Rows chosen before (here a row at (0, 0.005)) bar their near-copies too: blob A's four
    # copies all lie within 0.1 of it, so its two are the nearest distinct rows.
    taken = np.array([[0, 0.005]], np.float32)
    after = m2_representatives(rows, X, 4, 2, seed=0, dedup=0.1, taken=taken)
    assert sorted(after.tolist()) == [104, 105, 109, 111]
