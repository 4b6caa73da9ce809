"""What rank 0 tells the driver while a job runs, as JSON lines in the run directory.

Rank 0 appends one line a message to `events.jsonl` (the run directory is where it writes the
manifest already, so the driver sees it on a cluster too); the driver reads the new lines
while `fit` blocks (pipelines/job/progress.py). A file needs no process of its own: a queue
actor was one more process to start beside Ray Train's, and the first message waited seconds
for it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

EVENTS = "events.jsonl"


@dataclass
class EpochDone:
    label: str
    epoch: int
    epochs: int
    val_accuracy: float | None


@dataclass
class ScanProgress:
    label: str
    seen: int
    found: int


@dataclass
class Notes:
    lines: list


@dataclass
class PhaseDone:
    record: dict
    notes: list
    stop_reason: str | None


KINDS = {kind.__name__: kind for kind in (EpochDone, ScanProgress, Notes, PhaseDone)}


def append(path: Path, message) -> None:
    """One message as one line (one write: a reader sees whole lines or a partial last one)."""
    line = json.dumps({"kind": type(message).__name__, **asdict(message)}) + "\n"
    with open(path, "a") as f:
        f.write(line)


def parse(line: str):
    fields = json.loads(line)
    return KINDS[fields.pop("kind")](**fields)
