"""source.imbalance_ratio: train and val thinned class by class by a seeded id hash, test kept."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raysift.config import SourceConfig
from raysift.data.ingest import LONG_TAIL_STREAM, ingest, load_info
from raysift.operators.contract import DataError
from raysift.operators.keys import unit_hash

SEED = 7


def write(path, ids, labels, split):
    """A Parquet file whose x is the id, so a row's values show where it went."""
    pq.write_table(
        pa.table(
            {
                "id": ids,
                "label": labels,
                "split": split,
                "x": pa.array([[float(i)] for i in ids], pa.list_(pa.float32())),
            }
        ),
        path,
    )


def split_ids(out_dir, split):
    return (
        pq.read_table(sorted(str(p) for p in (out_dir / split).iterdir())).column("id").to_pylist()
    )


def lt_cfg(path, **kw):
    return SourceConfig(kind="parquet", path=str(path), val_fraction=0.25, **kw)


@pytest.fixture
def dataset(tmp_path):
    """600 rows of 3 classes; every 5th id is given as test, val is carved from the rest."""
    ids = np.arange(1000, 1600)
    labels = ids % 3
    write(tmp_path / "d.parquet", ids, labels, np.where(ids % 5 == 0, "test", "train"))
    return tmp_path / "d.parquet", ids, labels


def test_each_class_keeps_its_share_of_train_and_val_and_test_is_untouched(dataset, tmp_path):
    path, ids, labels = dataset
    info = ingest(lt_cfg(path, imbalance_ratio=4.0), SEED, tmp_path / "out", shard_rows=50)

    # ratio 4 over 3 classes: class k keeps 4**(-k/2) = 1, 1/2, 1/4 of its rows
    kept = unit_hash(ids, SEED, LONG_TAIL_STREAM) < np.array([1.0, 0.5, 0.25])[labels]
    test = ids % 5 == 0
    val = ~test & (unit_hash(ids, SEED) < 0.25)  # the split's own hash, as without a long tail
    expected = {"train": ~test & ~val & kept, "val": val & kept, "test": test}
    for split, rows in expected.items():
        assert split_ids(tmp_path / "out", split) == ids[rows].tolist()
        assert info.class_counts[split] == np.bincount(labels[rows], minlength=3).tolist()
    assert info.class_counts == {
        "train": [122, 63, 29],
        "val": [38, 16, 17],
        "test": [40, 40, 40],
    }  # pins the hash stream
    assert info.counts == {"train": 214, "val": 71, "test": 120}
    assert info.long_tail == {
        "imbalance_ratio": 4.0,
        "keep_fraction": [1.0, 0.5, 0.25],
        "class_counts_before": {
            "train": np.bincount(labels[~test & ~val]).tolist(),
            "val": np.bincount(labels[val]).tolist(),
        },
    }
    assert "long-tailed (source.imbalance_ratio 4)" in info.source
    assert load_info(tmp_path / "out") == info
    assert len(list((tmp_path / "out" / "train").iterdir())) == -(-214 // 50)


def test_same_seed_same_rows_whatever_the_chunking_and_a_new_seed_others(dataset, tmp_path):
    path = dataset[0]
    ingest(lt_cfg(path, imbalance_ratio=10.0), SEED, tmp_path / "a")
    ingest(lt_cfg(path, imbalance_ratio=10.0), SEED, tmp_path / "b", chunk_rows=7, shard_rows=13)
    ingest(lt_cfg(path, imbalance_ratio=10.0), SEED + 1, tmp_path / "c")
    a, b, c = ({s: split_ids(tmp_path / d, s) for s in ("train", "val")} for d in "abc")
    assert a == b
    assert a != c


def test_a_class_the_cut_empties_in_train_stops_ingest(tmp_path):
    # class 1 of 2 keeps 1/100 of its rows: give it three rows whose hashes all miss
    miss = [
        i for i in range(100, 200) if unit_hash(np.array([i]), SEED, LONG_TAIL_STREAM)[0] >= 0.01
    ][:3]
    write(tmp_path / "d.parquet", [1, 2] + miss, [0, 0, 1, 1, 1], ["train"] * 5)
    cfg = SourceConfig(
        kind="parquet", path=str(tmp_path / "d.parquet"), val_fraction=0.0, imbalance_ratio=100.0
    )
    with pytest.raises(
        DataError,
        match=r"source\.imbalance_ratio 100: class 1 keeps none of its "
        r"3 train rows \(its share is 0\.01\); lower the ratio",
    ):
        ingest(cfg, SEED, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.parquet"]


def test_a_class_the_cut_empties_in_val_is_noted(tmp_path):
    hit = next(
        i for i in range(100, 200) if unit_hash(np.array([i]), SEED, LONG_TAIL_STREAM)[0] < 0.01
    )
    miss = next(
        i for i in range(100, 200) if unit_hash(np.array([i]), SEED, LONG_TAIL_STREAM)[0] >= 0.01
    )
    write(tmp_path / "d.parquet", [1, 2, hit, miss], [0, 0, 1, 1], ["train", "val", "train", "val"])
    info = ingest(
        SourceConfig(kind="parquet", path=str(tmp_path / "d.parquet"), imbalance_ratio=100.0),
        SEED,
        tmp_path / "out",
    )
    assert info.class_counts == {"train": [1, 1], "val": [1, 0], "test": [0, 0]}
    assert info.source.endswith("; val has no rows of class 1")
