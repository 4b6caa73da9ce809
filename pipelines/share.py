"""The rows one training worker owns for a whole job, read once and kept under a memory budget.

A row belongs to rank `hash(seed, id) % world`: the shares are even, fixed by the seed alone
(not by file layout or read order), and no rows ever move between workers. Each worker streams
the split's Parquet files once with pyarrow (no Ray Data tasks, which the training workers would
starve of CPUs) and keeps its rows' features in a `RowStore`: in memory up to `budget_bytes`,
the rest in a memory-mapped file on local disk. Every epoch and every pool scan reads from the
store, so nothing is read twice and no process ever holds more than its budget of features.
Ids and labels (16 bytes a row) stay in memory.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from operators.contract import ID, LABEL, X, DataError
from operators.keys import hash_keys

from .seeding import derive_seed

_READ_ROWS = 4096  # rows per Parquet batch while a share streams in


def owner(ids: np.ndarray, seed: int, world: int) -> np.ndarray:
    """The rank that owns each id."""
    return (hash_keys(ids, derive_seed(seed, "share")) % np.uint64(world)).astype(np.int64)


class RowStore:
    """Fixed-shape float32 rows, appended once: the first `budget_bytes` in memory, the rest
    appended to one file under `spill_dir` and read back through a memory map (the file goes
    with the store)."""

    def __init__(self, row_shape: tuple, budget_bytes: int, spill_dir: str | None = None):
        self.row_shape = tuple(row_shape)
        row_bytes = max(1, int(np.prod(self.row_shape)) * 4)
        self._room = max(0, int(budget_bytes) // row_bytes)
        self._spill_dir = spill_dir
        self._tmp = None
        self._file = None
        self._parts = [np.zeros((0, *self.row_shape), np.float32)]
        self._mem = self._parts[0]
        self._disk = None
        self.n_memory = 0
        self.n_spilled = 0

    def __len__(self) -> int:
        return self.n_memory + self.n_spilled

    def append(self, x: np.ndarray) -> None:
        x = np.asarray(x, dtype=np.float32)
        room = self._room - self.n_memory
        if room > 0:
            self._parts.append(np.array(x[:room]))
            self.n_memory += len(self._parts[-1])
            x = x[room:]
        if len(x):
            if self._file is None:
                self._tmp = tempfile.TemporaryDirectory(prefix="raysift-share-",
                                                        dir=self._spill_dir)
                self._file = open(Path(self._tmp.name) / "rows.f32", "wb")
            self._file.write(np.ascontiguousarray(x).tobytes())
            self.n_spilled += len(x)

    def finish(self) -> "RowStore":
        """Join the in-memory parts into one array and map the spilled file."""
        self._mem = np.concatenate(self._parts)
        self._parts = []
        if self._file is not None:
            self._file.close()
            self._file = None
            self._disk = np.memmap(Path(self._tmp.name) / "rows.f32", dtype=np.float32,
                                   mode="r", shape=(self.n_spilled, *self.row_shape))
        return self

    def take(self, rows: np.ndarray) -> np.ndarray:
        """The rows at `rows` (positions in append order), as a new array in that order."""
        rows = np.asarray(rows, dtype=np.int64)
        if self._disk is None:
            return self._mem[rows]
        out = np.empty((len(rows), *self.row_shape), np.float32)
        low = rows < self.n_memory
        out[low] = self._mem[rows[low]]
        high = np.flatnonzero(~low)
        if len(high):
            order = high[np.argsort(rows[high], kind="stable")]  # ascending reads from the map
            out[order] = self._disk[rows[order] - self.n_memory]
        return out

    def close(self) -> None:
        self._disk = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


@dataclass
class Share:
    """One rank's rows of a split, in file order: ids, labels and the features' store."""

    ids: np.ndarray
    labels: np.ndarray
    x: RowStore

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def from_arrays(cls, ids, labels, x, budget_bytes: int = 2**40,
                    spill_dir: str | None = None) -> "Share":
        """A share held in arrays already (tests, notebooks)."""
        x = np.asarray(x, dtype=np.float32)
        store = RowStore(x.shape[1:], budget_bytes, spill_dir)
        store.append(x)
        return cls(np.asarray(ids, np.int64), np.asarray(labels, np.int64), store.finish())

    def rows_of(self, ids: np.ndarray) -> np.ndarray:
        """Positions of this share's rows whose id is in `ids` (others are skipped)."""
        return np.flatnonzero(np.isin(self.ids, ids))


def read_share(split_dir: str | Path, seed: int, rank: int, world: int, x_shape,
               budget_bytes: int, spill_dir: str | None = None) -> Share:
    """Stream a split's Parquet shards once and keep the rows that `rank` owns."""
    files = sorted(Path(split_dir).glob("*.parquet"))
    if not files:
        raise DataError(f"{split_dir}: no Parquet shards (was the data ingested?)")
    ids, labels, store = [], [], RowStore(x_shape, budget_bytes, spill_dir)
    width = int(np.prod(x_shape))
    for path in files:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=_READ_ROWS,
                                                       columns=[ID, LABEL, X]):
            batch_ids = batch.column(ID).to_numpy()
            mine = owner(batch_ids, seed, world) == rank
            if not mine.any():
                continue
            x = _flat_values(batch.column(X), path, width)
            ids.append(batch_ids[mine])
            labels.append(batch.column(LABEL).to_numpy()[mine])
            store.append(x[mine].reshape(-1, *x_shape))
    return Share(np.concatenate(ids) if ids else np.zeros(0, np.int64),
                 np.concatenate(labels) if labels else np.zeros(0, np.int64), store.finish())


def _flat_values(column, path: Path, width: int) -> np.ndarray:
    """A fixed-shape tensor column as (rows, width) float32, without a per-row Python loop."""
    storage = column.storage if hasattr(column, "storage") else column
    values = storage.flatten().to_numpy(zero_copy_only=False)
    if len(values) != len(column) * width:
        raise DataError(f"{path}: column '{X}' holds {len(values)} values for {len(column)} "
                        f"rows, expected {width} a row")
    return values.reshape(len(column), width).astype(np.float32, copy=False)
