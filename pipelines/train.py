"""One training round as a Ray Train `TorchTrainer` run (DDP across workers).

The subset is small by design, so every worker reads all of it once per round, orders it by id
and takes its rank's slice of a permutation seeded by (seed, round, epoch): the same config gives
the same batches, and a restarted worker group resumes from its last epoch checkpoint with the
same numbers it would have had. Each step's loss comes from `augmentation.batch_loss` (the job's
augment and mixup sections) with a generator seeded by (seed, round, epoch, step, rank).

Strategy `infobatch` trains each epoch on the rows the InfoBatch rule keeps (pipelines/infobatch.py)
with their weights; every rank draws the same rows from the same scores, and the scores travel in
the epoch checkpoint. Its shorter epochs cover the same stretch of the one-cycle curve as full ones.

Validation reports accuracy and balanced accuracy (mean per-class recall) after the last epoch, or
after every epoch with `train.val_every_epoch` (counted in the val sample-passes), as a curve.
"""
from __future__ import annotations

import os
import queue
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import ray
import ray.train
import torch
import torch.distributed as dist
import torch.nn.functional as F
from ray.train import (CheckpointConfig, DataConfig, FailureConfig, LoggingConfig, RunConfig,
                       ScalingConfig)
from ray.train.torch import TorchTrainer
from ray.util.queue import Queue

from operators.contract import ID, LABEL, X

from .augmentation import batch_generator, batch_loss, sample_losses
from .config import JobConfig, from_dict
from .infobatch import initial_scores, plan_epoch, update_scores
from .models import build_model
from .seeding import derive_seed

MODEL_FILE = "model.pt"


@dataclass
class RoundResult:
    checkpoint: str  # directory holding model.pt
    val_accuracy: float
    val_balanced_accuracy: float
    val_loss: float
    train_sample_passes: int
    val_sample_passes: int
    seconds: float
    # per validated epoch: epoch, train_sample_passes and val_sample_passes (so far this round),
    # val_accuracy, val_balanced_accuracy
    curve: list[dict]


def train_round(job: JobConfig, subset, val, *, round_index: int, epochs: int,
                schedule: str, init_checkpoint: str | None, storage: Path,
                num_classes: int, x_shape,
                on_epoch: Callable[[dict], None] | None = None) -> RoundResult:
    """Train `epochs` epochs on `subset`, starting from `init_checkpoint`, and validate.
    `on_epoch`, if given, is called on the driver with each finished epoch's metrics (epoch,
    epochs, train_sample_passes and, where validated, val_accuracy ...) while training runs."""
    start = time.perf_counter()
    with _EpochFeed(on_epoch) if on_epoch else nullcontext() as feed:
        loop_config = {
            "job": job.to_dict(), "round": round_index, "epochs": epochs, "schedule": schedule,
            "init_checkpoint": init_checkpoint, "num_classes": num_classes,
            "x_shape": list(x_shape), "epoch_feed": feed,
        }
        trainer = TorchTrainer(
            _train_loop,
            train_loop_config=loop_config,
            scaling_config=ScalingConfig(num_workers=job.train.num_workers,
                                         use_gpu=job.train.use_gpu),
            run_config=RunConfig(
                storage_path=str(Path(storage).resolve()), name=f"round_{round_index:03d}",
                failure_config=FailureConfig(max_failures=2),
                checkpoint_config=CheckpointConfig(num_to_keep=1),
                # Ray Train logs every report at INFO; the driver prints a line per round.
                logging_config=LoggingConfig(log_level="WARNING"),
            ),
            # Materialised before fit: on a small machine the workers hold every CPU, so the
            # datasets must not need tasks of their own while training runs.
            datasets={"train": subset.materialize(), "val": val.materialize()},
            dataset_config=DataConfig(datasets_to_split=[]),
        )
        result = trainer.fit()
    metrics = result.metrics
    return RoundResult(
        checkpoint=result.checkpoint.path,
        val_accuracy=float(metrics["val_accuracy"]),
        val_balanced_accuracy=float(metrics["val_balanced_accuracy"]),
        val_loss=float(metrics["val_loss"]),
        train_sample_passes=int(metrics["train_sample_passes"]),
        val_sample_passes=int(metrics["val_sample_passes"]),
        seconds=time.perf_counter() - start, curve=list(metrics["curve"]),
    )


class _EpochFeed:
    """Epoch metrics from rank 0 to the driver while `fit` blocks: an actor queue that needs no
    CPU (the workers may hold them all), drained into `show` by a daemon thread."""

    def __init__(self, show: Callable[[dict], None]):
        self._show = show
        self._queue = Queue(actor_options={"num_cpus": 0})
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._drain, daemon=True)

    def __enter__(self) -> Queue:
        self._thread.start()
        return self._queue

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()
        self._queue.shutdown()

    def _drain(self) -> None:
        while True:  # stops only once the queue is empty after `fit` returned
            try:
                self._show(self._queue.get(timeout=0.5))
            except queue.Empty:
                if self._done.is_set():
                    return


def load_model(job: JobConfig, checkpoint_dir: str, num_classes: int, x_shape) -> torch.nn.Module:
    model = build_model(job.model, x_shape, num_classes)
    state = torch.load(Path(checkpoint_dir) / MODEL_FILE, map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    return model.eval()


def collect_rows(shard) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All rows of a dataset shard as (ids, labels, x), ordered by id."""
    ids, labels, xs = [], [], []
    for batch in shard.iter_batches(batch_size=4096, batch_format="numpy"):
        ids.append(batch[ID])
        labels.append(batch[LABEL])
        xs.append(np.asarray(batch[X], dtype=np.float32))
    ids, labels, xs = np.concatenate(ids), np.concatenate(labels), np.concatenate(xs)
    order = np.argsort(ids, kind="stable")
    return ids[order], labels[order], xs[order]


def _rank_slice(rows: torch.Tensor, seed: int, rank: int,
                world: int) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's share of a seeded permutation of `rows`, padded by wrap-around so ranks step
    together, and a mask of its entries that are not padding (each row's one own entry)."""
    n = len(rows)
    perm = rows[torch.randperm(n, generator=torch.Generator().manual_seed(seed))]
    per_rank = -(-n // world)
    perm = torch.cat([perm, perm[: per_rank * world - n]])
    return perm[rank::world], torch.arange(len(perm))[rank::world] < n


def _train_loop(config: dict) -> None:
    job = from_dict(config["job"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(job.train.threads_per_worker)
    device = ray.train.torch.get_device()
    round_index, epochs, num_classes = config["round"], config["epochs"], config["num_classes"]

    _, y_train, x_train = collect_rows(ray.train.get_dataset_shard("train"))
    _, y_val, x_val = collect_rows(ray.train.get_dataset_shard("val"))
    x_train, y_train = torch.from_numpy(x_train).to(device), torch.from_numpy(y_train).to(device)
    n = len(y_train)
    infobatch = job.strategy.name == "infobatch"

    torch.manual_seed(derive_seed(job.seed, "init", round_index))
    model = build_model(job.model, config["x_shape"], num_classes)
    if config["init_checkpoint"]:
        state = torch.load(Path(config["init_checkpoint"]) / MODEL_FILE, map_location="cpu",
                           weights_only=True)
        model.load_state_dict(state["model"])
    model = ray.train.torch.prepare_model(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=job.train.lr,
                                  weight_decay=job.train.weight_decay)
    per_worker_batch = max(1, job.train.batch_size // world)
    steps_per_epoch = -(-(-(-n // world)) // per_worker_batch)
    scheduler = _scheduler(optimizer, config["schedule"], job.train.lr, epochs * steps_per_epoch)

    first_epoch = 0
    # What the round has done so far: a restarted worker group carries on with the same numbers.
    progress = {"train_sample_passes": 0, "val_sample_passes": 0, "curve": [],
                "scores": initial_scores(n) if infobatch else None}
    resumed = ray.train.get_checkpoint()
    if resumed:  # a restarted worker group continues from its last finished epoch
        with resumed.as_directory() as d:
            state = torch.load(Path(d) / MODEL_FILE, map_location="cpu", weights_only=True)
        _unwrap(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        first_epoch = state["epoch"] + 1
        progress = {k: state[k] for k in progress}

    for epoch in range(first_epoch, epochs):
        model.train()
        rows, weights = _epoch_rows(job, progress["scores"], n, round_index, epoch, epochs)
        weights = weights.to(device, torch.float32)
        order, own = _rank_slice(rows, derive_seed(job.seed, "epoch", round_index, epoch),
                                 rank, world)
        order, own = order.to(device), own.to(device)
        steps = -(-len(order) // per_worker_batch)
        losses_seen = torch.zeros(n if infobatch else 0, dtype=torch.float64, device=device)
        for step, i in enumerate(range(0, len(order), per_worker_batch)):
            idx = order[i:i + per_worker_batch]
            generator = batch_generator(job.seed, round_index, epoch, step, rank, device)
            if infobatch:
                losses = sample_losses(model, x_train[idx], y_train[idx], job, generator)
                keep = own[i:i + per_worker_batch]  # a padded duplicate does not score its row
                losses_seen[idx[keep]] = losses.detach()[keep].double()
                loss = (weights[idx] * losses).mean()
            else:
                loss = batch_loss(model, x_train[idx], y_train[idx], num_classes, job, generator)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            _advance_schedule(scheduler, epoch, step, steps, steps_per_epoch)
        progress["train_sample_passes"] += len(order) * world  # padded rows are trained on too
        if infobatch:  # each kept row has one own entry on one rank: the sum is its loss
            losses_seen = _sum_over_ranks(losses_seen).cpu()
            progress["scores"] = update_scores(progress["scores"], rows, losses_seen[rows])
        last = epoch == epochs - 1
        metrics = {"epoch": epoch, "train_sample_passes": progress["train_sample_passes"]}
        if last or job.train.val_every_epoch:
            val = _validate(model, x_val, y_val, num_classes, rank, world, device)
            progress["val_sample_passes"] += val["val_sample_passes"]
            progress["curve"].append({
                "epoch": epoch, "train_sample_passes": progress["train_sample_passes"],
                "val_sample_passes": progress["val_sample_passes"],
                "val_accuracy": val["val_accuracy"],
                "val_balanced_accuracy": val["val_balanced_accuracy"]})
            metrics.update(val)
        metrics["val_sample_passes"] = progress["val_sample_passes"]
        if rank == 0 and config["epoch_feed"] is not None:
            config["epoch_feed"].put({**metrics, "epochs": epochs})
        if last:
            metrics["curve"] = progress["curve"]
        _report(model, optimizer, scheduler, epoch, metrics, rank, progress)


def _epoch_rows(job: JobConfig, scores, n: int, round_index: int, epoch: int,
                epochs: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows this epoch trains on, weight of every row): all with weight 1, or InfoBatch's pick,
    drawn alike on every rank (same scores, same seed)."""
    if job.strategy.name != "infobatch":
        return torch.arange(n), torch.ones(n)
    s = job.strategy
    generator = torch.Generator().manual_seed(derive_seed(job.seed, "infobatch", round_index,
                                                          epoch))
    return plan_epoch(scores, epoch, epochs, s.prune_ratio, s.anneal_delta, generator)


def _advance_schedule(scheduler, epoch: int, step: int, steps: int, steps_per_epoch: int) -> None:
    """Move the schedule to where a full epoch would be at the same fraction of the epoch.

    A full epoch steps it once per step; an epoch that InfoBatch shortened to `steps` steps
    covers the same stretch of the one-cycle curve, as the InfoBatch authors' recipe does.
    """
    target = epoch * steps_per_epoch + (step + 1) * steps_per_epoch // steps
    while scheduler.last_epoch < target:
        scheduler.step()


def _sum_over_ranks(t: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
    return t


def _scheduler(optimizer, schedule: str, lr: float, total_steps: int):
    if schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr,
                                                   total_steps=max(1, total_steps))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)


def _validate(model, x_val, y_val, num_classes: int, rank: int, world: int, device) -> dict:
    """Each rank scores its slice of the validation set; sums and per-class counts are
    all-reduced. Balanced accuracy is the mean recall over the classes present."""
    model.eval()
    xs = torch.from_numpy(x_val[rank::world]).to(device)
    ys = torch.from_numpy(y_val[rank::world]).to(device)
    with torch.no_grad():
        logits = torch.cat([model(xs[i:i + 4096]) for i in range(0, len(xs), 4096)]) \
            if len(xs) else torch.zeros((0, num_classes), device=device)
        hits = (logits.argmax(1) == ys).double()
        per_class = torch.zeros((2, num_classes), dtype=torch.float64, device=device)
        per_class[0].index_add_(0, ys, hits)
        per_class[1].index_add_(0, ys, torch.ones_like(hits))
        loss = F.cross_entropy(logits, ys, reduction="sum").double().reshape(1)
    sums = _sum_over_ranks(torch.cat([loss, per_class.flatten()])).cpu()
    correct, count = sums[1:].view(2, num_classes)
    n = float(count.sum())
    return {"val_accuracy": float(correct.sum()) / max(n, 1),
            "val_balanced_accuracy": balanced_accuracy(correct, count),
            "val_loss": float(sums[0]) / max(n, 1), "val_sample_passes": int(n)}


def balanced_accuracy(correct, count) -> float:
    """Mean recall over the classes with samples (`correct` and `count` per class, as NumPy
    arrays or tensors); 0 for none."""
    present = count > 0
    if not present.any():
        return 0.0
    return float((correct[present] / count[present]).mean())


def _unwrap(model):
    return getattr(model, "module", model)


def _report(model, optimizer, scheduler, epoch: int, metrics: dict, rank: int,
            progress: dict) -> None:
    with tempfile.TemporaryDirectory() as d:
        checkpoint = None
        if rank == 0:
            torch.save({"model": _unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(), "epoch": epoch, **progress},
                       os.path.join(d, MODEL_FILE))
            checkpoint = ray.train.Checkpoint.from_directory(d)
        ray.train.report(metrics, checkpoint=checkpoint)
