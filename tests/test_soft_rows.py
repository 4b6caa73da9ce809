"""Training on what the offline augmentation jobs write: generated rows in train only, their
y_soft as targets beside the real rows' hard labels, a step's loss known."""

import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F

from raysift.config import SourceConfig, from_dict
from raysift.data.ingest import PROVENANCE_DIR, carve, ingest
from raysift.data.share import Share, read_share
from raysift.operators.augment import rows_table
from raysift.operators.contract import ID
from raysift.training.loss import batch_loss

K = 3


def _linear():
    """logits = W x with W = [[1, 0], [0, 1], [0, 0]]: a row [a, b] scores [a, b, 0]."""
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(2, K, bias=False))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]))
    return model


def test_a_step_on_real_and_soft_rows_has_the_loss_written_out():
    x = torch.tensor([[[2.0, 0.0]], [[0.0, 1.0]], [[1.0, 1.0]]])
    y = torch.tensor([0, 1, 2])
    share = Share.from_arrays([0, 1, 5], y.numpy(), x.numpy())
    share.soft_rows, share.soft = np.array([2]), np.array([[0.25, 0.0, 0.75]], np.float32)
    targets = torch.from_numpy(share.targets(np.arange(3), K))
    np.testing.assert_array_equal(targets, [[1, 0, 0], [0, 1, 0], [0.25, 0, 0.75]])
    assert share.targets(np.array([0, 1]), K) is None  # no soft row: plain cross-entropy

    job = from_dict({})
    loss = batch_loss(_linear(), x, y, K, job, torch.Generator().manual_seed(0), targets)
    e = math.exp
    p0 = e(2) / (e(2) + 2)  # row [2, 0] scores [2, 0, 0]
    p1 = e(1) / (e(1) + 2)  # row [0, 1] scores [0, 1, 0]
    z2 = 2 * e(1) + 1  # row [1, 1] scores [1, 1, 0]
    soft = -(0.25 * math.log(e(1) / z2) + 0.75 * math.log(1 / z2))
    assert loss.item() == pytest.approx((-math.log(p0) - math.log(p1) + soft) / 3, rel=1e-6)
    loss.backward()  # a training step's gradient flows through the soft rows too

    one_hot = F.one_hot(y, K).float()  # real rows alone: the soft loss is the plain one
    plain = batch_loss(_linear(), x, y, K, job, torch.Generator().manual_seed(0))
    assert batch_loss(
        _linear(), x, y, K, job, torch.Generator().manual_seed(0), one_hot
    ).item() == pytest.approx(plain.item(), rel=1e-6)


def _mixed_source(path, n_real=60):
    """Real rows 0..n_real-1 and a generated row per real row, its parents (i, i+1)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n_real, 1, 2)).astype(np.float32)
    labels = np.arange(n_real) % K
    real = rows_table(
        np.arange(n_real),
        labels,
        x,
        "real",
        np.zeros((n_real, 0), np.int64),
        np.eye(K, dtype=np.float32)[labels],
    )
    parents = np.stack([np.arange(n_real), (np.arange(n_real) + 1) % n_real], 1)
    soft = (
        0.5 * np.eye(K, dtype=np.float32)[labels]
        + 0.5 * np.eye(K, dtype=np.float32)[labels[parents[:, 1]]]
    )
    made = rows_table(
        1000 + np.arange(n_real), labels, (x + x[parents[:, 1]]) / 2, "mixup", parents, soft
    )
    pq.write_table(pa.concat_tables([real, made]), path)
    return parents, soft


def test_ingest_keeps_generated_rows_in_train_only_and_never_from_val_or_test(tmp_path):
    parents, soft = _mixed_source(tmp_path / "mixed.parquet")
    cfg = SourceConfig(
        kind="parquet", path=str(tmp_path / "mixed.parquet"), val_fraction=0.2, test_fraction=0.2
    )
    info = ingest(cfg, 7, tmp_path / "data")
    codes = carve(np.arange(60), None, 7, frozenset(), 0.2, 0.2)
    clean = (codes[parents] == 0).all(1)  # both parents carved into train
    assert info.synthetic == {"train": int(clean.sum()), "dropped": int((~clean).sum())}
    assert 0 < clean.sum() < 60
    split_ids = {
        s: set(pq.read_table(tmp_path / "data" / s)[ID].to_pylist())
        for s in ("train", "val", "test")
    }
    assert split_ids["val"] | split_ids["test"] <= set(range(60))  # real rows only
    assert split_ids["train"] == set(np.flatnonzero(codes == 0)) | set(1000 + np.flatnonzero(clean))
    assert info.counts["train"] == (codes == 0).sum() + clean.sum()

    share = read_share(
        tmp_path / "data" / "train",
        7,
        0,
        1,
        (1, 2),
        2**20,
        provenance_dir=tmp_path / "data" / PROVENANCE_DIR,
    )
    made = share.ids >= 1000
    np.testing.assert_array_equal(share.synthetic, made)
    assert share.count_synthetic(np.arange(len(share))) == clean.sum()
    np.testing.assert_array_equal(share.ids[share.soft_rows], share.ids[made])
    np.testing.assert_allclose(share.soft, soft[share.ids[made] - 1000])
    t = share.targets(np.arange(len(share)), K)
    np.testing.assert_array_equal(t[~made], np.eye(K)[share.labels[~made]])


def test_a_run_on_mixup_output_counts_real_and_synthetic_rows(ray_session, tmp_path):
    from sklearn.datasets import load_digits

    from raysift.cli import main
    from raysift.job.rounds import run_job

    d = load_digits()
    n = 600
    pq.write_table(
        pa.table(
            {
                "pixels": pa.array((d.data[:n] / 16).tolist(), pa.list_(pa.float32())),
                "target": pa.array(d.target[:n], pa.int64()),
            }
        ),
        tmp_path / "digits.parquet",
    )
    assert (
        main(
            [
                "mixup",
                str(tmp_path / "digits.parquet"),
                str(tmp_path / "mixed"),
                "--feature-column",
                "pixels",
                "--label-column",
                "target",
                "--shape",
                "1,8,8",
                "--num-classes",
                "10",
                "--batch-size",
                "200",
            ]
        )
        == 0
    )
    job = from_dict(
        {
            "name": "soft",
            "seed": 1,
            "run_dir": str(tmp_path / "run"),
            "source": {
                "kind": "parquet",
                "path": str(tmp_path / "mixed"),
                "val_fraction": 0.2,
                "test_fraction": 0.2,
            },
            "model": {"name": "mlp", "kwargs": {"hidden": [16]}},
            "train": {"num_workers": 1, "batch_size": 64, "checkpoint_every_s": 0},
            "strategy": {"name": "full", "epochs": 1},
        }
    )
    summary = run_job(job, echo=lambda *_: None)
    rows = summary["train_rows"]
    assert rows["real"] + rows["synthetic"] == summary["subset_size"]
    assert summary["subset_synthetic"] == rows["synthetic"] > 0
    assert rows["synthetic"] + rows["synthetic_left_out"] == n
    manifest = pq.read_table(tmp_path / "run" / "manifest.parquet").to_pandas()
    assert (manifest["source"] == "mixup").sum() == rows["synthetic"]
    assert set(manifest.loc[manifest["source"] == "real", "id"]) <= set(range(n))
    test_ids = set(pq.read_table(tmp_path / "run" / "data" / "test")["id"].to_pylist())
    assert test_ids <= set(range(n)) and summary["test_samples"] == len(test_ids)


@pytest.mark.parametrize("chunk_rows", [4096, 50])  # the chain within one chunk, and across
def test_rows_made_from_generated_rows_follow_their_parents_split(tmp_path, chunk_rows):
    n = 60
    x = np.random.default_rng(1).normal(size=(n, 1, 2)).astype(np.float32)
    labels = np.arange(n) % K
    none = np.zeros((n, 0), np.int64)
    real = rows_table(np.arange(n), labels, x, "real", none)
    aug = rows_table(1000 + np.arange(n), labels, x, "augment", np.arange(n)[:, None])
    mix_parents = np.stack([1000 + np.arange(n), (np.arange(n) + 1) % n], 1)
    mix = rows_table(2000 + np.arange(n), labels, x, "mixup", mix_parents)
    pq.write_table(pa.concat_tables([real, aug, mix]), tmp_path / "chain.parquet")
    cfg = SourceConfig(
        kind="parquet", path=str(tmp_path / "chain.parquet"), val_fraction=0.2, test_fraction=0.2
    )
    info = ingest(cfg, 5, tmp_path / "data", chunk_rows=chunk_rows)
    train = carve(np.arange(n), None, 5, frozenset(), 0.2, 0.2) == 0
    aug_kept = train
    mix_kept = train & train[(np.arange(n) + 1) % n]  # the augmented parent's own parent too
    got = set(pq.read_table(tmp_path / "data" / "train")[ID].to_pylist())
    assert got == set(np.flatnonzero(train)) | set(1000 + np.flatnonzero(aug_kept)) | set(
        2000 + np.flatnonzero(mix_kept)
    )
    assert info.synthetic == {
        "train": int(aug_kept.sum() + mix_kept.sum()),
        "dropped": int(2 * n - aug_kept.sum() - mix_kept.sum()),
    }
