"""Run one job under several strategies on the same data and model, and put them side by side."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from .config import JobConfig
from .report import COMPARISON, comparison_table, saving_sentence, write_report
from .rounds import run_job
from .run_state import atomic_write_json


def compare(job: JobConfig, strategies: list[str], *, resume: bool = False,
            overwrite: bool = False, echo=print) -> list[dict]:
    """One run per strategy under RUN_DIR/<strategy>, then RUN_DIR/comparison.json and the
    report (`report.write_report`); returns the summaries in order."""
    root = Path(job.run_dir)
    summaries = []
    for name in strategies:
        variant = dataclasses.replace(
            job, name=f"{job.name}-{name}", run_dir=str(root / name),
            strategy=dataclasses.replace(job.strategy, name=name)).validate()
        summaries.append(run_job(variant, resume=resume, overwrite=overwrite, echo=echo))
    atomic_write_json(root / COMPARISON, summaries)
    report = write_report(root, summaries)
    echo(comparison_table(summaries))
    sentence = saving_sentence(summaries)
    if sentence:
        echo(sentence)
    echo(f"report: {report}")
    return summaries
