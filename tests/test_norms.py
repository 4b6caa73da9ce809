"""Norms by hand, the map_batches operator on Ray, per-class statistics, and bad input."""

import numpy as np
import pytest

from raysift.operators.contract import ID, LABEL, DataError, X, data_errors, from_columns
from raysift.operators.norms import Norms, add_norms, class_norm_stats


def _norm(x, **kw):
    return Norms(**kw).norms(np.asarray(x, dtype=np.float32))


def test_pixel_weighted_l2_combines_channels_then_takes_l2():
    # Channels R=[1,1], G=[1,0], B=[0,2]; weights 1,2,2 -> pixels [3, 5] -> sqrt(34).
    x = [[[[1, 1]], [[1, 0]], [[0, 2]]]]
    assert _norm(x, channel_weights=[1, 2, 2]).tolist() == pytest.approx([np.sqrt(34)])
    # Default for three channels is luminance: pixels [0.299 + 0.587, 0.299 + 2 * 0.114].
    expected = np.hypot(0.299 + 0.587, 0.299 + 2 * 0.114)
    assert _norm(x).tolist() == pytest.approx([expected], rel=1e-6)


def test_pixel_weighted_l2_defaults_for_one_and_two_channels():
    assert _norm([[[[3, 4], [0, 0]]]]).tolist() == [5.0]  # one channel: weight 1
    assert _norm([[3, 4]]).tolist() == [5.0]  # a flat sample is one channel
    assert _norm([[[2, 0], [4, 6]]]).tolist() == pytest.approx([np.sqrt(18)])  # mean: [3, 3]


def test_raw_norms():
    x = [[[-3, 4], [0, -12]], [[0, 0], [0, 0]]]
    assert _norm(x, kind="l1").tolist() == [19.0, 0.0]
    assert _norm(x, kind="l2").tolist() == [13.0, 0.0]
    assert _norm(x, kind="linf").tolist() == [12.0, 0.0]


def test_bad_parameters_name_themselves():
    with pytest.raises(ValueError, match="kind"):
        Norms(kind="l3")
    with pytest.raises(ValueError, match="channel_weights"):
        Norms(kind="l2", channel_weights=[1.0])
    with pytest.raises(ValueError, match="channel_weights"):
        Norms(channel_weights=[1.0, float("nan")])
    with pytest.raises(DataError, match="3 channel.*channel_weights has 2"):
        _norm(np.zeros((1, 3, 2, 2)), channel_weights=[0.5, 0.5])


def _dataset(x, labels=None, rows_per_block=2):
    ids = np.arange(len(x), dtype=np.int64) + 10
    cols = {ID: ids, X: np.asarray(x, dtype=np.float32)}
    if labels is not None:
        cols[LABEL] = np.asarray(labels, dtype=np.int64)
    return from_columns(cols, rows_per_block=rows_per_block)


def test_operator_adds_norm_on_ray(ray_session):
    x = np.zeros((5, 1, 2, 2), np.float32)
    x[:, 0, 0, 0] = [3, 0, 6, 1, 8]
    x[:, 0, 1, 1] = [4, 0, 8, 0, 6]
    out = add_norms(_dataset(x), Norms()).take_all()
    assert [r["norm"] for r in out] == [5.0, 0.0, 10.0, 1.0, 10.0]
    assert [r[ID] for r in out] == [10, 11, 12, 13, 14]
    np.testing.assert_array_equal(np.stack([r[X] for r in out]), x)

    slim = add_norms(_dataset(x), Norms(keep_features=False))
    assert sorted(slim.schema().names) == sorted([ID, "norm"])


def test_nan_and_ragged_rows_are_named(ray_session):
    x = np.ones((4, 3), np.float32)
    x[2, 1] = np.inf
    with pytest.raises(DataError, match="column 'x'.*id 12"):
        with data_errors():
            add_norms(_dataset(x), Norms()).materialize()
    ragged = {ID: np.arange(2), X: np.array([np.zeros(3), np.zeros(4)], dtype=object)}
    with pytest.raises(DataError, match="ragged.*id 1 has shape \\(4,\\)"):
        Norms()(ragged)


def test_class_norm_stats_by_hand(ray_session):
    ds = from_columns(
        {
            ID: np.arange(5),
            LABEL: np.array([1, 0, 0, 1, 0]),
            "norm": np.array([10, 1, 2, 10, 3], np.float32),
        },
        rows_per_block=2,
    )
    stats = class_norm_stats(ds)
    assert list(stats.columns) == [LABEL, "count", "mean", "std", "min", "max"]
    assert stats[LABEL].tolist() == [0, 1]
    assert stats["count"].tolist() == [3, 2]
    assert stats["mean"].tolist() == pytest.approx([2.0, 10.0])
    assert stats["std"].tolist() == pytest.approx([np.sqrt(2 / 3), 0.0])
    assert stats["min"].tolist() == [1.0, 10.0]
    assert stats["max"].tolist() == [3.0, 10.0]


def test_class_norm_stats_errors(ray_session):
    with pytest.raises(DataError, match="missing column.*'label'"):
        class_norm_stats(_dataset(np.ones((3, 2))).map_batches(Norms(), batch_format="numpy"))
    x = np.ones((3, 2), np.float32)
    x[1, 0] = np.nan
    with pytest.raises(DataError, match="NaN or inf.*id 11"):
        class_norm_stats(_dataset(x, labels=[0, 0, 1]).map_batches(Norms(), batch_format="numpy"))
