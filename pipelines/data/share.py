"""The rows one training worker owns for a whole job, read once and kept under a memory budget.

A row belongs to rank `hash(seed, id) % world`: the shares are even, fixed by the seed alone
(not by file layout or read order), and no rows ever move between workers. Each worker streams
the split's Parquet files once with pyarrow (no Ray Data tasks, which the training workers would
starve of CPUs) and keeps its rows' features in a `RowStore`: in memory up to `budget_bytes`,
the rest in a file on local disk. Every epoch and every pool scan reads from the
store, so nothing is read twice and no process ever holds more than its budget of features.
Ids and labels (16 bytes a row) stay in memory.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from raysift.operators.contract import ID, LABEL, DataError, X, as_float
from raysift.operators.keys import hash_keys
from raysift.seeding import derive_seed

_READ_ROWS = 4096  # rows per Parquet batch while a share streams in


def _batches(path: Path, columns: list[str]):
    """A shard's batches, decoded on this thread. Arrow's allocator keeps what it freed, and
    with Arrow's decoding threads it kept memory in proportion to the split streamed: a
    larger training set made a larger worker. Decoded here, and the pool's unused memory
    handed back after each shard, a worker holds its share and one shard's batches."""
    yield from pq.ParquetFile(path).iter_batches(
        batch_size=_READ_ROWS, columns=columns, use_threads=False
    )
    pa.default_memory_pool().release_unused()


def owner(ids: np.ndarray, seed: int, world: int) -> np.ndarray:
    """The rank that owns each id."""
    return (hash_keys(ids, derive_seed(seed, "share")) % np.uint64(world)).astype(np.int64)


class RowStore:
    """Fixed-shape rows of one dtype, appended once: the first `budget_bytes` in memory, the rest
    appended to one file under `spill_dir` and read back with positioned reads, one a run of
    adjacent rows. The file has no name on disk, so the OS frees it when the store closes or
    its process ends, a killed worker's too (a named one outlived every killed worker).

    The file's pages stay in the OS page cache, not in the worker: a store holds its budget
    and the batch it hands out, whatever the size of its share. (A memory map counts the
    pages it touched as the worker's own, and the kernel maps pages in large runs: one batch
    of random rows made a whole 56 MB spill file resident.)
    """

    def __init__(
        self,
        row_shape: tuple,
        budget_bytes: int,
        spill_dir: str | None = None,
        dtype=np.float32,
        capacity: int | None = None,
    ):
        self.row_shape = tuple(row_shape)
        self.dtype = np.dtype(dtype)
        self.row_bytes = max(1, int(np.prod(self.row_shape)) * self.dtype.itemsize)
        room = max(0, int(budget_bytes) // self.row_bytes)
        # Pages of an empty array are only backed once written: `capacity` (the most rows the
        # store can get) merely keeps the reservation small.
        self._mem = np.empty(
            (room if capacity is None else min(room, capacity), *self.row_shape), self.dtype
        )
        self._spill_dir = spill_dir
        self._file = None
        self.n_memory = 0
        self.n_spilled = 0

    def __len__(self) -> int:
        return self.n_memory + self.n_spilled

    def append(self, x: np.ndarray) -> None:
        x = np.asarray(x, dtype=self.dtype)
        k = min(len(x), len(self._mem) - self.n_memory)
        self._mem[self.n_memory : self.n_memory + k] = x[:k]
        self.n_memory += k
        if len(x) > k:
            if self._file is None:
                self._file = tempfile.TemporaryFile(prefix="raysift-share-", dir=self._spill_dir)
            self._file.write(np.ascontiguousarray(x[k:]).tobytes())
            self.n_spilled += len(x) - k

    def finish(self) -> "RowStore":
        """Trim the memory part to what it holds and flush the spilled rows to their file."""
        self._mem = self._mem[: self.n_memory]
        if self._file is not None:
            self._file.flush()
        return self

    def take(self, rows: np.ndarray) -> np.ndarray:
        """The rows at `rows` (positions in append order), as a new array in that order."""
        rows = np.asarray(rows, dtype=np.int64)
        if self._file is None:
            return self._mem[rows]
        out = np.empty((len(rows), *self.row_shape), self.dtype)
        low = rows < self.n_memory
        out[low] = self._mem[rows[low]]
        high = np.flatnonzero(~low)
        if len(high):
            order = high[np.argsort(rows[high], kind="stable")]
            out[order] = self._read(rows[order] - self.n_memory)
        return out

    def _read(self, spilled: np.ndarray) -> np.ndarray:
        """Rows of the file at ascending positions `spilled`: one read a run of adjacent rows."""
        out = np.empty((len(spilled), *self.row_shape), self.dtype)
        view, size = memoryview(out).cast("B"), self.row_bytes
        starts = np.flatnonzero(np.diff(spilled, prepend=-2) != 1)
        for start, end in zip(starts, [*starts[1:], len(spilled)]):
            want = (end - start) * size
            got = os.preadv(
                self._file.fileno(), [view[start * size : end * size]], int(spilled[start]) * size
            )
            if got != want:
                where = self._spill_dir or tempfile.gettempdir()
                raise OSError(f"spilled rows under {where}: read {got} of {want} bytes")
        return out

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


@dataclass
class Share:
    """One rank's rows of a split, in file order: ids, labels and the features' store; for a
    training split with generated rows, which rows those are and the soft targets of those that
    have one (K floats a generated row, nothing for a real one)."""

    ids: np.ndarray
    labels: np.ndarray
    x: RowStore
    synthetic: np.ndarray | None = None  # bool a row: made by an offline augmentation job
    soft_rows: np.ndarray | None = None  # ascending positions of the rows with `y_soft`
    soft: np.ndarray | None = None  # (len(soft_rows), K) float32

    def targets(self, positions: np.ndarray, num_classes: int) -> np.ndarray | None:
        """(n, K) float32 targets of the rows at `positions`: one-hot labels, a generated row's
        `y_soft` in its place; None when none of the rows has soft targets (the caller keeps
        plain cross-entropy on the labels)."""
        if self.soft_rows is None or not len(self.soft_rows):
            return None
        positions = np.asarray(positions, np.int64)
        at = np.minimum(np.searchsorted(self.soft_rows, positions), len(self.soft_rows) - 1)
        hit = self.soft_rows[at] == positions
        if not hit.any():
            return None
        out = np.zeros((len(positions), num_classes), np.float32)
        out[np.arange(len(positions)), self.labels[positions]] = 1.0
        out[hit] = self.soft[at[hit]]
        return out

    def count_synthetic(self, positions: np.ndarray) -> int:
        return 0 if self.synthetic is None else int(self.synthetic[positions].sum())

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def from_arrays(
        cls, ids, labels, x, budget_bytes: int = 2**40, spill_dir: str | None = None
    ) -> "Share":
        """A share held in arrays already (tests, notebooks); uint8 stays 8-bit."""
        x = np.asarray(x)
        x = x if x.dtype == np.uint8 else x.astype(np.float32)
        store = RowStore(x.shape[1:], budget_bytes, spill_dir, x.dtype, capacity=len(x))
        store.append(x)
        return cls(np.asarray(ids, np.int64), np.asarray(labels, np.int64), store.finish())

    def features(self, positions: np.ndarray) -> np.ndarray:
        """The rows' features as float32 (8-bit pixels scaled: operators.contract.as_float)."""
        return as_float(self.x.take(positions))


def read_share(
    split_dir: str | Path,
    seed: int,
    rank: int,
    world: int,
    x_shape,
    budget_bytes: int,
    spill_dir: str | None = None,
    dtype=np.float32,
    provenance_dir: str | Path | None = None,
) -> Share:
    """Stream a split's Parquet shards once and keep the rows that `rank` owns, their features
    in the ingested dtype (`dtype`: float32, or uint8 for 8-bit pixels); with
    `provenance_dir` (ingest's generated rows), which of them are generated and their soft
    targets."""
    files = sorted(Path(split_dir).glob("*.parquet"))
    if not files:
        raise DataError(f"{split_dir}: no Parquet shards (was the data ingested?)")
    rows = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    ids, labels = [], []
    store = RowStore(x_shape, budget_bytes, spill_dir, dtype, capacity=rows)
    width = int(np.prod(x_shape))
    for path in files:
        for batch in _batches(path, [ID, LABEL, X]):
            batch_ids = batch.column(ID).to_numpy()
            mine = owner(batch_ids, seed, world) == rank
            if not mine.any():
                continue
            x = _flat_values(batch.column(X), path, width, store.dtype)
            ids.append(batch_ids[mine])
            labels.append(batch.column(LABEL).to_numpy()[mine])
            store.append(x[mine].reshape(-1, *x_shape))
    share = Share(
        np.concatenate(ids) if ids else np.zeros(0, np.int64),
        np.concatenate(labels) if labels else np.zeros(0, np.int64),
        store.finish(),
    )
    if provenance_dir is not None and Path(provenance_dir).is_dir():
        _add_provenance(share, Path(provenance_dir), seed, rank, world)
    return share


def _add_provenance(share: Share, folder: Path, seed: int, rank: int, world: int) -> None:
    """Mark the share's generated rows and keep the soft targets of those that have one."""
    order = np.argsort(share.ids, kind="stable")
    share.synthetic = np.zeros(len(share), bool)
    rows, soft = [], []
    for path in sorted(folder.glob("*.parquet")):
        names = pq.ParquetFile(path).schema_arrow.names
        columns = [c for c in (ID, "y_soft") if c in names]
        for batch in _batches(path, columns):
            batch_ids = batch.column(ID).to_numpy()
            mine = owner(batch_ids, seed, world) == rank
            at = np.searchsorted(share.ids, batch_ids[mine], sorter=order)
            at = np.minimum(at, max(len(order) - 1, 0))
            found = (share.ids[order[at]] == batch_ids[mine]) if len(order) else at < 0
            pos = order[at[found]]  # rows a long-tail cut took out are not in the share
            share.synthetic[pos] = True
            if "y_soft" in columns:
                col = batch.column("y_soft")
                storage = col.storage if hasattr(col, "storage") else col
                values = storage.flatten().to_numpy(zero_copy_only=False)
                k = len(values) // max(len(batch_ids), 1)
                rows.append(pos)
                soft.append(values.reshape(len(batch_ids), k)[mine][found].astype(np.float32))
    if rows:
        pos = np.concatenate(rows)
        by = np.argsort(pos, kind="stable")
        share.soft_rows, share.soft = pos[by], np.concatenate(soft)[by]


def _flat_values(column, path: Path, width: int, dtype: np.dtype) -> np.ndarray:
    """A fixed-shape tensor column as (rows, width) of `dtype`, without a per-row Python loop."""
    storage = column.storage if hasattr(column, "storage") else column
    values = storage.flatten().to_numpy(zero_copy_only=False)
    if len(values) != len(column) * width:
        raise DataError(
            f"{path}: column '{X}' holds {len(values)} values for {len(column)} "
            f"rows, expected {width} a row"
        )
    if values.dtype != dtype:
        raise DataError(
            f"{path}: column '{X}' holds {values.dtype}, the ingest recorded "
            f"{dtype} (data/info.json x_dtype)"
        )
    return values.reshape(len(column), width)
