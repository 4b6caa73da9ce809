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


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


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
    """The manifest rows and round records of a run, with its resume point.

    A manifest row is a sample trained on from its round on, or (reason DROPPED) one the model
    of its round already classified correctly, which leaves the pool without being trained on.
    The state travels inside every Ray Train checkpoint of the run (`to_dict`); `save` writes
    the readable copies into the run directory.
    """

    ids: list = field(default_factory=list)
    rounds_added: list = field(default_factory=list)
    reasons: list = field(default_factory=list)
    records: list = field(default_factory=list)  # one dict of metrics per finished phase
    next_round: int = 0
    stop_reason: str | None = None  # set when the rounds are over (a final phase may follow)
    test: dict | None = None  # the test split's metrics, once the last model is evaluated

    def add(self, ids, reasons, round_index: int) -> None:
        ids = np.asarray(ids, dtype=np.int64)
        self.ids.extend(ids.tolist())
        self.rounds_added.extend([round_index] * len(ids))
        self.reasons.extend(list(np.broadcast_to(np.asarray(reasons, dtype=object), len(ids))))

    def subset_ids(self) -> np.ndarray:
        """The ids trained on: every manifest row but the dropped ones."""
        trained = np.asarray(self.reasons, dtype=object) != DROPPED
        return np.asarray(self.ids, dtype=np.int64)[trained]

    def manifest_ids(self) -> np.ndarray:
        """Every id in the manifest, dropped ones included: no longer in the pool."""
        return np.asarray(self.ids, dtype=np.int64)

    def manifest_table(self) -> pa.Table:
        return pa.table({
            "id": pa.array(self.ids, pa.int64()),
            "round": pa.array(self.rounds_added, pa.int32()),
            "reason": pa.array([str(r) for r in self.reasons], pa.string()),
        })

    def to_dict(self) -> dict:
        return {"ids": list(self.ids), "rounds_added": list(self.rounds_added),
                "reasons": [str(r) for r in self.reasons], "records": self.records,
                "next_round": self.next_round, "stop_reason": self.stop_reason,
                "test": self.test}

    @classmethod
    def from_dict(cls, d: dict) -> "RunState":
        return cls(**d)

    def save(self, run_dir: Path) -> None:
        sink = pa.BufferOutputStream()
        pq.write_table(self.manifest_table(), sink)
        atomic_write_bytes(run_dir / MANIFEST, sink.getvalue().to_pybytes())
        atomic_write_json(run_dir / STATE, {"next_round": self.next_round,
                                            "stop_reason": self.stop_reason,
                                            "test": self.test,
                                            "manifest_rows": len(self.ids),
                                            "records": self.records})
        atomic_write_json(run_dir / ROUNDS, self.records)  # a readable copy; state is the truth

    @classmethod
    def load(cls, run_dir: Path) -> "RunState | None":
        if not (run_dir / STATE).exists():
            return None
        state = json.loads((run_dir / STATE).read_text())
        table = pq.read_table(run_dir / MANIFEST).slice(0, state["manifest_rows"])
        return cls(ids=table["id"].to_pylist(), rounds_added=table["round"].to_pylist(),
                   reasons=table["reason"].to_pylist(), records=state["records"],
                   next_round=state["next_round"], stop_reason=state["stop_reason"],
                   test=state.get("test"))
