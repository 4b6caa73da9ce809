"""The manifest: which training rows a run took in, in which round, and why.

A `full` run's manifest is the whole training split, so no process keeps all of it. Each
training worker keeps the rows of its own share (`ShareManifest`: a round and a reason code a
row, 5 bytes beside the share's 16 of id and label) and writes them as its part of every
checkpoint. The run directory's one `manifest.parquet` is the parts, rank by rank, streamed
into one file a row group at a time (`merge_parts`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from raysift.run_state import WRITE_ROWS, RunState, atomic_write, atomic_write_table

MANIFEST = "manifest.parquet"
DROPPED = "dropped"  # the reason of samples a strategy took out of the pool untrained
SCHEMA = pa.schema([("id", pa.int64()), ("round", pa.int32()), ("reason", pa.string())])


def part_name(rank: int | str) -> str:
    """A rank's part of a checkpoint's manifest ("*": every rank's, as a glob)."""
    return f"manifest-rank{rank}.parquet"


class ShareManifest:
    """The manifest rows of one rank's share: for each of the share's rows, the round it
    joined (-1: still in the pool) and why.

    A row joins the subset for a reason, or leaves the pool untrained (DROPPED: the model of
    its round already classified it correctly).
    """

    def __init__(self, ids: np.ndarray):
        self.ids = ids  # the share's, in its order
        self.round = np.full(len(ids), -1, np.int32)
        self.code = np.zeros(len(ids), np.uint8)
        self.reasons: list[str] = []  # code -> reason
        self._sorter: np.ndarray | None = None

    def add(self, ids, reasons, round_index: int) -> int:
        """Enter those of `ids` that this share holds (the others are other ranks' rows) as
        joining in `round_index`, for `reasons` (one, or one an id). Returns how many."""
        ids = np.asarray(ids, np.int64).reshape(-1)
        reasons = (
            pa.DictionaryArray.from_arrays(np.zeros(len(ids), np.int8), [reasons])
            if np.ndim(reasons) == 0
            else pa.array(np.asarray(reasons, object), pa.string())
        )
        return self._enter(ids, np.full(len(ids), round_index, np.int32), reasons)

    def subset_rows(self) -> np.ndarray:
        """Positions of the share's rows that are trained on: joined, and not dropped."""
        joined = self.round >= 0
        if DROPPED in self.reasons:
            joined &= self.code != self.reasons.index(DROPPED)
        return np.flatnonzero(joined)

    def pool_rows(self) -> np.ndarray:
        """Positions of the share's rows not in the manifest, in file order."""
        return np.flatnonzero(self.round < 0)

    def table(self) -> pa.Table:
        """The share's manifest rows by round, each round in file order."""
        rows = np.flatnonzero(self.round >= 0)
        rows = rows[np.argsort(self.round[rows], kind="stable")]
        reason = pa.DictionaryArray.from_arrays(
            pa.array(self.code[rows], pa.uint8()), pa.array(self.reasons, pa.string())
        )
        return pa.Table.from_arrays(
            [
                pa.array(self.ids[rows], pa.int64()),
                pa.array(self.round[rows]),
                reason.cast(pa.string()),
            ],
            schema=SCHEMA,
        )

    def write(self, folder: Path, rank: int) -> None:
        atomic_write_table(Path(folder) / part_name(rank), self.table())
        _hand_back_arrow_memory()

    def load(self, folder: Path) -> None:
        """This share's rows of every rank's part in `folder` (a checkpoint), read a row group
        at a time: a restarted group finds its rows whatever rank wrote them."""
        for path in sorted(Path(folder).glob(part_name("*"))):
            batches = pq.ParquetFile(path).iter_batches(batch_size=WRITE_ROWS, use_threads=False)
            for batch in batches:
                self._enter(
                    batch.column("id").to_numpy(),
                    batch.column("round").to_numpy(),
                    batch.column("reason"),
                )

    def _enter(self, ids: np.ndarray, rounds: np.ndarray, reasons: pa.Array) -> int:
        """Enter rows a block at a time: a `full` run's first subset is every row."""
        taken = sum(
            self._enter_block(
                ids[i : i + WRITE_ROWS], rounds[i : i + WRITE_ROWS], reasons[i : i + WRITE_ROWS]
            )
            for i in range(0, len(ids), WRITE_ROWS)
        )
        _hand_back_arrow_memory()
        return taken

    def _enter_block(self, ids: np.ndarray, rounds: np.ndarray, reasons: pa.Array) -> int:
        at, mine = self._positions(ids)
        encoded = reasons.filter(pa.array(mine)).dictionary_encode()
        codes = np.array([self._code(r) for r in encoded.dictionary.to_pylist()], np.uint8)
        self.round[at[mine]] = rounds[mine]
        self.code[at[mine]] = codes[encoded.indices.to_numpy(zero_copy_only=False)]
        return int(mine.sum())

    def _code(self, reason: str) -> int:
        if reason not in self.reasons:
            self.reasons.append(reason)
        return self.reasons.index(reason)

    def _positions(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For each id, its position in the share and whether the share holds it."""
        if self._sorter is None:
            self._sorter = np.argsort(self.ids, kind="stable")
        if not len(self.ids):
            return np.zeros(len(ids), np.int64), np.zeros(len(ids), bool)
        at = np.minimum(np.searchsorted(self.ids, ids, sorter=self._sorter), len(self.ids) - 1)
        at = self._sorter[at]
        return at, self.ids[at] == ids


def merge_parts(folder: Path, world: int, out: Path, tag=None) -> int:
    """Stream the `world` parts in `folder` into the one manifest file `out`, rank by rank, a
    row group at a time (all or nothing); `tag(batch) -> batch` adds columns on the way.
    Returns the rows written."""
    tag = tag or (lambda batch: batch)
    written = 0

    def write(f) -> None:
        nonlocal written
        schema = tag(pa.RecordBatch.from_pylist([], schema=SCHEMA)).schema
        with pq.ParquetWriter(f, schema) as writer:
            for rank in range(world):
                part = pq.ParquetFile(Path(folder) / part_name(rank))
                for batch in part.iter_batches(batch_size=WRITE_ROWS):
                    writer.write_batch(tag(batch))
                    written += batch.num_rows

    atomic_write(Path(out), write)
    _hand_back_arrow_memory()
    return written


def _hand_back_arrow_memory() -> None:
    """After the manifest's Arrow work: Arrow's allocator keeps what it freed, so a worker that
    wrote a table of its share would hold that much for the rest of the job."""
    pa.default_memory_pool().release_unused()


def read_manifest(run_dir: Path) -> dict:
    """A finished run's manifest as arrays: id, round, reason (for reports; a run's worker
    never reads it whole)."""
    table = pq.read_table(Path(run_dir) / MANIFEST, columns=SCHEMA.names)
    return {
        "id": table["id"].to_numpy(),
        "round": table["round"].to_numpy(),
        "reason": table["reason"].to_numpy(zero_copy_only=False),
    }


def write_run_dir(checkpoint: Path, run_dir: Path, world: int, tag=None) -> None:
    """Bring the run directory up to a checkpoint of `world` ranks: the manifest (through
    `tag`, as `merge_parts`), then the state. A reader may find the manifest one phase ahead
    of a state cut short; a resume starts from the checkpoint, not from these."""
    merge_parts(checkpoint, world, Path(run_dir) / MANIFEST, tag)
    RunState.load(checkpoint).save(run_dir)
