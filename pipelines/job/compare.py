"""Run one job under several strategies on the same data and model, and put them side by side;
with several seeds, each seed's comparison and then every strategy's mean ± std over them."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from raysift.config import JobConfig
from raysift.job.rounds import init_ray, run_job
from raysift.report.comparison import COMPARISON, comparison_table, saving_sentence, write_report
from raysift.report.seeds import SEEDS_JSON, seeds_text, write_seeds_report
from raysift.run_state import atomic_write_json


def compare(
    job: JobConfig,
    strategies: list[str],
    *,
    seeds: list[int] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    echo=print,
) -> list[dict]:
    """One run per strategy under RUN_DIR/<strategy>, then RUN_DIR/comparison.json and the
    report (`report.comparison.write_report`); returns the summaries in order. With `seeds`,
    that per seed under RUN_DIR/seed<k>/ (the job's seed replaced), then RUN_DIR/seeds.json
    (every summary with its `seed`) and the seeds' report (`report.seeds.write_seeds_report`).

    Ray starts here, before any strategy's clock: inside the first run its start (about 4 s on
    2 cores) would count against that strategy alone."""
    if seeds is not None and (len(set(seeds)) != len(seeds) or not seeds):
        raise ValueError(f"seeds: got {seeds}, expected distinct seeds")
    init_ray()
    if seeds is None:
        return _compare(job, strategies, resume=resume, overwrite=overwrite, echo=echo)
    root = Path(job.run_dir)
    summaries = []
    for seed in seeds:
        echo(f"[{job.name}] seed {seed}")
        one = dataclasses.replace(job, seed=seed, run_dir=str(root / f"seed{seed}"))
        summaries += [
            {**s, "seed": seed}
            for s in _compare(one, strategies, resume=resume, overwrite=overwrite, echo=echo)
        ]
    atomic_write_json(root / SEEDS_JSON, summaries)
    report = write_seeds_report(root, summaries)
    echo(seeds_text(summaries))
    echo(f"report: {report}")
    return summaries


def _compare(
    job: JobConfig, strategies: list[str], *, resume: bool, overwrite: bool, echo
) -> list[dict]:
    root = Path(job.run_dir)
    summaries = []
    for name in strategies:
        variant = dataclasses.replace(
            job,
            name=f"{job.name}-{name}",
            run_dir=str(root / name),
            strategy=dataclasses.replace(job.strategy, name=name),
        ).validate()
        summaries.append(run_job(variant, resume=resume, overwrite=overwrite, echo=echo))
    atomic_write_json(root / COMPARISON, summaries)
    report = write_report(root, summaries)
    echo(comparison_table(summaries))
    sentence = saving_sentence(summaries)
    if sentence:
        echo(sentence)
    echo(f"report: {report}")
    return summaries
