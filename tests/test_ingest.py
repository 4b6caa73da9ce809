"""Ingest: deterministic ids and splits, and every bad input stopped with a message naming it."""

import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from raysift.config import ConfigError, SourceConfig
from raysift.data.ingest import carve, ingest
from raysift.operators.contract import DataError


def shard_table(folder):
    return pq.read_table(sorted(str(p) for p in folder.iterdir()))


def split_ids(out_dir):
    return {s: shard_table(out_dir / s).column("id").to_pylist() for s in ("train", "val", "test")}


def write(path, labels, x, **extra):
    """A Parquet file whose `x` is a list column (ragged rows allowed)."""
    pq.write_table(
        pa.table({"label": labels, "x": pa.array(x, pa.list_(pa.float64())), **extra}), path
    )
    return path


def parquet_cfg(path, **kw):
    return SourceConfig(kind="parquet", path=str(path), val_fraction=0.0, test_fraction=0.0, **kw)


def test_carve_fractions_and_a_given_test_split_kept():
    ids = np.arange(20000)
    codes = carve(ids, None, 0, frozenset(), test_fraction=0.2, val_fraction=0.25)
    assert abs(np.mean(codes == 2) - 0.2) < 0.01
    assert abs(np.mean(codes == 1) - 0.8 * 0.25) < 0.01
    given = np.where(ids % 4 == 0, 2, 0).astype(np.int8)
    codes = carve(ids, given, 0, frozenset({"train", "test"}), 0.2, 0.25)
    np.testing.assert_array_equal(codes == 2, ids % 4 == 0)
    assert abs(np.mean(codes[ids % 4 != 0] == 1) - 0.25) < 0.015


def test_same_seed_same_ids_and_splits_whatever_the_chunking(tmp_path):
    cfg = SourceConfig(kind="digits", val_fraction=0.1, test_fraction=0.2)
    ingest(cfg, 5, tmp_path / "a", chunk_rows=4096)
    ingest(cfg, 5, tmp_path / "b", chunk_rows=37, shard_rows=100)
    ingest(cfg, 6, tmp_path / "c")
    a, b, c = (split_ids(tmp_path / d) for d in "abc")
    assert a == b
    assert a != c
    assert sorted(a["train"] + a["val"] + a["test"]) == list(range(1797))
    assert len((list((tmp_path / "b" / "train").iterdir()))) == -(-len(b["train"]) // 100)


def test_values_survive_with_the_ids_they_came_with(tmp_path):
    x = np.arange(12.0).reshape(6, 2)
    write(tmp_path / "d.parquet", [3, 1, 4, 1, 5, 9], x.tolist(), id=[60, 50, 40, 30, 20, 10])
    ingest(
        SourceConfig(kind="parquet", path=str(tmp_path), val_fraction=0.3, test_fraction=0.3),
        1,
        tmp_path / "out",
    )
    rows = {}
    for s in ("train", "val", "test"):
        t = shard_table(tmp_path / "out" / s)
        xs = np.concatenate([c.to_numpy() for c in t.column("x").chunks]) if t.num_rows else []
        rows |= {
            i: (lab, list(v))
            for i, lab, v in zip(t.column("id").to_pylist(), t.column("label").to_pylist(), xs)
        }
    assert rows == {
        10: (9, [10, 11]),
        20: (5, [8, 9]),
        30: (1, [6, 7]),
        40: (4, [4, 5]),
        50: (1, [2, 3]),
        60: (3, [0, 1]),
    }


# ---- bad input: each stops with a message naming the field, the file and the row ----------


def test_misnamed_label_column_lists_the_columns_found(tmp_path):
    path = write(tmp_path / "d.parquet", [0, 1], [[1.0], [2.0]])
    with pytest.raises(DataError) as e:
        ingest(parquet_cfg(path, label_column="target"), 0, tmp_path / "out")
    msg = str(e.value)
    assert "d.parquet" in msg and "source.label_column" in msg and "'target'" in msg
    assert "found ['label', 'x']" in msg


def test_missing_feature_column(tmp_path):
    path = write(tmp_path / "d.parquet", [0, 1], [[1.0], [2.0]])
    with pytest.raises(
        DataError,
        match=r"d\.parquet: source\.feature_column: missing column\(s\) "
        r"\['pixels'\]; found \['label', 'x'\]",
    ):
        ingest(parquet_cfg(path, feature_column="pixels"), 0, tmp_path / "out")


def test_non_integer_label(tmp_path):
    path = write(tmp_path / "d.parquet", [0.0, 1.0, 1.5], [[1.0], [2.0], [3.0]])
    with pytest.raises(
        DataError,
        match=r"d\.parquet: source\.label_column 'label' must hold "
        r"integers; row 2 has 1\.5",
    ):
        ingest(parquet_cfg(path), 0, tmp_path / "out")


def test_negative_label(tmp_path):
    path = write(tmp_path / "d.parquet", [0, 2, -1, 1], [[1.0]] * 4)
    with pytest.raises(
        DataError,
        match=r"d\.parquet: source\.label_column 'label' must be >= 0;"
        r" row 2 has label -1",
    ):
        ingest(parquet_cfg(path), 0, tmp_path / "out")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_or_inf_in_features_names_the_row(bad, tmp_path):
    write(tmp_path / "a.parquet", [0, 1], [[1.0, 2.0], [3.0, 4.0]])
    path = write(tmp_path / "b.parquet", [0, 1, 0], [[1.0, 2.0], [3.0, 4.0], [bad, 0.0]])
    with pytest.raises(
        DataError,
        match=r"b\.parquet: source\.feature_column 'x' holds NaN or inf "
        r"at row 2 \(1 such rows",
    ):
        ingest(parquet_cfg(tmp_path), 0, tmp_path / "out", chunk_rows=2)
    assert path.exists() and not (tmp_path / "out").exists()


def test_ragged_feature_lists_within_a_file(tmp_path):
    path = write(tmp_path / "d.parquet", [0, 1, 0], [[1.0, 2.0], [3.0, 4.0], [5.0]])
    with pytest.raises(
        DataError,
        match=r"d\.parquet: source\.feature_column 'x' has ragged "
        r"feature shapes: row 2 holds a list of length 1, not 2",
    ):
        ingest(parquet_cfg(path), 0, tmp_path / "out")


def test_ragged_tensor_column(tmp_path):
    from ray.data.extensions import ArrowTensorArray

    rows = np.empty(3, dtype=object)
    rows[:] = [np.zeros((2, 2)), np.zeros((2, 2)), np.zeros((2, 3))]
    pq.write_table(
        pa.table({"label": [0, 1, 0], "x": ArrowTensorArray.from_numpy(rows)}),
        tmp_path / "t.parquet",
    )
    with pytest.raises(
        DataError,
        match=r"t\.parquet: source\.feature_column 'x' has ragged "
        r"feature shapes: row 2 has shape \(2, 3\), row 0 \(2, 2\)",
    ):
        ingest(parquet_cfg(tmp_path), 0, tmp_path / "out")


def test_ragged_feature_shapes_across_files(tmp_path):
    write(tmp_path / "a.parquet", [0, 1], [[1.0, 2.0], [3.0, 4.0]])
    write(tmp_path / "b.parquet", [0], [[1.0, 2.0, 3.0]])
    with pytest.raises(
        DataError,
        match=r"b\.parquet: .*ragged feature shapes: row 0 has shape "
        r"\(3,\), .*a\.parquet row 0 has \(2,\)",
    ):
        ingest(parquet_cfg(tmp_path), 0, tmp_path / "out")


def test_shape_that_does_not_fit_the_rows(tmp_path):
    path = write(tmp_path / "d.parquet", [0], [[1.0, 2.0, 3.0]])
    with pytest.raises(
        ConfigError,
        match=r"source\.shape: \[1, 2, 2\] holds 4 values, but .*"
        r"d\.parquet row 0 has shape \(3,\)",
    ):
        ingest(parquet_cfg(path, shape=[1, 2, 2]), 0, tmp_path / "out")


def test_duplicate_ids_name_the_id_and_both_places(tmp_path):
    write(tmp_path / "a.parquet", [0, 1], [[1.0], [2.0]], id=[4, 7])
    write(tmp_path / "b.parquet", [0, 1], [[1.0], [2.0]], id=[5, 7])
    with pytest.raises(
        DataError,
        match=r"source\.id_column 'id': id 7 appears more than once: "
        r".*a\.parquet row 1 and .*b\.parquet row 1",
    ):
        ingest(parquet_cfg(tmp_path), 0, tmp_path / "out")


def test_bad_split_value(tmp_path):
    path = write(tmp_path / "d.parquet", [0, 1], [[1.0], [2.0]], split=["train", "tset"])
    with pytest.raises(
        DataError,
        match=r"d\.parquet: source\.split_column 'split' has 'tset' at "
        r"row 1; expected train, val or test",
    ):
        ingest(parquet_cfg(path), 0, tmp_path / "out")


def test_empty_dataset(tmp_path):
    write(tmp_path / "d.parquet", pa.array([], pa.int64()), [])
    with pytest.raises(DataError, match=r"parquet .* \(1 files\): the dataset is empty"):
        ingest(parquet_cfg(tmp_path), 0, tmp_path / "out")


def test_empty_train_split(tmp_path):
    path = write(tmp_path / "d.parquet", [0, 1], [[1.0], [2.0]], split=["test", "val"])
    with pytest.raises(
        DataError,
        match=r"the train split is empty \(\{'train': 0, 'val': 1, "
        r"'test': 1\}\)",
    ):
        ingest(parquet_cfg(path), 0, tmp_path / "out")


def test_path_that_does_not_exist(tmp_path):
    with pytest.raises(DataError, match=r"source\.path: .*nowhere\.npz does not exist"):
        ingest(SourceConfig(kind="npz", path=str(tmp_path / "nowhere.npz")), 0, tmp_path / "o")


def test_glob_that_matches_nothing(tmp_path):
    write(tmp_path / "d.parquet", [0], [[1.0]])
    with pytest.raises(DataError, match=r"source\.path: the glob '.*\*\.pq' matches no files"):
        ingest(parquet_cfg(tmp_path / "*.pq"), 0, tmp_path / "out")


def test_unknown_kind(tmp_path):
    with pytest.raises(
        ConfigError,
        match=r"source\.kind: got 'csv', expected one of mnist1d, "
        r"digits, parquet, npz, idx, imagefolder",
    ):
        ingest(SourceConfig(kind="csv", path=str(tmp_path)), 0, tmp_path / "out")


def test_bad_input_leaves_no_output_and_keeps_an_existing_one(tmp_path):
    path = write(tmp_path / "d.parquet", [0, 1, 2], [[1.0], [2.0], [float("nan")]])
    with pytest.raises(DataError):
        ingest(parquet_cfg(path), 0, tmp_path / "out", shard_rows=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.parquet"]

    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "keep.txt").write_text("x")
    with pytest.raises(ConfigError, match="old already exists; it is never overwritten"):
        ingest(SourceConfig(kind="digits"), 0, tmp_path / "old")
    assert [p.name for p in (tmp_path / "old").iterdir()] == ["keep.txt"]


def _half_a_parquet_file(folder):
    """A Parquet file whose middle is zeros: its footer says Parquet, its metadata is damaged."""
    good = write(folder / "good.parquet", [0, 1] * 5, [[1.0, 2.0]] * 10)
    data = good.read_bytes()
    bad = folder / "bad.parquet"
    bad.write_bytes(data[: len(data) // 2] + bytes(50) + data[-200:])
    return bad


def _truncated_idx(folder):
    import gzip
    import struct

    with gzip.open(folder / "train-images-idx3-ubyte.gz", "wb") as f:
        f.write(struct.pack(">HBB3I", 0, 8, 3, 10, 4, 4) + bytes(100))  # 6.25 of 10 rows
    with gzip.open(folder / "train-labels-idx1-ubyte.gz", "wb") as f:
        f.write(struct.pack(">HBBI", 0, 8, 1, 10) + bytes(range(10)))
    return folder / "train-images-idx3-ubyte.gz"


def _folder_with_a_cut_image(folder):
    from PIL import Image

    for c in "ab":
        (folder / c).mkdir()
        for i in range(2):
            Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(folder / c / f"{i}.png")
    cut = folder / "b" / "1.png"
    cut.write_bytes(cut.read_bytes()[:40])
    return cut


def _latin1_csv(folder):
    path = folder / "t.csv"
    path.write_bytes(b"label,text\n0,hello world\n1,caf\xe9 noir\n0,more text\n")
    return path


@pytest.mark.parametrize(
    "kind, make, message",
    [
        ("parquet", _half_a_parquet_file, r"bad\.parquet: not a readable Parquet file \("),
        (
            "parquet",
            lambda d: (d / "d.parquet").write_text("label,x\n0,1\n") and d / "d.parquet",
            r"d\.parquet: not a readable Parquet file \(Parquet magic bytes not found",
        ),
        (
            "idx",
            _truncated_idx,
            r"train-images-idx3-ubyte\.gz: the file ends at row 6, its header "
            r"says 10 rows",
        ),
        ("imagefolder", _folder_with_a_cut_image, r"b/1\.png: not a readable image \(\w+"),
        (
            "text",
            _latin1_csv,
            r"t\.csv: source\.text_column 'text' is not UTF-8 text: row 1 has "
            r"byte 0xe9 at offset 3; save the file as UTF-8",
        ),
    ],
    ids=["corrupt-parquet", "not-parquet", "truncated-idx", "cut-image", "latin-1-csv"],
)
def test_unreadable_files_are_named(kind, make, message, ray_session, tmp_path):
    (tmp_path / "in").mkdir()
    make(tmp_path / "in")
    cfg = SourceConfig(kind=kind, path=str(tmp_path / "in"), val_fraction=0.0, test_fraction=0.0)
    with pytest.raises(DataError, match=message):
        ingest(cfg, 0, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def _job_file(tmp_path, data):
    job = {
        "name": "j",
        "run_dir": str(tmp_path / "run"),
        "source": {"kind": "parquet", "path": str(data), "val_fraction": 0.0, "test_fraction": 0.0},
        "model": {"name": "mlp"},
        "train": {"num_workers": 1},
    }
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    return tmp_path / "job.yaml"


@pytest.mark.parametrize(
    "make, message",
    [
        (_half_a_parquet_file, r"raysift: error: .*bad\.parquet: not a readable Parquet file"),
        (
            lambda d: write(d / "d.parquet", [3] * 6, [[1.0, 2.0]] * 6),
            r"raysift: error: parquet .*: the train split holds only class 3 \(6 rows\); a "
            r"classifier needs two or more classes: check source\.label_column",
        ),
    ],
    ids=["corrupt-parquet", "one-class"],
)
def test_raysift_run_exits_2_naming_the_file_and_keeps_an_old_run(
    make, message, ray_session, tmp_path, capsys
):
    from raysift.cli import main

    (tmp_path / "in").mkdir()
    make(tmp_path / "in")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "keep.txt").write_text("an earlier run")
    assert main(["run", str(_job_file(tmp_path, tmp_path / "in")), "--overwrite"]) == 2
    assert re.search(message, capsys.readouterr().err)
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["keep.txt"]
