"""raysift augment, mixup, smote and dedup: exact rows for a seed, provenance, bad input named."""

import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from parquet_rows import parquet_rows

from raysift.cli import main
from raysift.operators.augment import block_generator
from raysift.operators.contract import ID, LABEL, X
from raysift.operators.mixup import beta, cycle_partners

STRIDE = 2**32


def _user_file(path, x, labels):
    """A user's Parquet: flat `pixels` lists and `target`, no ids (rows get 0, 1, ...)."""
    flat = np.asarray(x, np.float32).reshape(len(x), -1).tolist()
    pq.write_table(
        pa.table(
            {
                "pixels": pa.array(flat, pa.list_(pa.float32())),
                "target": pa.array(labels, pa.int64()),
            }
        ),
        path,
    )
    return str(path)


OPTS = ["--feature-column", "pixels", "--label-column", "target", "--shape", "1,2,2"]


def _run(*argv):
    assert main([str(a) for a in argv]) == 0


def _rows(path):
    return parquet_rows(path, ID)


def _six(tmp_path):
    x = np.arange(24, dtype=np.float32).reshape(6, 1, 2, 2) ** 1.5
    return _user_file(tmp_path / "six.parquet", x, [0, 1, 2, 3, 4, 5]), x


def test_mixup_rows_are_lam_xi_plus_one_minus_lam_xj(ray_session, tmp_path, capsys):
    src, x = _six(tmp_path)  # six classes, one row each: y_soft tells lam and the partner apart
    _run("mixup", src, tmp_path / "out", "--alpha", 0.5, "--copies", 2, "--seed", 3, *OPTS)
    assert capsys.readouterr().out.strip().endswith(f"6 real, 12 mixup -> {tmp_path / 'out'}")
    rows = _rows(tmp_path / "out")
    real, new = rows[:6], rows[6:]
    assert [r["source"] for r in real] == ["real"] * 6 and all(
        len(r["parent_ids"]) == 0 for r in real
    )
    np.testing.assert_array_equal(np.stack([r["y_soft"] for r in real]), np.eye(6))
    assert [r[ID] for r in new] == [STRIDE * (1 + c) + i for c in range(2) for i in range(6)]
    for c in range(2):  # the operator's draws for this block, seed and copy
        g = block_generator(3, 0, c, "mixup")
        partner = cycle_partners(6, g).numpy()
        lam = beta(0.5, 6, g).numpy()
        for i in range(6):
            r = new[c * 6 + i]
            j = partner[i]
            assert r["source"] == "mixup" and list(r["parent_ids"]) == [i, j] and j != i
            soft = np.zeros(6, np.float32)
            soft[i], soft[j] = lam[i], 1 - lam[i]
            np.testing.assert_allclose(r["y_soft"], soft, rtol=1e-6)
            np.testing.assert_allclose(r[X], lam[i] * x[i] + (1 - lam[i]) * x[j], rtol=1e-6)
            assert r[LABEL] == (i if lam[i] >= 0.5 else j)

    _run("mixup", src, tmp_path / "again", "--alpha", 0.5, "--copies", 2, "--seed", 3, *OPTS)
    again = _rows(tmp_path / "again")
    assert all(
        np.array_equal(a[X], b[X]) and list(a["parent_ids"]) == list(b["parent_ids"])
        for a, b in zip(rows, again)
    )
    _run("mixup", src, tmp_path / "other", "--alpha", 0.5, "--seed", 4, "--new-only", *OPTS)
    other = _rows(tmp_path / "other")
    assert len(other) == 6 and not np.allclose([r[X] for r in other], [r[X] for r in new[:6]])


def test_cutmix_and_pairing_rows(ray_session, tmp_path):
    src, x = _six(tmp_path)
    _run("mixup", src, tmp_path / "pair", "--kind", "pairing", "--new-only", *OPTS)
    for r in _rows(tmp_path / "pair"):
        i, j = r["parent_ids"]
        np.testing.assert_allclose(r[X], (x[i] + x[j]) / 2, rtol=1e-6)
        assert r[LABEL] == i and r["y_soft"][i] == 1  # pairing keeps the first label
    _run("mixup", src, tmp_path / "cut", "--kind", "cutmix", "--new-only", *OPTS)
    for r in _rows(tmp_path / "cut"):
        i, j = r["parent_ids"]
        from_j = np.isclose(r[X], x[j]) & ~np.isclose(x[i], x[j])
        assert np.isclose(r[X], x[i]).sum() + from_j.sum() == 4  # every pixel from i or j
        assert r["y_soft"][j] == pytest.approx(from_j.sum() / 4)  # its share of pixels


def test_augment_rows_and_their_parents(ray_session, tmp_path, capsys):
    src, x = _six(tmp_path)
    _run("augment", src, tmp_path / "out", "--transforms", "flip", "--copies", 2, *OPTS)
    assert (
        capsys.readouterr().out.strip().endswith("6 real, 12 augment -> " + str(tmp_path / "out"))
    )
    rows = _rows(tmp_path / "out")
    assert "y_soft" not in rows[0]  # labels do not mix
    for r in rows[6:]:
        (parent,) = r["parent_ids"]
        assert r[ID] in (STRIDE + parent, 2 * STRIDE + parent) and r[LABEL] == parent
        np.testing.assert_array_equal(r[X], x[parent][..., ::-1])
    _run(
        "augment",
        src,
        tmp_path / "noisy",
        "--transforms",
        "noise:0.1",
        "--seed",
        1,
        "--new-only",
        *OPTS,
    )
    _run(
        "augment",
        src,
        tmp_path / "noisy2",
        "--transforms",
        "noise:0.1",
        "--seed",
        1,
        "--new-only",
        *OPTS,
    )
    a, b = _rows(tmp_path / "noisy"), _rows(tmp_path / "noisy2")
    assert all(np.array_equal(p[X], q[X]) for p, q in zip(a, b))
    assert not np.allclose(a[0][X], x[0])


def test_smote_rows_lie_between_an_anchor_and_its_nearest_neighbour(ray_session, tmp_path):
    # Class 0: 0, 1, 3, 10 on a line; class 1: 0 and 5 (two rows short of 4).
    x = np.zeros((6, 1, 2, 2), np.float32)
    x[:, 0, 0, 0] = [0, 1, 3, 10, 0, 5]
    src = _user_file(tmp_path / "tail.parquet", x, [0, 0, 0, 0, 1, 1])
    _run("smote", src, tmp_path / "out", "--balance", "--k", 1, "--new-only", *OPTS)
    rows = _rows(tmp_path / "out")
    assert (
        len(rows) == 2
        and {r[LABEL] for r in rows} == {1}
        and {r["source"] for r in rows} == {"smote"}
    )
    assert sorted(tuple(r["parent_ids"]) for r in rows) == [(4, 5), (5, 4)]  # each anchors once
    for r in rows:
        a, nb = r["parent_ids"]
        u = (r[X][0, 0, 0] - x[a, 0, 0, 0]) / (x[nb, 0, 0, 0] - x[a, 0, 0, 0])
        assert 0 <= u < 1 and r[X][0, 0, 1] == 0
    _run("smote", src, tmp_path / "four", "--target", 5, "--k", 1, "--new-only", *OPTS)
    nearest = {0: 1, 1: 0, 2: 1, 3: 2, 4: 5, 5: 4}  # k = 1: the one nearest row of the class
    assert all(r["parent_ids"][1] == nearest[r["parent_ids"][0]] for r in _rows(tmp_path / "four"))


def test_dedup_drops_copies_and_keeps_originals(ray_session, tmp_path, capsys):
    src, x = _six(tmp_path)
    _run("augment", src, tmp_path / "aug", "--transforms", "noise:0", "--copies", 2, *OPTS)
    _run("dedup", tmp_path / "aug", tmp_path / "out", "--threshold", 1e-3, "--k", 3)
    rows = _rows(tmp_path / "out")
    assert [r[ID] for r in rows] == list(range(6)) and {r["source"] for r in rows} == {"real"}
    assert "cluster" not in rows[0]
    assert "6 rows kept" in capsys.readouterr().out


def test_bad_input_is_named(ray_session, tmp_path, capsys):
    src, x = _six(tmp_path)
    short = _user_file(tmp_path / "short.parquet", x[:3], [0, 0, 1])
    cases = [
        (
            ["mixup", src, tmp_path / "a", "--num-classes", 4, *OPTS],
            r"six.parquet: --label-column 'target' holds label 5, outside --num-classes 4",
        ),
        (
            ["smote", short, tmp_path / "b", "--balance", *OPTS],
            r"smote_dataset: class 1 has only id 2; SMOTE needs 2 samples",
        ),
        (
            ["augment", src, tmp_path / "c", "--transforms", "flip,spin:3", *OPTS],
            r"--transforms 'flip,spin:3': augment.transforms\[1\].name: got 'spin'",
        ),
        (
            ["augment", src, tmp_path / "d", "--transforms", "rotate:abc", *OPTS],
            r"--transforms 'rotate:abc': augment.transforms\[0\].degrees",
        ),
        (
            ["mixup", src, tmp_path / "f"],
            r"six.parquet: --label-column: missing column\(s\) "
            r"\['label'\]",
        ),
        (
            ["dedup", tmp_path / "nowhere", tmp_path / "g", "--threshold", 1],
            r"nowhere: no Parquet data to read",
        ),
    ]
    for argv, message in cases:
        assert main([str(a) for a in argv]) == 2, message
        err = capsys.readouterr().err
        assert re.search("raysift: error: .*(" + message + ")", err), err
    _run("augment", src, tmp_path / "h", "--transforms", "flip", *OPTS)
    assert main(["augment", src, str(tmp_path / "h"), "--transforms", "flip", *OPTS]) == 2
    assert "output already exists" in capsys.readouterr().err
    for argv in (
        ["mixup", src, "o", "--kind", "blend"],
        ["smote", src, "o"],
        ["mixup", src, "o", "--alpha", 0],
        ["augment", src, "o"],
    ):
        with pytest.raises(SystemExit):
            main([str(a) for a in argv])
        assert re.search(
            r"invalid choice: 'blend'|one of the arguments --target --balance|"
            r"must be a positive number|required: --transforms",
            capsys.readouterr().err,
        )
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".") or p.name in "abdfg"]
    assert leftovers == []  # nothing half written


def test_chained_jobs_keep_the_provenance_of_earlier_rows(ray_session, tmp_path, capsys):
    src, x = _six(tmp_path)
    _run("augment", src, tmp_path / "aug", "--transforms", "flip", *OPTS)
    _run("mixup", tmp_path / "aug", tmp_path / "mixed", "--num-classes", 6)
    assert (
        capsys.readouterr()
        .out.strip()
        .endswith(f"6 real, 6 augment, 12 mixup -> {tmp_path / 'mixed'}")
    )
    rows = {r[ID]: r for r in _rows(tmp_path / "mixed")}
    assert list(rows[STRIDE + 2]["parent_ids"]) == [2] and rows[STRIDE + 2]["source"] == "augment"
    mixed = [r for r in rows.values() if r["source"] == "mixup"]
    assert min(r[ID] for r in mixed) == 2 * STRIDE  # the stride now 2**33: clear of STRIDE + 5
    assert len({r[ID] for r in rows.values()}) == 24


def test_augmenting_mixed_rows_keeps_their_soft_targets(ray_session, tmp_path):
    src, _ = _six(tmp_path)
    _run("mixup", src, tmp_path / "mixed", "--seed", 1, *OPTS)
    _run("augment", tmp_path / "mixed", tmp_path / "aug", "--transforms", "flip")
    mixed = {r[ID]: r for r in _rows(tmp_path / "mixed")}
    out = _rows(tmp_path / "aug")
    assert len(out) == 2 * len(mixed) == 24
    for r in out:
        parent = mixed[r[ID]] if r[ID] in mixed else mixed[r["parent_ids"][-1]]
        np.testing.assert_array_equal(r["y_soft"], parent["y_soft"])  # mixed rows stay mixed
    copies = [r for r in out if r["source"] == "augment"]
    assert len(copies) == 12 and sum(max(r["y_soft"]) < 1 for r in copies) == 6
