"""Rows per group, counted block by block: the same table as a groupby, however the blocks fall."""

import ray

from raysift.operators.counts import group_counts


def test_counts_per_group_over_several_blocks(ray_session):
    rows = [{"label": i % 3, "source": "real" if i < 7 else "smote", "x": i} for i in range(10)]
    ds = ray.data.from_items(rows, override_num_blocks=4)
    assert group_counts(ds, ["label"]) == {(0,): 4, (1,): 3, (2,): 3}
    assert group_counts(ds, ["source", "label"]) == {
        ("real", 0): 3,
        ("real", 1): 2,
        ("real", 2): 2,
        ("smote", 0): 1,
        ("smote", 1): 1,
        ("smote", 2): 1,
    }
    (key,) = group_counts(ds.filter(expr="x == 4"), ["label"])
    assert type(key[0]) is int  # plain Python values, not NumPy scalars
    assert group_counts(ds.filter(expr="x < 0"), ["label"]) == {}
