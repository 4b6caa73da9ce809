"""Wall time side by side: plain torch DDP, raysift `full` and raysift M2 on one job.

    .venv/bin/python benchmarks/bench_wall.py [--job configs/demo_mnist1d.yaml] [--repeats 3]

Plain DDP is the yardstick Ray Train holds itself to: two gloo processes on the same cores, the
same model, optimiser, one-cycle schedule, global batch and epochs as `full`, the ingested
training split in memory, validation when the job validates. It runs twice: with torch's DDP
defaults (`plain ddp`) and with the engine's DDP options (`plain ddp*`, job/engine.py
DDP_OPTIONS), so the table tells the options' gain from Ray Train's cost. The raysift runs are
whole jobs (`run_job`, Ray already started, data ingested into each run's folder); their wall
time is given with and without the ingest. `empty train` is a Ray Train run on the job's
workers whose loop does nothing: the start-up and tear-down that every job pays, whatever its
strategy, and no code of ours can remove. Prints each repeat, then the medians and the
ratios: M2 and plain DDP against `full`, `full` against plain DDP, and M2's median per-round
overhead (a phase's wall time less its training steps and scoring batches).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from ray.train import RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from raysift.config import load_job
from raysift.data.ingest import load_info
from raysift.job.engine import DDP_OPTIONS
from raysift.job.rounds import init_ray, run_job
from raysift.operators.contract import as_float
from raysift.training.models import build_model

EMPTY = "empty train"  # a Ray Train run with an empty loop: the start-up every job pays


def _not_a_job(wall: float, test: float = float("nan")) -> dict:
    """A row of a run that is not a raysift job: no ingest, compute or round overhead."""
    return {"wall": wall, "wall_no_ingest": wall, "test": test} | dict.fromkeys(
        ("compute", "overhead"), float("nan")
    )


def _split(data_dir: Path, split: str, x_shape) -> tuple[np.ndarray, np.ndarray]:
    table = pq.read_table(data_dir / split)
    x = np.stack(table["x"].to_numpy(zero_copy_only=False)).reshape(-1, *x_shape)
    return as_float(x), table["label"].to_numpy()


def _plain_worker(rank: int, job, data_dir: str, world: int, out: str, ddp_options: dict) -> None:
    """One rank of the plain DDP loop: its slice of a seeded permutation every epoch."""
    torch.set_num_threads(job.train.threads_per_worker)
    dist.init_process_group(
        "gloo", init_method=f"file://{out}.rendezvous", rank=rank, world_size=world
    )
    info = load_info(data_dir)
    x, y = (torch.from_numpy(a) for a in _split(Path(data_dir), "train", info.x_shape))
    xv, yv = (torch.from_numpy(a) for a in _split(Path(data_dir), "val", info.x_shape))
    torch.manual_seed(job.seed)
    model = torch.nn.parallel.DistributedDataParallel(
        build_model(job.model, info.x_shape, info.num_classes), **ddp_options
    )
    opt = torch.optim.AdamW(
        model.parameters(), lr=job.train.lr, weight_decay=job.train.weight_decay
    )
    b = job.train.batch_size // world
    per_rank = -(-len(y) // world)
    steps = -(-per_rank // b)
    epochs = job.strategy.epochs
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=job.train.lr, total_steps=epochs * steps
    )
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(epoch))
        mine = torch.cat([order, order[: per_rank * world - len(y)]])[rank::world]
        for i in range(0, len(mine), b):
            idx = mine[i : i + b]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        if job.train.val_every_epoch or epoch == epochs - 1:
            model.eval()
            with torch.no_grad():
                hits = (model.module(xv[rank::world]).argmax(1) == yv[rank::world]).sum()
            dist.all_reduce(hits)
    if rank == 0:
        xt, yt = (torch.from_numpy(a) for a in _split(Path(data_dir), "test", info.x_shape))
        with torch.no_grad():
            acc = float((model.module.eval()(xt).argmax(1) == yt).float().mean())
        Path(out).write_text(str(acc))
    dist.barrier()
    dist.destroy_process_group()


def plain_ddp(job, data_dir: Path, ddp_options: dict) -> tuple[float, float]:
    """(wall seconds, test accuracy) of the plain loop, processes started and data read."""
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "acc")
        start = time.perf_counter()
        mp.spawn(
            _plain_worker,
            args=(job, str(data_dir), job.train.num_workers, out, ddp_options),
            nprocs=job.train.num_workers,
            join=True,
        )
        return time.perf_counter() - start, float(Path(out).read_text())


def _nothing(config: dict) -> None:
    """An empty training loop: what Ray Train itself takes to start and stop a worker group."""


def empty_ray_train(job, storage: Path) -> float:
    """Wall seconds of a Ray Train run whose loop does nothing, on the job's workers."""
    start = time.perf_counter()
    TorchTrainer(
        _nothing,
        scaling_config=ScalingConfig(num_workers=job.train.num_workers),
        run_config=RunConfig(storage_path=str(storage.resolve()), name="empty"),
    ).fit()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--job", default="configs/demo_mnist1d.yaml")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--run-dir", default="runs/bench_wall")
    args = parser.parse_args()
    base = load_job(args.job)
    init_ray()
    plain = {"plain ddp": {}, "plain ddp*": DDP_OPTIONS}
    rows = {name: [] for name in (*plain, "full", "m2", EMPTY)}
    for repeat in range(args.repeats):
        for name in ("full", "m2"):
            job = dataclasses.replace(
                base,
                name=f"wall-{name}",
                run_dir=f"{args.run_dir}/{name}",
                strategy=dataclasses.replace(base.strategy, name=name),
            )
            s = run_job(job.validate(), overwrite=True, echo=lambda *_: None)
            w = s["wall_seconds"]
            overheads = [r["seconds_overhead"] for r in s["per_round"]]
            rows[name].append(
                {
                    "wall": w["total"],
                    "wall_no_ingest": w["total"] - w["ingest"],
                    "test": s["test_accuracy"],
                    "compute": s["compute"],
                    "overhead": statistics.median(overheads),
                }
            )
        for name, options in plain.items():
            wall, acc = plain_ddp(
                dataclasses.replace(base, strategy=dataclasses.replace(base.strategy, name="full")),
                Path(args.run_dir) / "full" / "data",
                options,
            )
            rows[name].append(_not_a_job(wall, acc))
        rows[EMPTY].append(_not_a_job(empty_ray_train(base, Path(args.run_dir))))
        print(
            f"repeat {repeat}: "
            + ", ".join(
                f"{k} {v[-1]['wall']:.1f}s (no ingest {v[-1]['wall_no_ingest']:.1f}s)"
                for k, v in rows.items()
            ),
            flush=True,
        )

    med = {k: {f: statistics.median(r[f] for r in v) for f in v[0]} for k, v in rows.items()}
    full = med["full"]
    print(f"\nmedians of {args.repeats} ({args.job})")
    print(
        f"{'run':<11}{'test acc':>9}{'compute':>10}{'vs full':>8}{'wall s':>8}"
        f"{'no ingest':>10}{'wall vs full':>13}{'round overhead s':>17}"
    )
    for k, m in med.items():
        print(
            f"{k:<11}{m['test']:>9.4f}{m['compute']:>10.0f}{m['compute'] / full['compute']:>8.3f}"
            f"{m['wall']:>8.1f}{m['wall_no_ingest']:>10.1f}"
            f"{m['wall_no_ingest'] / full['wall_no_ingest']:>13.3f}{m['overhead']:>17.2f}"
        )
    for name in plain:
        print(
            f"\nraysift full / {name} (no ingest): "
            f"{full['wall_no_ingest'] / med[name]['wall']:.3f}  (Ray Train's bar: 1.15)"
        )
    print(
        f"m2 / full wall (no ingest): {med['m2']['wall_no_ingest'] / full['wall_no_ingest']:.3f}"
        f"  (target <= 0.5)"
    )
    print(
        f"an empty Ray Train run: {med[EMPTY]['wall']:.1f}s, "
        f"{med[EMPTY]['wall'] / full['wall_no_ingest']:.3f} of full's wall (no ingest)"
    )


if __name__ == "__main__":
    main()
