"""Worker shares: who owns a row, one streaming read, and a store that spills past its budget."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from ray.data.extensions import ArrowTensorArray

from raysift.data.share import RowStore, Share, owner, read_share
from raysift.operators.contract import DataError


def _write(folder, ids, x):
    folder.mkdir()
    for part, chunk in enumerate(np.array_split(np.arange(len(ids)), 3)):
        pq.write_table(
            pa.table(
                {
                    "id": pa.array(ids[chunk], pa.int64()),
                    "label": pa.array(ids[chunk] % 5, pa.int64()),
                    "x": ArrowTensorArray.from_numpy(x[chunk]),
                }
            ),
            folder / f"part-{part:05d}.parquet",
        )


def test_owners_are_even_and_fixed_by_the_seed():
    ids = np.arange(100_000)
    counts = np.bincount(owner(ids, 0, 4), minlength=4)
    assert counts.sum() == len(ids) and abs(counts - 25_000).max() < 500
    assert np.array_equal(owner(ids, 0, 4), owner(ids[::-1], 0, 4)[::-1])  # per id, not order
    assert not np.array_equal(owner(ids, 0, 4), owner(ids, 1, 4))


def test_a_store_past_its_budget_gives_back_the_same_rows_from_a_file_without_a_name(tmp_path):
    x = np.random.default_rng(0).normal(size=(50, 2, 3)).astype(np.float32)
    rows = np.array([49, 0, 7, 30, 7, 12, 48, 31, 32, 33])  # repeats, runs of adjacent rows
    full = RowStore((2, 3), budget_bytes=10**9)
    small = RowStore((2, 3), budget_bytes=10 * 24, spill_dir=str(tmp_path))  # 10 rows in memory
    for store in (full, small):
        for i in range(0, 50, 8):
            store.append(x[i : i + 8])
        store.finish()
    assert (full.n_memory, full.n_spilled) == (50, 0)
    assert (small.n_memory, small.n_spilled) == (10, 40)
    assert np.array_equal(small.take(rows), x[rows]) and np.array_equal(full.take(rows), x[rows])
    assert list(tmp_path.iterdir()) == []  # nothing a killed worker could leave behind
    small.close()


def test_each_rank_reads_its_own_rows_once_in_file_order(tmp_path):
    ids = np.random.default_rng(1).permutation(200) + 1000
    x = np.arange(200 * 4, dtype=np.float32).reshape(200, 1, 4)
    _write(tmp_path / "train", ids, x)
    shares = [read_share(tmp_path / "train", 7, r, 2, (1, 4), budget_bytes=16 * 30) for r in (0, 1)]
    for r, share in enumerate(shares):
        mine = owner(ids, 7, 2) == r
        assert share.ids.tolist() == ids[mine].tolist()
        assert share.labels.tolist() == (ids[mine] % 5).tolist()
        assert np.array_equal(share.x.take(np.arange(len(share))), x[mine])
        assert share.x.n_memory == 30
    assert sorted(shares[0].ids.tolist() + shares[1].ids.tolist()) == sorted(ids.tolist())


def test_a_folder_without_shards_names_itself(tmp_path):
    with pytest.raises(DataError, match="no Parquet shards"):
        read_share(tmp_path, 0, 0, 1, (1,), 1)
    share = Share.from_arrays([3, 4], [0, 1], np.zeros((2, 5)))
    assert len(share) == 2 and share.x.take(np.array([1])).shape == (1, 5)


def test_8_bit_rows_are_kept_8_bit_and_scaled_batch_by_batch(tmp_path):
    from raysift.job.engine import device_batch

    pixels = np.array([[[0, 51]], [[255, 3]], [[17, 18]]], np.uint8)
    _write(tmp_path / "train", np.array([10, 11, 12]), pixels)
    share = read_share(tmp_path / "train", 0, 0, 1, (1, 2), budget_bytes=2, dtype=np.uint8)
    assert share.x.n_memory == 1 and share.x.take(np.arange(3)).dtype == np.uint8
    x, y = device_batch(share, np.array([2, 0, 1]), "cpu")
    assert x.dtype == torch.float32 and y.tolist() == [2, 0, 1]
    assert x.numpy().tolist() == (pixels[[2, 0, 1]] / np.float32(255)).tolist()
    assert share.features(np.array([1])).tolist() == [[[1.0, 3 / np.float32(255)]]]
    with pytest.raises(DataError, match="holds uint8, the ingest recorded float32"):
        read_share(tmp_path / "train", 0, 0, 1, (1, 2), budget_bytes=2)
