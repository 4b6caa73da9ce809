"""What a run has finished so far, on disk: the manifest, per-round metrics and the resume point.

Each round ends with atomic writes (temp file, then rename): the manifest first, then the state
that says how many manifest rows and which records are final. A run killed at any moment
resumes from the last state written, whatever else was half done.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

MANIFEST = "manifest.parquet"
ROUNDS = "rounds.json"
STATE = "state.json"
DROPPED = "dropped"  # the manifest reason of samples a strategy took out of the pool untrained
WRITE_ROWS = 65_536  # rows per Parquet row group that atomic_write_table writes


def atomic_write(path: Path, write) -> None:
    """Write `path` all or nothing: `write(file)` fills a temporary file beside it, which is
    synced and then renamed over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def atomic_write_table(path: Path, table: pa.Table) -> None:
    """A Parquet file written straight to disk (no copy of it in memory first), a row group at
    a time: the writer's buffers stay the size of one group, whatever the table's length."""
    atomic_write(path, lambda f: pq.write_table(table, f, row_group_size=WRITE_ROWS))


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=2, sort_keys=True).encode())


def replace_via_staging(run_dir: Path, fill):
    """Build a run directory beside `run_dir` with `fill(staging)` and swap it in only when that
    succeeded: bad input fails before an old run is replaced. Returns what `fill` returned."""
    staging = run_dir.with_name(f".{run_dir.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        result = fill(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(run_dir, ignore_errors=True)
    staging.rename(run_dir)
    return result


def _ints(values, dtype) -> np.ndarray:
    return np.asarray(values, dtype=dtype).reshape(-1)


@dataclass
class RunState:
    """The manifest rows and round records of a run, with its resume point.

    A manifest row is a sample trained on from its round on, or (reason DROPPED) one the model
    of its round already classified correctly, which leaves the pool without being trained on.
    The rows are NumPy arrays (a `full` run's manifest is the whole training split: 8 bytes an
    id, not a Python object each). `save` writes the state as the run directory's files, and
    every Ray Train checkpoint of the run holds the same files, so one format serves both.
    """

    ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    rounds_added: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    reasons: np.ndarray = field(default_factory=lambda: np.zeros(0, object))
    records: list = field(default_factory=list)  # one dict of metrics per finished phase
    next_round: int = 0
    stop_reason: str | None = None  # set when the rounds are over (a final phase may follow)
    test: dict | None = None  # the test split's metrics, once the last model is evaluated
    # The run's wall clock (pipelines/job/engine.py Worker.clock): its reading at this state, and
    # the time.time() it counts from (start-ups, waits and a restarted worker group included;
    # a resumed run goes on from `seconds`, without the time no driver ran).
    seconds: float = 0.0
    clock_origin: float | None = None

    def __post_init__(self):
        self.ids = _ints(self.ids, np.int64)
        self.rounds_added = _ints(self.rounds_added, np.int32)
        self.reasons = np.asarray(self.reasons, dtype=object).reshape(-1)

    def add(self, ids, reasons, round_index: int) -> None:
        ids = _ints(ids, np.int64)
        self.ids = np.concatenate([self.ids, ids])
        self.rounds_added = np.concatenate(
            [self.rounds_added, np.full(len(ids), round_index, np.int32)]
        )
        self.reasons = np.concatenate(
            [self.reasons, np.broadcast_to(np.asarray(reasons, dtype=object), len(ids))]
        )

    def subset_ids(self) -> np.ndarray:
        """The ids trained on: every manifest row but the dropped ones."""
        return self.ids[self.reasons != DROPPED]

    def manifest_ids(self) -> np.ndarray:
        """Every id in the manifest, dropped ones included: no longer in the pool."""
        return self.ids

    def manifest_table(self) -> pa.Table:
        return pa.table(
            {
                "id": pa.array(self.ids, pa.int64()),
                "round": pa.array(self.rounds_added, pa.int32()),
                "reason": pa.array(self.reasons, pa.string()),
            }
        )

    def to_dict(self) -> dict:
        return {
            "ids": self.ids,
            "rounds_added": self.rounds_added,
            "reasons": self.reasons,
            "records": self.records,
            "next_round": self.next_round,
            "stop_reason": self.stop_reason,
            "test": self.test,
            "seconds": self.seconds,
            "clock_origin": self.clock_origin,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "RunState":
        return cls(**d)

    def save(self, folder: Path) -> None:
        """The manifest first, then the state that says how many of its rows are final."""
        folder = Path(folder)
        atomic_write_table(folder / MANIFEST, self.manifest_table())
        atomic_write_json(
            folder / STATE,
            {
                "next_round": self.next_round,
                "stop_reason": self.stop_reason,
                "test": self.test,
                "manifest_rows": len(self.ids),
                "seconds": self.seconds,
                "clock_origin": self.clock_origin,
                "records": self.records,
            },
        )
        atomic_write_json(folder / ROUNDS, self.records)  # a readable copy; state is the truth

    @classmethod
    def load(cls, folder: Path) -> "RunState | None":
        folder = Path(folder)
        if not (folder / STATE).exists():
            return None
        state = json.loads((folder / STATE).read_text())
        table = pq.read_table(folder / MANIFEST).slice(0, state["manifest_rows"])
        return cls(
            ids=table["id"].to_numpy(),
            rounds_added=table["round"].to_numpy(),
            reasons=table["reason"].to_numpy(zero_copy_only=False),
            records=state["records"],
            next_round=state["next_round"],
            stop_reason=state["stop_reason"],
            test=state.get("test"),
            seconds=state.get("seconds", 0.0),
            clock_origin=state.get("clock_origin"),
        )


def compute_totals(records: list) -> dict:
    """Sample-passes of `records` (dicts with train/infer_sample_passes); `compute` counts an
    inference pass as a third of a training pass (forward only, no backward)."""
    train = sum(r["train_sample_passes"] for r in records)
    infer = sum(r["infer_sample_passes"] for r in records)
    return {
        "train_sample_passes": train,
        "infer_sample_passes": infer,
        "compute": train + infer / 3,
    }


def overhead_seconds(record: dict) -> float:
    """A phase's wall time less its training steps and scoring batches: what the engine
    spends around the arithmetic (validation, selection, checkpoints, waits)."""
    return record["seconds_round"] - record["seconds_steps"] - record["seconds_score_batches"]
