"""The norms, cluster, select and score batch jobs: Parquet in, Parquet out, and their errors."""

import argparse
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from parquet_rows import parquet_rows

from raysift.batch.operator import add_commands
from raysift.operators.contract import ID, LABEL, DataError, X, from_columns
from raysift.operators.keys import hash_keys


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
    return parquet_rows(path, ID)


def test_norms_job(ray_session, tmp_path, capsys):
    src = _write(tmp_path / "in", [3, 4, 0, 5], labels=[0, 1, 0, 1])
    _cli("norms", src, tmp_path / "out", "--kind", "l1")
    rows = _rows(tmp_path / "out")
    assert [r["norm"] for r in rows] == [3.0, 4.0, 0.0, 5.0]
    assert [r[LABEL] for r in rows] == [0, 1, 0, 1]
    assert rows[0][X].tolist() == [[0.0, 3.0]]
    # Ray may print a line of its own (a retried task of an earlier test) into the capture.
    out = capsys.readouterr().out.splitlines()
    head = out.index("norms: l1 of 'x' -> " + str(tmp_path / "out"))
    assert out[head + 2].split() == [
        "0",
        "2",
        "1.5",
        "1.5",
        "0.0",
        "3.0",
    ]  # label count mean std min max


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
    assert all(len(set(blob_of[b * 10 : (b + 1) * 10])) == 1 for b in range(3))
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


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["select", "--per-class", 0],
            r"select: error: argument --per-class: must be a positive "
            r"integer, got 0",
        ),
        (
            ["select", "--ratio", 1.5],
            r"select: error: argument --ratio: must be in \(0, 1\], got 1\.5",
        ),
        (["select"], r"select: error: one of the arguments --per-class --ratio is required"),
        (["cluster"], r"cluster: error: the following arguments are required: --k"),
        (
            ["cluster", "--k", 2, "--tol", -1],
            r"cluster: error: argument --tol: must be a finite "
            r"number >= 0, got -1",
        ),
        (["norms", "--kind", "l7"], r"norms: error: argument --kind: invalid choice: 'l7'"),
        (
            ["norms", "--channel-weights", "a,b"],
            r"norms: error: argument --channel-weights: "
            r"expected comma-separated numbers, .*got 'a,b'",
        ),
    ],
)
def test_bad_options_are_named_on_stderr(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        _cli(argv[0], tmp_path / "in", tmp_path / "out", *argv[1:])
    assert exit_.value.code == 2 and re.search(message, capsys.readouterr().err)


def linear_scores(input_shape, num_classes):
    """logits = W x on the flat features: with W = [[1, 0], [0, 1], [0, 0]], rows [a, b] score
    [a, b, 0] (the model file below holds that W)."""
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(2, num_classes, bias=False))


def _model_file(path):
    from raysift.config import ModelConfig
    from raysift.training.saved import model_spec

    weights = {"1.weight": torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])}
    spec = model_spec(ModelConfig(name="test_operator_jobs:linear_scores"), 3, [1, 2])
    torch.save({"model": weights, "spec": spec}, path)
    return path


def _user_pool(path, rows, labels=None):
    """A user's own Parquet: a flat `pixels` list column, `key` and optionally `target`."""
    table = {
        "key": [f"r{i}" for i in range(len(rows))],
        "pixels": pa.array(rows, pa.list_(pa.float32())),
    }
    if labels is not None:
        table["target"] = labels
    pq.write_table(pa.table(table), path)
    return path


def test_score_job_adds_the_models_scores_to_a_users_rows(ray_session, tmp_path, capsys):
    model = _model_file(tmp_path / "model.pt")
    src = _user_pool(tmp_path / "pool.parquet", [[2.0, 0.0], [0.0, 1.0], [-1.0, -2.0]], [0, 0, 2])
    _cli(
        "score",
        model,
        src,
        tmp_path / "out",
        "--feature-column",
        "pixels",
        "--label-column",
        "target",
        "--batch-size",
        2,
    )
    rows = parquet_rows(tmp_path / "out", "key")
    assert [r["key"] for r in rows] == ["r0", "r1", "r2"] and "pixels" not in rows[0]
    assert [r["target"] for r in rows] == [0, 0, 2]
    assert [r["pred"] for r in rows] == [0, 1, 2] and [r["correct"] for r in rows] == [
        True,
        False,
        True,
    ]
    logits = np.array([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [-1.0, -2.0, 0.0]])
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    np.testing.assert_allclose(
        [r["loss"] for r in rows], -np.log(p[[0, 1, 2], [0, 0, 2]]), rtol=1e-6
    )
    np.testing.assert_allclose(
        [r["margin"] for r in rows],
        [p[0, 0] - p[0, 1], p[1, 0] - p[1, 1], p[2, 2] - p[2, 0]],
        rtol=1e-6,
    )
    assert (
        capsys.readouterr()
        .out.strip()
        .endswith("3 rows, 1 mispredicted -> " + str(tmp_path / "out"))
    )


def test_score_job_without_labels_scores_against_the_prediction(ray_session, tmp_path):
    model = _model_file(tmp_path / "model.pt")
    src = _user_pool(tmp_path / "pool.parquet", [[2.0, 0.0], [0.0, 1.0]])
    _cli("score", model, src, tmp_path / "out", "--feature-column", "pixels", "--keep-features")
    rows = parquet_rows(tmp_path / "out", "key")
    assert "correct" not in rows[0] and list(rows[0]["pixels"]) == [2.0, 0.0]
    p = np.exp([2.0, 0.0, 0.0]) / np.exp([2.0, 0.0, 0.0]).sum()
    assert rows[0]["pred"] == 0 and rows[0]["loss"] == pytest.approx(-np.log(p[0]))
    assert rows[0]["margin"] == pytest.approx(p[0] - p[1])


def test_score_job_errors_name_the_problem(ray_session, tmp_path, capsys):
    from raysift.cli import main

    model = _model_file(tmp_path / "model.pt")
    src = _user_pool(tmp_path / "pool.parquet", [[2.0, 0.0], [0.0, 1.0]], [0, 7])
    wide = _user_pool(tmp_path / "wide.parquet", [[2.0, 0.0, 1.0]], [0])
    not_a_model = tmp_path / "notes.txt"
    not_a_model.write_text("hello")
    cases = [
        (
            (model, src, tmp_path / "a", "--feature-column", "pixels", "--label-column", "target"),
            "pool.parquet: column 'target': label 7 is outside the model's 3 classes",
        ),
        (
            (model, wide, tmp_path / "b", "--feature-column", "pixels"),
            r"wide.parquet: column 'pixels': rows of shape \(3,\), the model takes \(1, 2\)",
        ),
        ((not_a_model, src, tmp_path / "c"), "notes.txt: not a model file raysift wrote"),
        ((tmp_path, src, tmp_path / "d"), "no model here: give a run directory"),
        ((model, src, tmp_path / "e"), r"missing column\(s\) \['x'\]"),
    ]
    for argv, message in cases:
        assert main(["score", *map(str, argv)]) == 2, message
        err = capsys.readouterr().err
        assert re.search("raysift: error: .*" + message, err), err


def _user_rows(path, rows, labels, row_group_size=None):
    """A user's own Parquet: `pixels` (a flat list) and `target`, no ids."""
    pq.write_table(
        pa.table(
            {
                "pixels": pa.array(rows, pa.list_(pa.float32())),
                "target": pa.array(labels, pa.int64()),
            }
        ),
        path,
        row_group_size=row_group_size,
    )
    return str(path)


def test_jobs_read_a_users_own_parquet_with_the_source_options(ray_session, tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    # Two files, the first in row groups of 2: ids follow the rows across files and groups.
    _user_rows(
        folder / "a.parquet",
        [[0, 0, 0, 1], [0, 0, 1, 0], [9, 9, 9, 9]],
        [0, 0, 1],
        row_group_size=2,
    )
    _user_rows(folder / "b.parquet", [[9, 9, 9, 8]], [1])
    opts = ["--feature-column", "pixels", "--label-column", "target", "--shape", "1,2,2"]
    _cli("cluster", folder, tmp_path / "c", "--k", 2, "--seed", 0, *opts)
    rows = _rows(tmp_path / "c")
    assert [r[ID] for r in rows] == [0, 1, 2, 3] and [r[LABEL] for r in rows] == [0, 0, 1, 1]
    assert rows[2][X].tolist() == [[[9, 9], [9, 9]]]
    assert rows[0]["cluster"] == rows[1]["cluster"] != rows[2]["cluster"] == rows[3]["cluster"]

    _cli("select", folder, tmp_path / "s", "--per-class", 1, "--kind", "l1", *opts)
    # One row a class: class 0's norms tie (the lower id), class 1's above its mean (id 2).
    assert {r[ID] for r in _rows(tmp_path / "s")} == {0, 2}


def test_a_users_bad_rows_are_named_by_file_and_row(ray_session, tmp_path, capsys):
    from raysift.cli import main

    bad_label = _user_rows(tmp_path / "labels.parquet", [[0.0, 1.0]] * 4, [0, 1, 1, -1])
    bad_value = _user_rows(tmp_path / "values.parquet", [[0.0, 1.0], [float("nan"), 0.0]], [0, 1])
    ragged = _user_rows(tmp_path / "ragged.parquet", [[0.0, 1.0], [1.0]], [0, 1])
    good = _user_rows(tmp_path / "good.parquet", [[0.0, 1.0]], [0])
    opts = ["--feature-column", "pixels", "--label-column", "target"]
    cases = [
        (
            ["select", bad_label, tmp_path / "a", "--per-class", 1, *opts],
            r"labels.parquet: source.label_column 'target' must be >= 0; row 3 has label -1",
        ),
        (
            ["norms", bad_value, tmp_path / "b", *opts],
            r"values.parquet: source.feature_column 'pixels' holds NaN or inf at row 1",
        ),
        (
            ["norms", ragged, tmp_path / "c", *opts],
            r"ragged.parquet: source.feature_column 'pixels' has ragged feature shapes: row 1",
        ),
        (
            ["norms", good, tmp_path / "d", *opts, "--shape", "1,3"],
            r"--shape: \[1, 3\] holds 3 values, but .*good.parquet row 0 has shape \(2,\)",
        ),
        (
            ["select", bad_label, tmp_path / "e", "--per-class", 1, "--feature-column", "pixels"],
            r"labels.parquet: --label-column: missing column\(s\) \['label'\]",
        ),
    ]
    for argv, message in cases:
        assert main([str(a) for a in argv]) == 2, message
        err = capsys.readouterr().err
        assert re.search("raysift: error: .*" + message, err), err
    assert not any(
        p.name.startswith(("a", "b", "c", "d", "e", ".")) for p in tmp_path.iterdir() if p.is_dir()
    )  # nothing half written
