"""`raysift transfer JOB.yaml`: adapt a trained model to a new scene without forgetting (M5).

    ingest both scenes -> history library (built under the meta-model, or loaded)
    -> accuracies before -> Ray Train: epochs of transfer steps (`transfer.step.run_epochs`)
    -> accuracies after -> library re-selected under the new model -> final/, summary.json

The run directory holds `transfer.json` (the job as run), `data/new` and `data/old` (the
ingested scenes), `history/` (the library replayed during transfer), `final/` (model.pt in
train.py's format next to the updated library: a next transfer's `meta.checkpoint` and
`history.library`) and `summary.json`. Each scene's train split is learned from (new) or
replayed (old), its test split scores the model; val splits are not used.

The library update after transfer (M5 step 5, our rule): with the herding rule, the members
and the old training split are re-scored under the *transferred* model and herded again, so
the library keeps the samples whose gradients best represent the old task for the model as it
now is, which is what the next transfer replays against. A reservoir library (the control)
ignores gradients and is kept as it was. A loaded library must hold samples of `old_source`
(the same ids), since held ids are not offered twice.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
import ray
import ray.train
import torch
from ray.train import DataConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from raysift.commands import add_parser
from raysift.config import ConfigError, JobConfig
from raysift.data.ingest import DataInfo, ingest, read_split
from raysift.job.rounds import check_workers, init_ray
from raysift.operators.contract import ID, LABEL, features
from raysift.run_state import atomic_write_json, replace_via_staging
from raysift.seeding import derive_seed
from raysift.training.evaluate import BATCH_ROWS, accuracy, array_batches, hit_sums
from raysift.training.saved import MODEL_FILE, load_model
from raysift.transfer.config import MetaConfig, TransferConfig, TransferTrainConfig, load_transfer
from raysift.transfer.history import SETTINGS_FILE, HistoryLibrary, head_gradient_fn
from raysift.transfer.step import CLASSIFIER, Task, run_epochs

JOB_COPY = "transfer.json"
SUMMARY = "summary.json"


def load_meta(meta: MetaConfig) -> torch.nn.Module:
    """The meta-model (or a transferred one: the same checkpoint format), in eval mode."""
    if not (Path(meta.checkpoint) / MODEL_FILE).is_file():
        raise ConfigError(f"meta.checkpoint: {meta.checkpoint} holds no {MODEL_FILE}")
    try:
        return load_model(
            JobConfig(model=meta.model), meta.checkpoint, meta.num_classes, tuple(meta.x_shape)
        )
    except RuntimeError as err:  # the weights do not fit the net the section describes
        raise ConfigError(
            f"meta: {meta.checkpoint}/{MODEL_FILE} does not fit meta.model, "
            f"meta.x_shape and meta.num_classes: {str(err).splitlines()[0]}"
        ) from None


def run_transfer(cfg: TransferConfig, *, overwrite: bool = False, echo=print) -> dict:
    """Run a transfer job to the end; returns (and writes) its summary."""
    started = time.perf_counter()
    run_dir = Path(cfg.run_dir)
    _check_inputs(cfg, run_dir, overwrite)
    meta = load_meta(cfg.meta)
    init_ray()
    check_workers(cfg.train.num_workers, cfg.train.use_gpu)
    seconds = {}

    t = time.perf_counter()
    new_info = _start_run_dir(cfg, run_dir)
    # Each is read twice or more (before and after, library build and update): read once.
    new_train, new_test, old_train, old_test = (
        read_split(run_dir / "data" / scene, split).materialize()
        for scene in ("new", "old")
        for split in ("train", "test")
    )
    seconds["ingest"] = time.perf_counter() - t

    t = time.perf_counter()
    library, origin = _library(cfg, meta, old_train)
    library.save(run_dir / "history")
    held_before = library.ids_.copy()
    seconds["history"] = time.perf_counter() - t
    echo(
        f"[{cfg.name}] {new_info.counts['train']} new samples, history library of "
        f"{len(library)} ({origin}); rule {cfg.train.rule}"
    )

    t = time.perf_counter()
    k = cfg.meta.num_classes
    before = {"new": _accuracy(meta, new_test, k), "old": _accuracy(meta, old_test, k)}
    seconds["evaluate"] = time.perf_counter() - t

    t = time.perf_counter()
    plan = TransferPlan(
        partial(load_meta, cfg.meta),
        save_model,
        CLASSIFIER,
        LABEL,
        cfg.train,
        cfg.history_batch_size,
        cfg.seed,
        str((run_dir / "history").resolve()),
    )
    checkpoint, metrics = fit_transfer(plan, new_train, run_dir / "train")
    seconds["train"] = time.perf_counter() - t
    final = run_dir / "final"
    shutil.rmtree(final, ignore_errors=True)
    final.mkdir()
    shutil.copy2(Path(checkpoint) / MODEL_FILE, final / MODEL_FILE)
    model = load_meta(
        MetaConfig(str(final), cfg.meta.model, cfg.meta.x_shape, cfg.meta.num_classes)
    )

    t = time.perf_counter()
    after = {"new": _accuracy(model, new_test, k), "old": _accuracy(model, old_test, k)}
    seconds["evaluate"] += time.perf_counter() - t

    t = time.perf_counter()
    if library.rule == "herding":
        _offer(library, model, old_train)
    library.save(final)
    seconds["history"] += time.perf_counter() - t
    seconds["total"] = time.perf_counter() - started

    summary = _summary(
        cfg,
        new_info,
        before,
        after,
        metrics,
        library,
        origin,
        int((~np.isin(held_before, library.ids_)).sum()),
        seconds,
        final,
    )
    return finish(run_dir, summary, echo)


def refuse_existing(run_dir: Path, overwrite: bool) -> None:
    if run_dir.exists() and any(run_dir.iterdir()) and not overwrite:
        raise ConfigError(f"run_dir: {run_dir} already exists; pass --overwrite to replace it")


def finish(run_dir: Path, summary: dict, echo, metric="accuracy", label="", digits=4) -> dict:
    """Write the summary, say it in one line (`format_summary`), and return it."""
    atomic_write_json(run_dir / SUMMARY, summary)
    echo(format_summary(summary, metric, label, digits))
    return summary


def _check_inputs(cfg: TransferConfig, run_dir: Path, overwrite: bool) -> None:
    """What can be checked before anything is written or started."""
    refuse_existing(run_dir, overwrite)
    lib = cfg.history.library
    if lib and not (Path(lib) / SETTINGS_FILE).is_file():
        raise ConfigError(f"history.library: {lib} holds no saved library ({SETTINGS_FILE})")
    # The run replaces run_dir, and the workers read the meta-model after that.
    for field, path in (("meta.checkpoint", cfg.meta.checkpoint), ("history.library", lib)):
        if path and Path(path).resolve().is_relative_to(run_dir.resolve()):
            raise ConfigError(
                f"{field}: {path} lies inside run_dir {run_dir}, which the run "
                f"replaces; copy it out or choose another run_dir"
            )


def _start_run_dir(cfg: TransferConfig, run_dir: Path) -> DataInfo:
    """Ingest both scenes into a staging folder: bad input fails before an old run is replaced.

    Returns the new scene's DataInfo."""

    def fill(staging: Path) -> DataInfo:
        for name, field in (("old", "old_source"), ("new", "new_source")):
            info = ingest(getattr(cfg, field), cfg.seed, staging / "data" / name)
            _check_scene(info, cfg.meta, field)
        atomic_write_json(staging / JOB_COPY, cfg.to_dict())
        return info

    return replace_via_staging(run_dir, fill)


def _check_scene(info: DataInfo, meta: MetaConfig, field: str) -> None:
    if tuple(info.x_shape) != tuple(meta.x_shape):
        raise ConfigError(
            f"{field}: features of shape {list(info.x_shape)}, but meta.x_shape is {meta.x_shape}"
        )
    if info.num_classes > meta.num_classes:
        raise ConfigError(
            f"{field}: labels up to {info.num_classes - 1}, but the meta-model "
            f"has meta.num_classes {meta.num_classes}"
        )
    if not info.counts["test"]:
        raise ConfigError(
            f"{field}: the test split is empty; set {field}.test_fraction > 0 or give a test split"
        )


def _library(cfg: TransferConfig, meta: torch.nn.Module, old_train) -> tuple[HistoryLibrary, str]:
    """The loaded library, or one built from the old training split under the meta-model."""
    h = cfg.history
    if h.library:
        lib = HistoryLibrary.load(h.library)
        if lib.num_classes != cfg.meta.num_classes or lib.x_.shape[1:] != tuple(cfg.meta.x_shape):
            raise ConfigError(
                f"history.library: {h.library} holds {lib.num_classes} classes of "
                f"shape {list(lib.x_.shape[1:])}; the meta-model has "
                f"{cfg.meta.num_classes} of shape {cfg.meta.x_shape}"
            )
        return lib, "loaded"
    lib = HistoryLibrary(h.per_class, cfg.meta.num_classes, h.rule, seed=cfg.seed)
    _offer(lib, meta, old_train)
    return lib, "built"


def _offer(library: HistoryLibrary, model: torch.nn.Module, dataset) -> None:
    grad_fn = head_gradient_fn(model)
    for batch in dataset.iter_batches(batch_size=4096, batch_format="numpy"):
        library.update(batch, grad_fn)


def _accuracy(model: torch.nn.Module, dataset, num_classes: int) -> float:
    device = next(model.parameters()).device
    batches = (
        batch
        for rows in dataset.iter_batches(batch_size=BATCH_ROWS, batch_format="numpy")
        for batch in array_batches(features(rows), rows[LABEL], device)
    )
    return accuracy(hit_sums(model, batches, num_classes))


@dataclass(frozen=True)
class TransferPlan:
    """What every Ray Train worker of a transfer needs; pickled into the loop's config."""

    load_model: Callable[[], torch.nn.Module]  # the model to start from, built on the worker
    save_model: Callable[[torch.nn.Module, Path], None]  # writes it into a checkpoint folder
    task: Task
    target: str  # the column the new rows train against: `label`, or a detector's `target`
    train: TransferTrainConfig
    history_batch_size: int
    seed: int
    library: str | None  # a saved HistoryLibrary's folder; None with rule finetune


def save_model(model: torch.nn.Module, folder: Path) -> None:
    """A classifier checkpoint in train.py's format."""
    torch.save({"model": model.state_dict()}, Path(folder) / MODEL_FILE)


def fit_transfer(plan: TransferPlan, new_train, storage: Path) -> tuple[str, dict]:
    """One Ray Train run of `run_epochs` over `new_train`; returns its checkpoint folder and
    its metrics (the step statistics)."""
    train = plan.train
    trainer = TorchTrainer(
        _transfer_loop,
        train_loop_config={"plan": plan},
        scaling_config=ScalingConfig(num_workers=train.num_workers, use_gpu=train.use_gpu),
        run_config=RunConfig(
            storage_path=str(Path(storage).resolve()),
            name="transfer",
            failure_config=FailureConfig(max_failures=2),
        ),
        # Materialised before fit, as in train.py: the workers may hold every CPU.
        datasets={"new": new_train.materialize()},
        dataset_config=DataConfig(datasets_to_split=[]),
    )
    result = trainer.fit()
    return result.checkpoint.path, dict(result.metrics)


def _transfer_loop(config: dict) -> None:
    """Every worker: all new rows and the library, its share of each batch (run_epochs).

    Every worker reads all new rows into memory: the transfers here are a few thousand small
    samples at most. A restarted worker group starts again from the plan's model; the seeds
    make it end the same.
    """
    plan: TransferPlan = config["plan"]
    rank = ray.train.get_context().get_world_rank()
    torch.set_num_threads(plan.train.threads_per_worker)
    torch.manual_seed(derive_seed(plan.seed, "transfer", rank))
    _, y_new, x_new = collect_rows(ray.train.get_dataset_shard("new"), plan.target)
    library = HistoryLibrary.load(plan.library) if plan.library else None
    model = plan.load_model().to(ray.train.torch.get_device())
    stats = run_epochs(
        model, x_new, y_new, library, plan.train, plan.history_batch_size, plan.seed, plan.task
    )
    with tempfile.TemporaryDirectory() as d:
        checkpoint = None
        if rank == 0:
            plan.save_model(model, Path(d))
            checkpoint = ray.train.Checkpoint.from_directory(d)
        ray.train.report({k: v for k, v in stats.items() if v is not None}, checkpoint=checkpoint)


def _summary(
    cfg: TransferConfig,
    new_info: DataInfo,
    before: dict,
    after: dict,
    metrics: dict,
    library: HistoryLibrary,
    origin: str,
    replaced: int,
    seconds: dict,
    final: Path,
) -> dict:
    new, hist = metrics["new_sample_passes"], metrics["history_sample_passes"]
    return {
        "name": cfg.name,
        "rule": cfg.train.rule,
        "new_samples": new_info.counts["train"],
        "epochs": cfg.train.epochs,
        "steps": metrics["steps"],
        "new_scene_accuracy": {"before": before["new"], "after": after["new"]},
        "old_scene_accuracy": {"before": before["old"], "after": after["old"]},
        "forgetting": before["old"] - after["old"],
        "train_sample_passes": {"new": new, "history": hist, "total": new + hist},
        "mixing": {
            k: metrics.get(k) for k in ("mean_cosine", "mean_w_t", "mean_w_h", "conflict_steps")
        },
        "history": {
            "origin": origin,
            "rule": library.rule,
            "per_class": library.per_class,
            "size": len(library),
            "replaced_after_transfer": replaced,
        },
        "model": str(final / MODEL_FILE),
        "library": str(final),
        "wall_seconds": seconds,
    }


def format_summary(s: dict, metric: str = "accuracy", label: str = "", digits: int = 4) -> str:
    """One line: the new and the old scene's `metric` before and after, the forgetting, the
    cost (a classifier's accuracy; a detector's "map50", labelled "mAP@0.5 ")."""
    new, old = s[f"new_scene_{metric}"], s[f"old_scene_{metric}"]

    def pair(p: dict) -> str:
        return f"{p['before']:.{digits}f} -> {p['after']:.{digits}f}"

    return (
        f"[{s['name']}] {s['rule']}: new scene {label}{pair(new)}, old scene {pair(old)} "
        f"(forgetting {s['forgetting']:+.{digits}f}); {s['steps']} steps, "
        f"{s['train_sample_passes']['total']} sample-passes, "
        f"{s['wall_seconds']['total']:.0f}s -> {s['model']}"
    )


def add_job_command(subparsers, name: str, load: Callable, run: Callable) -> None:
    """Register `raysift NAME JOB.yaml [--overwrite]`, which runs `run(load(JOB.yaml))`."""
    p = add_parser(subparsers, name)
    p.add_argument("job", help=f"the {name} job file")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run")
    p.set_defaults(func=lambda args: run(load(args.job), overwrite=args.overwrite))


def add_commands(subparsers) -> None:
    """Register `transfer` on the CLI's subparsers."""
    add_job_command(subparsers, "transfer", load_transfer, run_transfer)


def collect_rows(shard, target: str = LABEL) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All rows of a dataset shard as (ids, targets, x), ordered by id: the targets are the
    `target` column (the labels by default). Holds the whole shard in memory."""
    ids, labels, xs = [], [], []
    for batch in shard.iter_batches(batch_size=4096, batch_format="numpy"):
        ids.append(batch[ID])
        labels.append(batch[target])
        xs.append(features(batch))
    ids, labels, xs = np.concatenate(ids), np.concatenate(labels), np.concatenate(xs)
    order = np.argsort(ids, kind="stable")
    return ids[order], labels[order], xs[order]
