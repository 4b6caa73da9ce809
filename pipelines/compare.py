"""Run one job under several strategies on the same data and model, and put them side by side."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from .config import JobConfig
from .rounds import run_job
from .run_state import atomic_write_json

COMPARISON = "comparison.json"


def compare(job: JobConfig, strategies: list[str], *, resume: bool = False,
            overwrite: bool = False, echo=print) -> list[dict]:
    """One run per strategy under RUN_DIR/<strategy>; returns their summaries in order."""
    root = Path(job.run_dir)
    summaries = []
    for name in strategies:
        variant = dataclasses.replace(
            job, name=f"{job.name}-{name}", run_dir=str(root / name),
            strategy=dataclasses.replace(job.strategy, name=name)).validate()
        summaries.append(run_job(variant, resume=resume, overwrite=overwrite, echo=echo))
    atomic_write_json(root / COMPARISON, summaries)
    echo(comparison_table(summaries))
    return summaries


def comparison_table(summaries: list[dict]) -> str:
    """A plain-text table; compute is also shown relative to `full` when it ran."""
    full = next((s for s in summaries if s["strategy"] == "full"), None)
    head = (f"{'strategy':<10}{'test acc':>10}{'bal acc':>10}{'subset':>9}{'train passes':>14}"
            f"{'infer passes':>14}{'compute':>12}{'vs full':>9}{'wall s':>9}")
    lines = [head, "-" * len(head)]
    for s in summaries:
        rel = f"{s['compute'] / full['compute']:.3f}" if full else "-"
        lines.append(f"{s['strategy']:<10}{s['test_accuracy']:>10.4f}"
                     f"{s['test_balanced_accuracy']:>10.4f}{s['subset_size']:>9}"
                     f"{s['train_sample_passes']:>14}{s['infer_sample_passes']:>14}"
                     f"{s['compute']:>12.0f}{rel:>9}{s['wall_seconds']['total']:>9.0f}")
    return "\n".join(lines)
