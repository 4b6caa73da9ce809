"""What a run has finished so far, on disk: per-round metrics and the resume point.

Every file is written atomically (temp file, then rename). The manifest beside it has its own
module (pipelines/manifest.py): no process holds all of it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROUNDS = "rounds.json"
STATE = "state.json"
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


@dataclass
class RunState:
    """The round records of a run and its resume point, the same on every rank.

    `save` writes it as the run directory's files, and every Ray Train checkpoint of the run
    holds the same files, so one format serves both. The manifest rows stay with the workers
    that own them (pipelines/manifest.py); `manifest_rows` counts them over all ranks.
    """

    records: list = field(default_factory=list)  # one dict of metrics per finished phase
    next_round: int = 0
    stop_reason: str | None = None  # set when the rounds are over (a final phase may follow)
    test: dict | None = None  # the test split's metrics, once the last model is evaluated
    manifest_rows: int = 0  # 0: the run has not picked its first subset yet
    # The run's wall clock (pipelines/job/engine.py Worker.clock): its reading at this state, and
    # the time.time() it counts from (start-ups, waits and a restarted worker group included;
    # a resumed run goes on from `seconds`, without the time no driver ran).
    seconds: float = 0.0
    clock_origin: float | None = None

    def save(self, folder: Path) -> None:
        folder = Path(folder)
        atomic_write_json(folder / STATE, asdict(self))
        atomic_write_json(folder / ROUNDS, self.records)  # a readable copy; state is the truth

    @classmethod
    def load(cls, folder: Path) -> "RunState | None":
        path = Path(folder) / STATE
        return cls(**json.loads(path.read_text())) if path.exists() else None


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
