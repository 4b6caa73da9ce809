"""M1's balanced draw on hand-made classes, the seeded random draw, and their bad input."""

import numpy as np
import pytest

from raysift.operators.contract import ID, LABEL, DataError, X, from_columns
from raysift.operators.keys import hash_keys
from raysift.operators.select import balanced_draw, random_draw, smallest_per_group

# id -> norm per class; the comments give the mean and the two sides in draw order.
CLASSES = {
    # mean 4.5; above ascending: 2(5) 4(6) 6(7) 0(8); below descending: 3(4) 7(3) 5(2) 1(1)
    0: {0: 8, 1: 1, 2: 5, 3: 4, 4: 6, 5: 2, 6: 7, 7: 3},
    # mean 3.2; above: 10(10) only; below: 13(3) 12(2) 11(1) 14(0)
    1: {10: 10, 11: 1, 12: 2, 13: 3, 14: 0},
    # mean 2; two samples only
    2: {20: 1, 21: 3},
    # mean 4; id 31 sits exactly on the mean and counts as above
    3: {30: 2, 31: 4, 32: 6},
}


def _classes(rows_per_block=3, as_norm_column=False):
    ids = np.array([i for c in CLASSES.values() for i in c], np.int64)
    labels = np.array([k for k, c in CLASSES.items() for _ in c], np.int64)
    norms = np.array([v for c in CLASSES.values() for v in c.values()], np.float32)
    order = np.random.default_rng(0).permutation(len(ids))  # rows in no helpful order
    cols = {ID: ids[order], LABEL: labels[order]}
    if as_norm_column:
        cols["norm"] = norms[order]
        cols[X] = np.zeros((len(ids), 2), np.float32)  # would give norm 0: must not be used
    else:
        x = np.zeros((len(ids), 1, 2), np.float32)
        x[:, 0, 1] = norms  # one channel, [0, v]: its pixel-weighted L2 norm is v
        cols[X] = x[order]
    return from_columns(cols, rows_per_block=rows_per_block)


def _by_class(sel):
    lookup = {i: c for c, members in CLASSES.items() for i in members}
    out = {}
    for i in sel.ids.tolist():
        out.setdefault(lookup[i], []).append(i)
    return out


def test_a_above_b_below_with_one_side_filling_in(ray_session):
    sel = balanced_draw(_classes(), per_class=4)
    assert _by_class(sel) == {
        0: [2, 4, 3, 7],  # a = 2 from above, b = 2 from below, closest to the mean first
        1: [10, 13, 12, 11],  # only one above the mean: below fills in
        2: [21, 20],  # smaller than m: all of it
        3: [31, 32, 30],  # on the mean counts as above
    }
    assert set(sel.reasons) == {"balanced"}
    assert sel.ids.dtype == np.int64
    assert sel.notes == ["fewer than per_class=4, all taken: class (samples) 2 (2), 3 (3)"]


def test_odd_m_takes_the_extra_one_above(ray_session):
    sel = balanced_draw(_classes(), per_class=3)
    assert _by_class(sel)[0] == [2, 4, 3]
    assert _by_class(sel)[1] == [10, 13, 12]
    assert _by_class(sel)[3] == [31, 32, 30]


def test_same_draw_for_any_block_layout_and_from_a_norm_column(ray_session):
    expected = balanced_draw(_classes(rows_per_block=3), per_class=5).ids.tolist()
    assert balanced_draw(_classes(rows_per_block=100), per_class=5).ids.tolist() == expected
    assert (
        balanced_draw(_classes(rows_per_block=2, as_norm_column=True), per_class=5).ids.tolist()
        == expected
    )


def test_excluded_ids_leave_the_class_and_its_mean(ray_session):
    # Class 0 without ids 2 and 4: norms 8 1 4 2 7 3, mean 25/6; above 6(7) 0(8); below 3 7 5 1.
    sel = balanced_draw(_classes(), per_class=3, exclude_ids=[2, 4, 10, 11, 12, 13, 14])
    got = _by_class(sel)
    assert got[0] == [6, 0, 3]
    assert 1 not in got  # every id of class 1 excluded


def test_balanced_draw_bad_input(ray_session):
    for m in (0, -1, 2.5):
        with pytest.raises(ValueError, match="per_class"):
            balanced_draw(_classes(), per_class=m)
    no_label = from_columns({ID: np.arange(3), X: np.ones((3, 2), np.float32)})
    with pytest.raises(DataError, match="missing column.*'label'"):
        balanced_draw(no_label, per_class=1)
    x = np.ones((4, 2), np.float32)
    x[3, 0] = np.nan
    bad = from_columns({ID: np.arange(4) + 5, LABEL: np.zeros(4, np.int64), X: x})
    with pytest.raises(DataError, match="NaN or inf.*id 8"):
        balanced_draw(bad, per_class=1)


def test_smallest_per_group_breaks_ties_by_id():
    group = np.array([1, 0, 1, 1, 0, 1])
    key = np.array([5.0, 2.0, 1.0, 5.0, 2.0, 0.0])
    ids = np.array([9, 8, 7, 3, 4, 5])
    keep = smallest_per_group(group, key, ids, np.array([1, 3]))
    assert ids[keep].tolist() == [4, 5, 7, 3]  # group 0: tie 2.0 -> id 4; group 1: 0, 1, 5(id 3)


def _ids(n, rows_per_block):
    return from_columns(
        {ID: np.arange(n, dtype=np.int64) * 3, LABEL: np.zeros(n, np.int64)},
        rows_per_block=rows_per_block,
    )


def test_random_draw_is_seeded_and_layout_free(ray_session):
    sel = random_draw(_ids(40, 7), n=10, seed=3)
    assert len(sel) == 10 and len(set(sel.ids.tolist())) == 10
    assert sel.ids.tolist() == sorted(sel.ids.tolist())
    assert set(sel.ids.tolist()) <= set(range(0, 120, 3))
    assert random_draw(_ids(40, 40), n=10, seed=3).ids.tolist() == sel.ids.tolist()
    assert random_draw(_ids(40, 7), n=10, seed=4).ids.tolist() != sel.ids.tolist()
    # The ten smallest keys of hash(seed, id), computed here by hand:
    ids = np.arange(40) * 3
    assert sel.ids.tolist() == sorted(ids[np.argsort(hash_keys(ids, 3))[:10]].tolist())
    assert set(sel.reasons) == {"initial"}

    by_ratio = random_draw(_ids(40, 7), ratio=0.25, seed=3, reason="random")
    assert by_ratio.ids.tolist() == sel.ids.tolist() and set(by_ratio.reasons) == {"random"}


def test_random_draw_larger_than_the_data_takes_all(ray_session):
    sel = random_draw(_ids(5, 2), n=8, seed=0)
    assert sel.ids.tolist() == [0, 3, 6, 9, 12]
    assert sel.notes == ["random_draw: asked for n=8 but the dataset has 5 rows; all taken"]


def test_random_draw_bad_input(ray_session):
    with pytest.raises(ValueError, match="exactly one of ratio and n"):
        random_draw(_ids(5, 2), ratio=0.5, n=2)
    with pytest.raises(ValueError, match="ratio"):
        random_draw(_ids(5, 2), ratio=0.0)
    with pytest.raises(ValueError, match="n must"):
        random_draw(_ids(5, 2), n=-1)
    with pytest.raises(DataError, match="missing column.*'id'"):
        random_draw(from_columns({"key": np.arange(3)}), n=1)
