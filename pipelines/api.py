"""The notebook API: a job from a file or a dict, run or compared, its results as DataFrames.

    import raysift
    job = raysift.load_job("configs/demo_mnist1d.yaml", {"strategy.max_rounds": 3})
    run = raysift.run(job, overwrite=True)
    run.rounds          # one row per phase: subset size, validation accuracy, compute, seconds
    run.summary         # one row: test accuracy, compute, wall seconds (nested keys dotted)
    cmp = raysift.compare(job, ["m2", "full"], overwrite=True)
    cmp.summary         # one row per strategy (and seed)

The same runs as `raysift run` and `raysift compare`, the same run directories on disk, so a
run started here resumes from the command line and the other way round. Ray starts locally on
first use unless the notebook already called `ray.init(address=...)`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from raysift.config import COMPARED, JobConfig, from_dict, with_overrides
from raysift.config import load_job as read_job
from raysift.job.compare import compare as compare_job
from raysift.job.rounds import SUMMARY, check_names, format_summary, run_job
from raysift.manifest import MANIFEST
from raysift.operators.contract import DataError
from raysift.report.comparison import COMPARISON, REPORT
from raysift.report.seeds import SEEDS_JSON, SEEDS_REPORT
from raysift.run_state import ROUNDS


def load_job(job: str | Path | dict, overrides: dict | None = None) -> JobConfig:
    """A job from a YAML file or a dict of sections, with dotted `overrides`
    ({"strategy.max_rounds": 3}), checked as `raysift run` checks it."""
    if isinstance(job, dict):
        config = from_dict(with_overrides(job, overrides))
    else:
        config = read_job(job, overrides)
    check_names(config)
    return config


@dataclass(frozen=True)
class Run:
    """A finished run's directory, read as tables."""

    run_dir: Path
    summary_dict: dict = field(repr=False)
    records: list[dict] = field(repr=False)  # rounds.json: one record per phase

    @classmethod
    def load(cls, run_dir: str | Path) -> Run:
        run_dir = Path(run_dir)
        path = run_dir / SUMMARY
        if not path.is_file():
            raise DataError(f"{path} does not exist: the run has not finished (resume it)")
        records = json.loads((run_dir / ROUNDS).read_text())
        return cls(run_dir, json.loads(path.read_text()), records)

    @property
    def summary(self) -> pd.DataFrame:
        """One row: the summary, nested keys dotted (`wall_seconds.total`)."""
        flat = {k: v for k, v in self.summary_dict.items() if k != "per_round"}
        return pd.json_normalize(flat)

    @property
    def rounds(self) -> pd.DataFrame:
        """One row per phase (each round, then the final phase), in order."""
        return pd.json_normalize(
            [{k: v for k, v in r.items() if k != "curve"} for r in self.records]
        )

    @property
    def curve(self) -> pd.DataFrame:
        """One row per validation: the learning curve over the whole run."""
        return pd.DataFrame(
            [
                {"phase": r["phase"], "round": r["round"], **point}
                for r in self.records
                for point in r["curve"]
            ]
        )

    def manifest(self) -> pd.DataFrame:
        """Which rows trained, from which round, and why (the run's manifest.parquet)."""
        return pd.read_parquet(self.run_dir / MANIFEST)

    def __str__(self) -> str:
        return format_summary(self.summary_dict)


@dataclass(frozen=True)
class Comparison:
    """A comparison's runs, by (strategy, seed); the seed is None without `seeds`."""

    run_dir: Path
    runs: dict[tuple[str, int | None], Run] = field(repr=False)

    @classmethod
    def load(cls, run_dir: str | Path) -> Comparison:
        root = Path(run_dir)
        seeded = (root / SEEDS_JSON).is_file()
        path = root / (SEEDS_JSON if seeded else COMPARISON)
        if not path.is_file():
            raise DataError(f"{root}: no {COMPARISON} or {SEEDS_JSON}: run the comparison first")
        runs = {}
        for s in json.loads(path.read_text()):
            seed = s["seed"] if seeded else None
            folder = root / f"seed{seed}" if seeded else root
            runs[s["strategy"], seed] = Run.load(folder / s["strategy"])
        return cls(root, runs)

    @property
    def seeded(self) -> bool:
        return any(seed is not None for _, seed in self.runs)

    @property
    def summary(self) -> pd.DataFrame:
        """One row per run: strategy (and seed) first, then the summary's columns."""
        return self._stacked(lambda run: run.summary)

    @property
    def rounds(self) -> pd.DataFrame:
        """Every run's phases, with its strategy (and seed): ready to plot side by side."""
        return self._stacked(lambda run: run.rounds)

    @property
    def report(self) -> Path:
        """The Markdown report beside its plots."""
        return self.run_dir / (SEEDS_REPORT if self.seeded else REPORT)

    def run(self, strategy: str, seed: int | None = None) -> Run:
        if (strategy, seed) not in self.runs:
            raise KeyError(f"no run of {strategy!r}, seed {seed}: have {sorted(self.runs)}")
        return self.runs[strategy, seed]

    def _stacked(self, table_of) -> pd.DataFrame:
        parts = []
        for (strategy, seed), run in self.runs.items():
            keys = {"strategy": strategy, **({"seed": seed} if self.seeded else {})}
            table = table_of(run).drop(columns=list(keys), errors="ignore")
            parts.append(pd.concat([pd.DataFrame([keys] * len(table)), table], axis=1))
        return pd.concat(parts, ignore_index=True)


def run(job: JobConfig, *, resume: bool = False, overwrite: bool = False) -> Run:
    """Run (or resume) `job` to the end; its run directory read back as tables."""
    run_job(job, resume=resume, overwrite=overwrite)
    return Run.load(job.run_dir)


def compare(
    job: JobConfig,
    strategies: list[str] = COMPARED,
    *,
    seeds: list[int] | None = None,
    resume: bool = False,
    overwrite: bool = False,
) -> Comparison:
    """`job` under each strategy (and seed) on the same data and model, side by side."""
    compare_job(job, list(strategies), seeds=seeds, resume=resume, overwrite=overwrite)
    return Comparison.load(job.run_dir)
