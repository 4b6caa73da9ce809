"""One training round as a Ray Train `TorchTrainer` run (DDP across workers).

The subset is small by design, so every worker reads all of it once per round, orders it by id
and takes its rank's slice of a permutation seeded by (seed, round, epoch): the same config gives
the same batches, and a restarted worker group resumes from its last epoch checkpoint with the
same numbers it would have had. Each step's loss comes from `augmentation.batch_loss` (the job's
augment and mixup sections) with a generator seeded by (seed, round, epoch, step, rank).
"""
from __future__ import annotations

import os
import tempfile
import time
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

from operators.contract import ID, LABEL, X

from .augmentation import batch_generator, batch_loss
from .config import JobConfig, from_dict
from .models import build_model
from .seeding import derive_seed

MODEL_FILE = "model.pt"


@dataclass
class RoundResult:
    checkpoint: str  # directory holding model.pt
    val_accuracy: float
    val_loss: float
    train_sample_passes: int
    val_sample_passes: int
    seconds: float


def train_round(job: JobConfig, subset, val, *, round_index: int, epochs: int,
                schedule: str, init_checkpoint: str | None, storage: Path,
                num_classes: int, x_shape) -> RoundResult:
    """Train `epochs` epochs on `subset`, starting from `init_checkpoint`, and validate."""
    start = time.perf_counter()
    loop_config = {
        "job": job.to_dict(), "round": round_index, "epochs": epochs, "schedule": schedule,
        "init_checkpoint": init_checkpoint, "num_classes": num_classes,
        "x_shape": list(x_shape),
    }
    trainer = TorchTrainer(
        _train_loop,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=job.train.num_workers, use_gpu=job.train.use_gpu),
        run_config=RunConfig(
            storage_path=str(Path(storage).resolve()), name=f"round_{round_index:03d}",
            failure_config=FailureConfig(max_failures=2),
            checkpoint_config=CheckpointConfig(num_to_keep=1),
            # Ray Train logs every report at INFO; the driver prints a line per round instead.
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
        val_accuracy=float(metrics["val_accuracy"]), val_loss=float(metrics["val_loss"]),
        train_sample_passes=int(metrics["train_sample_passes"]),
        val_sample_passes=int(metrics["val_sample_passes"]),
        seconds=time.perf_counter() - start,
    )


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


def _rank_slice(n: int, seed: int, rank: int, world: int) -> torch.Tensor:
    """This rank's share of a seeded permutation, padded by wrap-around so ranks step together."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    per_rank = -(-n // world)
    perm = torch.cat([perm, perm[: per_rank * world - n]])
    return perm[rank::world]


def _train_loop(config: dict) -> None:
    job = from_dict(config["job"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(job.train.threads_per_worker)
    device = ray.train.torch.get_device()

    _, y_train, x_train = collect_rows(ray.train.get_dataset_shard("train"))
    _, y_val, x_val = collect_rows(ray.train.get_dataset_shard("val"))
    x_train, y_train = torch.from_numpy(x_train).to(device), torch.from_numpy(y_train).to(device)

    torch.manual_seed(derive_seed(job.seed, "init", config["round"]))
    model = build_model(job.model, config["x_shape"], config["num_classes"])
    if config["init_checkpoint"]:
        state = torch.load(Path(config["init_checkpoint"]) / MODEL_FILE, map_location="cpu",
                           weights_only=True)
        model.load_state_dict(state["model"])
    model = ray.train.torch.prepare_model(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=job.train.lr,
                                  weight_decay=job.train.weight_decay)
    per_worker_batch = max(1, job.train.batch_size // world)
    steps_per_epoch = -(-(-(-len(y_train) // world)) // per_worker_batch)
    epochs = config["epochs"]
    scheduler = _scheduler(optimizer, config["schedule"], job.train.lr, epochs * steps_per_epoch)

    first_epoch = 0
    resumed = ray.train.get_checkpoint()
    if resumed:  # a restarted worker group continues from its last finished epoch
        with resumed.as_directory() as d:
            state = torch.load(Path(d) / MODEL_FILE, map_location="cpu", weights_only=True)
        _unwrap(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        first_epoch = state["epoch"] + 1

    passes_per_epoch = -(-len(y_train) // world) * world  # padded rows are trained on too
    for epoch in range(first_epoch, epochs):
        model.train()
        order = _rank_slice(len(y_train), derive_seed(job.seed, "epoch", config["round"], epoch),
                            rank, world).to(device)
        for step, i in enumerate(range(0, len(order), per_worker_batch)):
            idx = order[i:i + per_worker_batch]
            generator = batch_generator(job.seed, config["round"], epoch, step, rank, device)
            loss = batch_loss(model, x_train[idx], y_train[idx], config["num_classes"], job,
                              generator)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
        last = epoch == epochs - 1
        metrics = {"epoch": epoch, "train_sample_passes": (epoch + 1) * passes_per_epoch,
                   "val_sample_passes": 0}
        if last:
            metrics.update(_validate(model, x_val, y_val, rank, world, device))
        _report(model, optimizer, scheduler, epoch, metrics, rank)


def _scheduler(optimizer, schedule: str, lr: float, total_steps: int):
    if schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr,
                                                   total_steps=max(1, total_steps))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)


def _validate(model, x_val, y_val, rank: int, world: int, device) -> dict:
    """Each rank scores its slice of the validation set; sums are all-reduced."""
    model.eval()
    xs = torch.from_numpy(x_val[rank::world]).to(device)
    ys = torch.from_numpy(y_val[rank::world]).to(device)
    with torch.no_grad():
        logits = torch.cat([model(xs[i:i + 4096]) for i in range(0, len(xs), 4096)]) \
            if len(xs) else torch.zeros((0, 1), device=device)
        sums = torch.tensor([
            float((logits.argmax(1) == ys).sum()) if len(xs) else 0.0,
            float(F.cross_entropy(logits, ys, reduction="sum")) if len(xs) else 0.0,
            float(len(xs)),
        ], device=device, dtype=torch.float64)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(sums)
    correct, loss, n = sums.tolist()
    return {"val_accuracy": correct / max(n, 1), "val_loss": loss / max(n, 1),
            "val_sample_passes": int(n)}


def _unwrap(model):
    return getattr(model, "module", model)


def _report(model, optimizer, scheduler, epoch: int, metrics: dict, rank: int) -> None:
    with tempfile.TemporaryDirectory() as d:
        checkpoint = None
        if rank == 0:
            torch.save({"model": _unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(), "epoch": epoch},
                       os.path.join(d, MODEL_FILE))
            checkpoint = ray.train.Checkpoint.from_directory(d)
        ray.train.report(metrics, checkpoint=checkpoint)
