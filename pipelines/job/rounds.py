"""The driver: from a job to a trained model, a manifest and a summary of what it cost.

    ingest -> initial subset -> one Ray Train run (pipelines/job/engine.py: every round, the
    final phase and the test inside the workers) -> final/ and summary.json

The driver ingests the data (Ray Data), starts the one run, shows what the workers report while
it runs and writes the outputs. `resume=True` starts the run
again on the same Ray Train storage, which continues from its latest checkpoint (per epoch
and per round) with the same manifest and metrics as an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray
from ray.data import DataContext
from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from raysift.batch.synthesize import add_synthetic
from raysift.config import ConfigError, JobConfig, check_field
from raysift.data.ingest import PROVENANCE_DIR, DataInfo, ingest, load_info
from raysift.job.engine import train_job
from raysift.job.messages import EVENTS
from raysift.job.progress import Feed, Progress
from raysift.manifest import write_run_dir
from raysift.operators.contract import ID, DataError
from raysift.operators.norms import KINDS as NORM_KINDS
from raysift.report.comparison import subset_cell
from raysift.run_state import (
    RunState,
    atomic_write_json,
    compute_totals,
    overhead_seconds,
    replace_via_staging,
)
from raysift.selection.budget import Plan, apply_budget
from raysift.selection.strategies import STRATEGIES
from raysift.training.loss import build_transforms
from raysift.training.saved import MODEL_FILE

SUMMARY = "summary.json"
JOB_COPY = "job.json"
RAY_ENV = {
    # raysift draws its own bars.
    "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
    # A worker's report waits until the Ray Train controller's next poll takes the last one
    # (a queue of one, polled every 2 s by default): phases that end close together, and the
    # worker group's start, wait less with a shorter poll.
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25",
    # One process fewer to start with every run, on machines with few cores a visible part: the
    # watcher only names a preempted node in the logs; FailureConfig restarts the group either way.
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
}


def check_names(job: JobConfig) -> None:
    """The job's names that only their implementations list: the norm kinds (operators/norms.py)
    and the transform catalogue (pipelines/training/loss.py). Checked before anything runs; the
    config, which imports no implementation, checked the rest when it was read."""
    check_field(
        job.strategy.norm in NORM_KINDS,
        "strategy.norm",
        job.strategy.norm,
        f"one of {', '.join(NORM_KINDS)}",
    )
    build_transforms(job.augment)


def run_job(job: JobConfig, *, resume: bool = False, overwrite: bool = False, echo=print) -> dict:
    """Run (or resume) a job to the end and return its summary."""
    started_at = time.time()
    check_names(job)
    run_dir = Path(job.run_dir)
    resume = _check_run_dir(run_dir, job, resume=resume, overwrite=overwrite)
    init_ray()
    check_workers(job.train.num_workers, job.train.use_gpu)

    t = time.perf_counter()
    data_dir = run_dir / "data"
    info = load_info(data_dir) if resume else _start_run_dir(run_dir, job)
    ingest_seconds = time.perf_counter() - t
    echo(
        f"[{job.name}] data: {info.counts} samples, {info.num_classes} classes, "
        f"x {tuple(info.x_shape)} ({info.source}); strategy {job.strategy.name}"
    )
    job, plan = apply_budget(
        job,
        info.counts["train"],
        info.counts.get("val", 0),
        STRATEGIES[job.strategy.name].plans_budget,
    )
    if plan:
        echo(format_plan(job.name, plan))

    state = (RunState.load(run_dir) if resume else None) or RunState()
    if state.records:
        echo(
            f"[{job.name}] resuming after {state.records[-1]['phase']} {state.records[-1]['round']}"
        )

    with Feed(run_dir / EVENTS, Progress(job.name, state.records, echo)) as events:
        result = _trainer(job, info, run_dir, events, started_at).fit()
    checkpoint = Path(result.checkpoint.path)
    write_run_dir(checkpoint, run_dir, job.train.num_workers, source_tagger(run_dir))
    state = RunState.load(run_dir)
    final_dir = run_dir / "final"
    shutil.rmtree(final_dir, ignore_errors=True)
    final_dir.mkdir()
    shutil.copy2(checkpoint / MODEL_FILE, final_dir / MODEL_FILE)
    summary = _summary(job, state, ingest_seconds, time.time() - state.clock_origin, info)
    if plan:
        summary["plan"] = dataclasses.asdict(plan)
    atomic_write_json(run_dir / SUMMARY, summary)
    echo(format_summary(summary))
    return summary


def _trainer(job: JobConfig, info, run_dir: Path, events: str, started_at: float) -> TorchTrainer:
    """The job's one Ray Train run; on the same storage it continues from its latest
    checkpoint (a restarted worker group, or a driver started again with --resume). The
    workers run in folders of their own: every folder they get is named from the root here
    (the events file is, by its Feed)."""
    run_dir = run_dir.resolve()
    spill = job.train.spill_dir
    if spill is not None:
        job = dataclasses.replace(
            job, train=dataclasses.replace(job.train, spill_dir=str(Path(spill).resolve()))
        )
    return TorchTrainer(
        train_job,
        train_loop_config={
            "job": job.to_dict(),
            "run_dir": str(run_dir),
            "data_dir": str(run_dir / "data"),
            "num_classes": info.num_classes,
            "x_shape": list(info.x_shape),
            "x_dtype": info.x_dtype,
            "events": events,
            "started_at": started_at,
        },
        scaling_config=ScalingConfig(num_workers=job.train.num_workers, use_gpu=job.train.use_gpu),
        run_config=RunConfig(
            storage_path=str(run_dir / "train"),
            name="job",
            failure_config=FailureConfig(max_failures=2),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            # Ray Train logs every report at INFO; the driver prints a line per phase.
            logging_config=LoggingConfig(log_level="WARNING"),
        ),
    )


def _summary(
    job: JobConfig, state: RunState, ingest_seconds: float, run_seconds: float, info=None
) -> dict:
    records = state.records
    made = (info.synthetic if info is not None else None) or {"train": 0, "dropped": 0}
    train_rows = info.counts["train"] if info is not None else None
    totals = compute_totals(records)
    phases = {p: sum(r[f"seconds_{p}"] for r in records) for p in ("train", "score", "select")}
    return {
        "name": job.name,
        "strategy": job.strategy.name,
        "rounds": sum(r["phase"] == "round" for r in records),
        "stop_reason": state.stop_reason,
        "val_accuracy": records[-1]["val_accuracy"],
        "val_balanced_accuracy": records[-1]["val_balanced_accuracy"],
        **state.test,
        "subset_size": records[-1]["subset_size"],
        "subset_synthetic": records[-1].get("subset_synthetic", 0),
        "train_rows": {
            "real": None if train_rows is None else train_rows - made["train"],
            "synthetic": made["train"],
            "synthetic_left_out": made["dropped"],
        },
        "peak_rss_mb": max(r.get("peak_rss_mb", 0) for r in [*records, state.test or {}]),
        **totals,
        "wall_seconds": {
            **phases,
            "ingest": ingest_seconds,
            "overhead": sum(overhead_seconds(r) for r in records),
            # the run less its phases: the ingest, Ray Train's start and stop, the workers'
            # reads and DDP set-up, and the test, which every job pays whatever its strategy
            "outside_phases": run_seconds - sum(r["seconds_round"] for r in records),
            "total": run_seconds,
        },
        "per_round": [
            {"subset_synthetic": r.get("subset_synthetic", 0)}
            | {
                k: r[k]
                for k in (
                    "round",
                    "phase",
                    "subset_size",
                    "val_accuracy",
                    "val_balanced_accuracy",
                    "hard_found",
                    "added",
                    "train_sample_passes",
                    "infer_sample_passes",
                    "curve",
                    "seconds_round",
                    "seconds_end",
                )
            }
            | {"seconds_overhead": overhead_seconds(r)}
            | {k: r[k] for k in ("dropped", "remaining", "kept") if k in r}
            for r in records
        ],
    }


def format_plan(name: str, plan: Plan) -> str:
    share = plan.budget / plan.full_compute
    return (
        f"[{name}] budget {plan.budget:.0f} sample-passes ({share:.0%} of full's "
        f"{plan.full_compute:.0f}): {plan.rounds} rounds of {plan.epochs} epochs "
        f"from {plan.initial} rows, +{plan.hard} hard +{plan.reps} representatives a round, "
        f"final phase {plan.final_epochs} epochs; at most {plan.compute:.0f} planned"
    )


def format_summary(summary: dict) -> str:
    w = summary["wall_seconds"]
    return (
        f"[{summary['name']}] {summary['strategy']}: test accuracy "
        f"{summary['test_accuracy']:.4f} (balanced {summary['test_balanced_accuracy']:.4f}), "
        f"subset {subset_cell(summary)}, compute {summary['compute']:.0f} sample-passes "
        f"(train {summary['train_sample_passes']}, infer {summary['infer_sample_passes']}), "
        f"wall {w['total']:.0f}s (train {w['train']:.0f}, score {w['score']:.0f}, "
        f"select {w['select']:.0f}, overhead {w['overhead']:.0f}"
        + (f", start-up and test {w['outside_phases']:.0f})" if "outside_phases" in w else ")")
    )


def source_tagger(run_dir: Path):
    """`tag(batch)`: manifest rows with their `source` ("real", or the job that generated the
    row, from data/provenance), so the manifest counts real and synthetic rows apart; None
    when the data has no generated rows."""
    folder = run_dir / "data" / PROVENANCE_DIR
    if not folder.is_dir():
        return None
    made = pq.read_table(folder, columns=[ID, "source"])
    order = np.argsort(made[ID].to_numpy(), kind="stable")
    made_ids = made[ID].to_numpy()[order]
    tags = made["source"].to_numpy(zero_copy_only=False)[order]

    def tag(batch: pa.RecordBatch) -> pa.RecordBatch:
        ids = batch.column(ID).to_numpy()
        at = np.minimum(np.searchsorted(made_ids, ids), max(len(made_ids) - 1, 0))
        hit = (made_ids[at] == ids) if len(made_ids) else np.zeros(len(ids), bool)
        source = np.where(hit, tags[at] if len(made_ids) else "", "real")
        return batch.append_column("source", pa.array(source.astype(str), pa.string()))

    return tag


def _check_run_dir(run_dir: Path, job: JobConfig, *, resume: bool, overwrite: bool) -> bool:
    """Whether there is a run to resume; refuse to touch an existing run unless asked."""
    if resume and overwrite:
        raise ConfigError("choose one of --resume and --overwrite")
    exists = (run_dir / JOB_COPY).exists()
    if run_dir.exists() and any(run_dir.iterdir()) and not (resume or overwrite):
        raise ConfigError(
            f"run directory {run_dir} already exists: pass --resume to "
            f"continue it or --overwrite to replace it"
        )
    if resume and exists:
        saved = json.loads((run_dir / JOB_COPY).read_text())
        if saved != _comparable(job):
            raise ConfigError(
                f"{run_dir}: --resume with a job that differs from the one this "
                f"run was started with ({run_dir / JOB_COPY})"
            )
    return resume and exists and (run_dir / "data" / "info.json").exists()


def _start_run_dir(run_dir: Path, job: JobConfig):
    """Ingest into a staging folder first: bad input fails before an old run is replaced."""

    def fill(staging: Path):
        info = ingest(job.source, job.seed, staging / "data")
        _check_two_classes(info)
        if job.synthesize.kind != "none":
            info = add_synthetic(job, staging / "data", staging)
        atomic_write_json(staging / JOB_COPY, _comparable(job))
        return info

    return replace_via_staging(run_dir, fill)


def _check_two_classes(info: DataInfo) -> None:
    """A classifier of one class learns nothing: refuse it before any worker starts."""
    counts = info.class_counts["train"]
    present = [c for c, n in enumerate(counts) if n]
    if len(present) < 2:
        held = f"only class {present[0]} ({counts[present[0]]} rows)" if present else "no rows"
        raise DataError(
            f"{info.source}: the train split holds {held}; a classifier needs two "
            f"or more classes: check source.label_column"
        )


def _comparable(job: JobConfig) -> dict:
    return json.loads(json.dumps(job.to_dict()))


def init_ray(num_cpus: int | None = None) -> None:
    """Start (or join) Ray with quiet workers and the deterministic order every job relies on;
    `num_cpus` for a local Ray (default: every CPU)."""
    if not ray.is_initialized():
        # Workers' progress bars and Ray Train's per-epoch log lines would drown the round lines:
        # worker output stays in the session's log folder (a worker's error still reaches the
        # driver as the exception it raised).
        ray.init(
            num_cpus=num_cpus,
            include_dashboard=False,
            configure_logging=False,
            log_to_driver=False,
            runtime_env={"env_vars": RAY_ENV},
        )
    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    # Scoring order decides which samples are found first: keep it deterministic.
    ctx.execution_options.preserve_order = True
    # Ray Data prints a few INFO lines per dataset on the console; its session log keeps them.
    for handler in logging.getLogger("ray.data").handlers:
        if handler.get_name() == "console":
            handler.setLevel(logging.WARNING)
    # ... and a warning that its bars are off, which they are on purpose (raysift draws its own).
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)


def check_workers(num_workers: int, use_gpu: bool) -> None:
    """Stop before any work when the cluster cannot hold the training workers asked for."""
    kind = "GPU" if use_gpu else "CPU"
    have = int(ray.cluster_resources().get(kind, 0))
    if num_workers > have:
        raise ConfigError(
            f"train.num_workers: {num_workers} {kind} workers asked for, the "
            f"cluster has {have} {kind}s"
        )
