"""What the driver shows while the workers run the job: a bar over each phase's epochs, one over
each pool scan, and a line per finished phase.

Rank 0 appends small messages (pipelines/job/messages.py: Notes, EpochDone, ScanProgress,
PhaseDone) to the run directory's events file; a daemon thread on the driver reads the new lines
into `Progress` while `fit` blocks. The bars go to stderr and only on a terminal.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from pathlib import Path

from tqdm import tqdm

from raysift.job.messages import EpochDone, Notes, PhaseDone, ScanProgress, parse
from raysift.run_state import compute_totals, overhead_seconds

POLL_S = 0.2  # how often the driver looks for new lines


class Feed:
    """The run directory's events file, read into `show` until the run is over. Each session
    starts it empty: what a session before a resume said was shown then."""

    def __init__(self, path: Path, show: Callable[[object], None]):
        # named from the root: the workers that append to it run in folders of their own
        self._path, self._show = Path(path).resolve(), show
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._drain, daemon=True)

    def __enter__(self) -> str:
        self._path.write_text("")
        self._thread.start()
        return str(self._path)

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()

    def _drain(self) -> None:
        with open(self._path) as f:
            pending = ""
            while True:
                over = self._done.is_set()  # then one more read: the lines of the last moments
                pending += f.read()
                *lines, pending = pending.split("\n")
                for line in lines:
                    self._show(parse(line))
                if over:
                    return
                self._done.wait(POLL_S)


class Progress:
    """Turns the workers' messages into bars and round lines; `records` are the phases that
    were finished before (a resumed run), for the compute so far."""

    def __init__(self, name: str, records: list, echo):
        self.name, self.records, self.echo = name, list(records), echo
        self.bar: tqdm | None = None
        self.bar_label = None

    def __call__(self, message) -> None:
        if isinstance(message, EpochDone):
            bar = self._bar(f"{message.label} training", message.epochs, " epoch")
            bar.n = message.epoch + 1  # an epoch redone after a worker restart counts once
            if message.val_accuracy is not None:
                bar.set_postfix(val_acc=f"{message.val_accuracy:.4f}", refresh=False)
            bar.refresh()
        elif isinstance(message, ScanProgress):
            bar = self._bar(f"{message.label} scoring", None, " rows")
            bar.n = message.seen
            bar.set_postfix(hard=message.found, refresh=False)
            bar.refresh()
        elif isinstance(message, Notes):
            for line in message.lines:
                self.echo(f"[{self.name}] {line}")
        elif isinstance(message, PhaseDone):
            self._close()
            self.records.append(message.record)
            self.echo(round_line(message.record, self.records) + _drop_counts(message.record))
            for note in message.notes:
                self.echo(f"[{self.name}] {note}")
            if message.stop_reason:
                self.echo(f"[{self.name}] stop: {message.stop_reason}")

    def _bar(self, desc: str, total, unit: str) -> tqdm:
        if self.bar_label != desc:
            self._close()
            self.bar = tqdm(
                desc=desc,
                total=total,
                unit=unit,
                file=sys.stderr,
                leave=False,
                disable=None,
                mininterval=0.5,
            )
            self.bar_label = desc
        return self.bar

    def _close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.bar, self.bar_label = None, None


def round_line(record: dict, records: list) -> str:
    """One finished phase: subset, validation, hard samples, compute so far, and its time."""
    totals = compute_totals(records)
    label = "final" if record["phase"] == "final" else f"round {record['round']}"
    overhead = overhead_seconds(record)
    return (
        f"  {label:>8}: subset {record['subset_size']:>7}  val acc "
        f"{record['val_accuracy']:.4f} (balanced {record['val_balanced_accuracy']:.4f})  "
        f"hard found {record['hard_found']:>5}  "
        f"compute so far {totals['compute']:>10.0f}  ({record['seconds_round']:.1f}s: "
        f"{record['seconds_steps']:.1f}s steps, {overhead:.1f}s overhead)"
    )


def _drop_counts(record: dict) -> str:
    """The round line's tail for a strategy that drops learned samples (M1); empty otherwise."""
    if "remaining" not in record:
        return ""
    return f"  dropped {record['dropped']}  remaining {record['remaining']}"
