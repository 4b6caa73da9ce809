"""The driver: from a job to a trained model, a manifest and a summary of what it cost.

    ingest -> initial subset -> [train round -> stop? -> strategy adds samples] ... -> final
    phase -> test -> summary.json

Every round ends with an atomic save of the run state, so `resume=True` continues from the last
finished round and gives the same manifest and metrics as an uninterrupted run.
"""
from __future__ import annotations

import functools
import json
import logging
import shutil
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import ray
from ray.data import DataContext

from operators.contract import ID, LABEL
from operators.predict import score

from .config import ConfigError, JobConfig
from .ingest import ingest, load_info, read_split
from .run_state import DROPPED, RunState, atomic_write_json, replace_via_staging
from .strategies import Full, RoundContext, make_strategy
from .train import balanced_accuracy, load_model, train_round

SUMMARY = "summary.json"
JOB_COPY = "job.json"


def run_job(job: JobConfig, *, resume: bool = False, overwrite: bool = False,
            echo=print) -> dict:
    """Run (or resume) a job to the end and return its summary."""
    started = time.perf_counter()
    run_dir = Path(job.run_dir)
    resume = _check_run_dir(run_dir, job, resume=resume, overwrite=overwrite)
    init_ray()
    _check_resources(job)

    t = time.perf_counter()
    data_dir = run_dir / "data"
    info = load_info(data_dir) if resume else _start_run_dir(run_dir, job)
    ingest_seconds = time.perf_counter() - t
    train, val = read_split(data_dir, "train"), read_split(data_dir, "val")
    echo(f"[{job.name}] data: {info.counts} samples, {info.num_classes} classes, "
         f"x {tuple(info.x_shape)} ({info.source}); strategy {job.strategy.name}")

    strategy = make_strategy(job.strategy.name)
    state = RunState.load(run_dir) if resume else None
    if state is None:
        state = RunState()
        first = strategy.initial(job, train)
        state.add(first.ids, first.reasons, 0)
        state.save(run_dir)
        _echo_notes(job, first.notes, echo)
    elif state.records:
        echo(f"[{job.name}] resuming after round {state.records[-1]['round']}")

    while state.stop_reason is None:
        _one_round(job, strategy, state, train, val, info, run_dir, echo)

    final_epochs = 0 if isinstance(strategy, Full) else job.train.final_epochs
    if final_epochs and not any(r["phase"] == "final" for r in state.records):
        record = _train_and_record(job, state, train, val, info, run_dir, phase="final",
                                   round_index=len(state.records), epochs=final_epochs,
                                   schedule="onecycle")
        state.records.append(record)
        state.checkpoint = record["checkpoint"]  # the model shipped and tested is the last trained
        state.save(run_dir)
        echo(_round_line(record, state.records))

    test = _evaluate(job, state.checkpoint, read_split(data_dir, "test"), info)
    final_dir = run_dir / "final"
    shutil.rmtree(final_dir, ignore_errors=True)
    shutil.copytree(state.checkpoint, final_dir)
    summary = _summary(job, state, test, ingest_seconds, time.perf_counter() - started)
    atomic_write_json(run_dir / SUMMARY, summary)
    state.finished = True
    state.save(run_dir)
    echo(format_summary(summary))
    return summary


def _one_round(job, strategy, state: RunState, train, val, info, run_dir: Path, echo) -> None:
    r = state.next_round
    record = _train_and_record(job, state, train, val, info, run_dir, phase="round",
                               round_index=r, epochs=strategy.epochs(job),
                               schedule="onecycle")
    totals = compute_totals(state.records + [record])
    s = job.strategy
    stop = None
    if isinstance(strategy, Full):
        stop = "full data trained"
    elif s.target_val_accuracy is not None and record["val_accuracy"] >= s.target_val_accuracy:
        stop = f"val accuracy {record['val_accuracy']:.4f} >= target {s.target_val_accuracy}"
    elif s.budget is not None and totals["compute"] >= s.budget:
        stop = f"compute {totals['compute']:.0f} >= budget {s.budget:.0f}"
    elif r + 1 >= s.max_rounds:
        stop = f"max_rounds {s.max_rounds} reached"
    elif s.patience is not None and _stalled(state.records + [record], s.patience):
        stop = f"no val gain in {s.patience} rounds"
    if stop is None:
        factory = functools.partial(load_model, job, record["checkpoint"], info.num_classes,
                                    tuple(info.x_shape))
        ctx = RoundContext(job=job, train=train, subset_ids=state.subset_ids(),
                           manifest_ids=state.manifest_ids(), round_index=r,
                           model_factory=factory, progress=_progress(f"round {r} scoring"))
        added = strategy.next(ctx)
        record["hard_found"] = added.stats.get("hard_found", 0)
        record["infer_sample_passes"] += added.stats.get("infer_sample_passes", 0)
        record["seconds_score"] = added.stats.get("seconds_score", 0.0)
        record["seconds_select"] = added.stats.get("seconds_select", 0.0)
        record["added"] = int(len(added.ids))
        if added.remaining is not None:
            record.update(dropped=int(len(added.dropped)),
                          remaining=sum(added.remaining.values()),
                          remaining_per_class={str(c): n for c, n in added.remaining.items()})
        state.add(added.dropped, DROPPED, r)  # the model of round r classifies them correctly
        stop = added.stop_reason
        if stop is None:
            state.add(added.ids, added.reasons, r + 1)
        _echo_notes(job, added.notes, echo)
    state.records.append(record)
    state.checkpoint = record["checkpoint"]
    state.next_round = r + 1
    state.stop_reason = stop
    state.save(run_dir)
    echo(_round_line(record, state.records) + _drop_counts(record))
    if stop:
        echo(f"[{job.name}] stop: {stop}")


def _drop_counts(record: dict) -> str:
    """The round line's tail for a strategy that drops learned samples (M1); empty otherwise."""
    if "remaining" not in record:
        return ""
    return f"  dropped {record['dropped']}  remaining {record['remaining']}"


def _echo_notes(job: JobConfig, notes: list[str], echo) -> None:
    for note in notes:
        echo(f"[{job.name}] {note}")


def _train_and_record(job, state: RunState, train, val, info, run_dir: Path, *, phase: str,
                      round_index: int, epochs: int, schedule: str) -> dict:
    storage = run_dir / "train"
    # A round cut short by a crash is retrained from its start, so it ends exactly as before.
    shutil.rmtree(storage / f"round_{round_index:03d}", ignore_errors=True)
    ids = state.subset_ids()
    subset = train.map_batches(_keep_ids, fn_kwargs={"keep": np.sort(ids)},
                               batch_size=None, batch_format="numpy")
    with _epoch_bar(f"{_label(phase, round_index)} training", epochs) as on_epoch:
        result = train_round(job, subset, val, round_index=round_index, epochs=epochs,
                             schedule=schedule, init_checkpoint=state.checkpoint,
                             storage=storage, num_classes=info.num_classes,
                             x_shape=info.x_shape, on_epoch=on_epoch)
    return {
        "round": round_index, "phase": phase, "subset_size": int(len(ids)), "epochs": epochs,
        "val_accuracy": result.val_accuracy,
        "val_balanced_accuracy": result.val_balanced_accuracy, "val_loss": result.val_loss,
        "curve": result.curve,
        "train_sample_passes": result.train_sample_passes,
        "infer_sample_passes": result.val_sample_passes,
        "hard_found": 0, "added": 0, "checkpoint": result.checkpoint,
        "seconds_train": result.seconds, "seconds_score": 0.0, "seconds_select": 0.0,
    }


def _keep_ids(batch: dict, keep: np.ndarray) -> dict:
    mask = np.isin(batch[ID], keep)
    return {k: v[mask] for k, v in batch.items()}


def _stalled(records: list, patience: int) -> bool:
    accs = [r["val_accuracy"] for r in records if r["phase"] == "round"]
    return len(accs) > patience and max(accs[-patience:]) <= max(accs[:-patience])


def compute_totals(records: list) -> dict:
    """Sample-passes of `records` (dicts with train/infer_sample_passes); `compute` counts an
    inference pass as a third of a training pass (forward only, no backward)."""
    train = sum(r["train_sample_passes"] for r in records)
    infer = sum(r["infer_sample_passes"] for r in records)
    return {"train_sample_passes": train, "infer_sample_passes": infer,
            "compute": train + infer / 3}


def _evaluate(job: JobConfig, checkpoint: str, test, info) -> dict:
    """Test accuracy and balanced accuracy (mean per-class recall) of the final model."""
    factory = functools.partial(load_model, job, checkpoint, info.num_classes, tuple(info.x_shape))
    labels, correct = [], []
    for batch in score(test, factory, batch_size=job.score.batch_size,
                       num_actors=job.score.num_actors,
                       use_gpu=job.score.use_gpu).iter_batches(batch_size=None,
                                                               batch_format="numpy"):
        labels.append(batch[LABEL])
        correct.append(batch["correct"])
    labels, correct = np.concatenate(labels), np.concatenate(correct).astype(bool)
    per_class = (np.bincount(labels, weights=correct, minlength=info.num_classes),
                 np.bincount(labels, minlength=info.num_classes))
    return {"test_accuracy": float(correct.mean()),
            "test_balanced_accuracy": balanced_accuracy(*per_class),
            "test_samples": int(len(labels))}


def _summary(job: JobConfig, state: RunState, test: dict, ingest_seconds: float,
             session_seconds: float) -> dict:
    records = state.records
    totals = compute_totals(records)
    phases = {p: sum(r[f"seconds_{p}"] for r in records) for p in ("train", "score", "select")}
    return {
        "name": job.name, "strategy": job.strategy.name,
        "rounds": sum(r["phase"] == "round" for r in records),
        "stop_reason": state.stop_reason,
        "val_accuracy": records[-1]["val_accuracy"],
        "val_balanced_accuracy": records[-1]["val_balanced_accuracy"],
        **test,
        "subset_size": records[-1]["subset_size"],
        **totals,
        "wall_seconds": {**phases, "ingest": ingest_seconds,
                         "total": max(session_seconds, sum(phases.values()))},
        "per_round": [{k: r[k] for k in ("round", "phase", "subset_size", "val_accuracy",
                                         "val_balanced_accuracy", "hard_found", "added",
                                         "train_sample_passes", "infer_sample_passes", "curve")}
                      | {k: r[k] for k in ("dropped", "remaining") if k in r} for r in records],
    }


def format_summary(summary: dict) -> str:
    w = summary["wall_seconds"]
    return (f"[{summary['name']}] {summary['strategy']}: test accuracy "
            f"{summary['test_accuracy']:.4f} (balanced {summary['test_balanced_accuracy']:.4f}), "
            f"subset {summary['subset_size']}, compute {summary['compute']:.0f} sample-passes "
            f"(train {summary['train_sample_passes']}, infer {summary['infer_sample_passes']}), "
            f"wall {w['total']:.0f}s (train {w['train']:.0f}, score {w['score']:.0f}, "
            f"select {w['select']:.0f})")


def _label(phase: str, round_index: int) -> str:
    return "final" if phase == "final" else f"round {round_index}"


def _round_line(record: dict, records: list) -> str:
    totals = compute_totals(records)
    label = _label(record["phase"], record["round"])
    return (f"  {label:>8}: subset {record['subset_size']:>7}  val acc "
            f"{record['val_accuracy']:.4f} (balanced {record['val_balanced_accuracy']:.4f})  "
            f"hard found {record['hard_found']:>5}  "
            f"compute so far {totals['compute']:>10.0f}  ({record['seconds_train']:.0f}s train)")


def _progress(desc: str):
    """A progress bar on stderr for long scans: rows scored and mispredictions found."""
    from tqdm import tqdm

    bar = tqdm(desc=desc, unit=" rows", file=sys.stderr, leave=False, mininterval=1.0,
               disable=None)
    state = {"seen": 0}

    def update(seen: int, found: int) -> None:
        bar.update(seen - state["seen"])
        bar.set_postfix(hard=found, refresh=False)
        state["seen"] = seen

    return update


@contextmanager
def _epoch_bar(desc: str, epochs: int):
    """A progress bar on stderr over a round's epochs, with the last validation accuracy; None
    (and no metrics sent from the workers) where stderr is not a terminal."""
    from tqdm import tqdm

    with tqdm(desc=desc, total=epochs, unit=" epoch", file=sys.stderr, leave=False,
              disable=None) as bar:
        def show(metrics: dict) -> None:
            bar.n = metrics["epoch"] + 1  # an epoch redone after a worker restart counts once
            if "val_accuracy" in metrics:
                bar.set_postfix(val_acc=f"{metrics['val_accuracy']:.4f}", refresh=False)
            bar.refresh()

        yield None if bar.disable else show


def _check_run_dir(run_dir: Path, job: JobConfig, *, resume: bool, overwrite: bool) -> bool:
    """Whether there is a run to resume; refuse to touch an existing run unless asked."""
    if resume and overwrite:
        raise ConfigError("choose one of --resume and --overwrite")
    exists = (run_dir / JOB_COPY).exists()
    if run_dir.exists() and any(run_dir.iterdir()) and not (resume or overwrite):
        raise ConfigError(f"run directory {run_dir} already exists: pass --resume to "
                          f"continue it or --overwrite to replace it")
    if resume and exists:
        saved = json.loads((run_dir / JOB_COPY).read_text())
        if saved != _comparable(job):
            raise ConfigError(f"{run_dir}: --resume with a job that differs from the one this "
                              f"run was started with ({run_dir / JOB_COPY})")
    return resume and exists and (run_dir / "data" / "info.json").exists()


def _start_run_dir(run_dir: Path, job: JobConfig):
    """Ingest into a staging folder first: bad input fails before an old run is replaced."""
    def fill(staging: Path):
        info = ingest(job.source, job.seed, staging / "data")
        atomic_write_json(staging / JOB_COPY, _comparable(job))
        return info

    return replace_via_staging(run_dir, fill)


def _comparable(job: JobConfig) -> dict:
    return json.loads(json.dumps(job.to_dict()))


def init_ray() -> None:
    """Start (or join) Ray with quiet workers and the deterministic order every job relies on."""
    if not ray.is_initialized():
        # Workers' progress bars and Ray Train's per-epoch log lines would drown the round lines:
        # worker output stays in the session's log folder (a worker's error still reaches the
        # driver as the exception it raised).
        ray.init(include_dashboard=False, configure_logging=False, log_to_driver=False,
                 runtime_env={"env_vars": {"RAY_DATA_DISABLE_PROGRESS_BARS": "1"}})
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


def _check_resources(job: JobConfig) -> None:
    """Stop before any work when the cluster cannot hold the workers asked for."""
    res = ray.cluster_resources()
    cpus, gpus = int(res.get("CPU", 0)), int(res.get("GPU", 0))
    t = job.train
    if t.use_gpu and t.num_workers > gpus:
        raise ConfigError(f"train.num_workers: {t.num_workers} GPU workers asked for, "
                          f"the cluster has {gpus} GPUs")
    if not t.use_gpu and t.num_workers > cpus:
        raise ConfigError(f"train.num_workers: {t.num_workers} workers asked for, "
                          f"the cluster has {cpus} CPUs")
    if job.score.use_gpu and job.score.num_actors > gpus:
        raise ConfigError(f"score.num_actors: {job.score.num_actors} GPU actors asked for, "
                          f"the cluster has {gpus} GPUs")
    if job.score.num_actors > max(cpus, 1):
        raise ConfigError(f"score.num_actors: {job.score.num_actors} actors asked for, "
                          f"the cluster has {cpus} CPUs")
