"""The norms, cluster and select batch jobs: Parquet in, Parquet out, and their errors."""
import argparse

import numpy as np
import pytest
import ray

from operators.contract import ID, LABEL, X, DataError, from_columns
from operators.keys import hash_keys
from pipelines.operator_jobs import add_commands



def _cli(*argv):
    parser = argparse.ArgumentParser(prog="raysift")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args([str(a) for a in argv])
    args.func(args)


def _write(path, norms, labels=None, ids=None):
    """Rows whose x is [[0, v]]: one channel, so every norm kind gives v."""
    x = np.zeros((len(norms), 1, 2), np.float32)
    x[:, 0, 1] = norms
    cols = {ID: np.arange(len(norms), dtype=np.int64) if ids is None else np.asarray(ids), X: x}
    if labels is not None:
        cols[LABEL] = np.asarray(labels, dtype=np.int64)
    from_columns(cols, rows_per_block=3).write_parquet(str(path))
    return str(path)


def _rows(path):
    return sorted(ray.data.read_parquet(str(path)).take_all(), key=lambda r: r[ID])


def test_norms_job(ray_session, tmp_path, capsys):
    src = _write(tmp_path / "in", [3, 4, 0, 5], labels=[0, 1, 0, 1])
    _cli("norms", src, tmp_path / "out", "--kind", "l1")
    rows = _rows(tmp_path / "out")
    assert [r["norm"] for r in rows] == [3.0, 4.0, 0.0, 5.0]
    assert [r[LABEL] for r in rows] == [0, 1, 0, 1]
    assert rows[0][X].tolist() == [[0.0, 3.0]]
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "norms: l1 of 'x' -> " + str(tmp_path / "out")
    assert out[2].split() == ["0", "2", "1.5", "1.5", "0.0", "3.0"]  # label count mean std min max


def test_cluster_job_with_near_duplicates_dropped(ray_session, tmp_path):
    rng = np.random.default_rng(0)
    centres = np.array([[0, 0], [20, 0], [0, 20]], np.float32)
    x = np.repeat(centres, 10, axis=0) + rng.uniform(-1, 1, (30, 2)).astype(np.float32)
    x = np.concatenate([x, x[:1]])  # id 30 is an exact copy of id 0
    from_columns({ID: np.arange(31), X: x}, rows_per_block=8).write_parquet(str(tmp_path / "in"))

    _cli("cluster", tmp_path / "in", tmp_path / "out", "--k", 3, "--seed", 1, "--dedup", 0.001)
    rows = _rows(tmp_path / "out")
    assert [r[ID] for r in rows] == list(range(30))  # the copy went, its original stayed
    blob_of = [r["cluster"] for r in rows]
    assert all(len(set(blob_of[b * 10:(b + 1) * 10])) == 1 for b in range(3))
    assert len(set(blob_of)) == 3
    centre = np.concatenate([x[:10], x[:1]]).mean(0)  # the copy counted while fitting
    assert rows[0]["dist"] == pytest.approx(np.linalg.norm(x[0] - centre), rel=1e-5)


def test_select_job_balanced_and_random(ray_session, tmp_path, capsys):
    # Class 0: norms 1..4, mean 2.5 -> 3 (id 2) above, 2 (id 1) below. Class 1: 10, 20 -> both.
    # Class 2: one sample, fewer than 2.
    src = _write(tmp_path / "in", [1, 2, 3, 4, 10, 20, 7], labels=[0, 0, 0, 0, 1, 1, 2])
    _cli("select", src, tmp_path / "m1", "--per-class", 2)
    rows = _rows(tmp_path / "m1")
    assert [r[ID] for r in rows] == [1, 2, 4, 5, 6]
    assert {r["reason"] for r in rows} == {"balanced"}
    note = "note: fewer than per_class=2, all taken: class (samples) 2 (1)"
    assert note in capsys.readouterr().out

    _cli("select", src, tmp_path / "random", "--ratio", 0.5, "--seed", 1)
    ids = np.arange(7)
    expected = sorted(ids[np.argsort(hash_keys(ids, 1))[:4]].tolist())  # round(3.5) = 4 rows
    rows = _rows(tmp_path / "random")
    assert [r[ID] for r in rows] == expected and {r["reason"] for r in rows} == {"random"}


def test_job_errors_name_the_problem(ray_session, tmp_path):
    with pytest.raises(DataError, match="nowhere.*no Parquet data"):
        _cli("norms", tmp_path / "nowhere", tmp_path / "out")
    src = _write(tmp_path / "in", [1, 2, 3])  # no labels
    with pytest.raises(DataError, match="missing column.*'label'"):
        _cli("select", src, tmp_path / "out", "--per-class", 1)
    with pytest.raises(DataError, match="n_clusters=4 is larger than the number of samples"):
        _cli("cluster", src, tmp_path / "out", "--k", 4)
    with pytest.raises(DataError, match="missing column.*'embedding'"):
        _cli("cluster", src, tmp_path / "out", "--k", 2, "--column", "embedding")
    _cli("norms", src, tmp_path / "out")
    with pytest.raises(DataError, match="output already exists"):
        _cli("norms", src, tmp_path / "out")
    for argv in (["select", src, "o", "--per-class", 0],
                 ["select", src, "o", "--ratio", 1.5],
                 ["select", src, "o"],
                 ["cluster", src, "o"],
                 ["cluster", src, "o", "--k", 2, "--tol", -1],
                 ["norms", src, "o", "--kind", "l7"],
                 ["norms", src, "o", "--channel-weights", "a,b"]):
        with pytest.raises(SystemExit):
            _cli(*argv)
