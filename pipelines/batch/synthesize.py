"""The job's `synthesize:` section and `raysift generate`: synthetic training rows (M4).

Before training, a job with `synthesize.kind` set makes `per_class` rows of every class from
the ingested train split and adds them to it:

    vae, gan   a class-conditional generator, trained here on the train split, saved as
               RUN_DIR/generators/KIND.pt, sampled by a Ray Data job (`raysift generate` samples
               it again later)
    style      style transfer between two samples of a class, a fixed random CNN's features
    neural     an augmenter trained jointly with the job's model (Perez and Wang), saved as
               RUN_DIR/generators/neural.pt, applied to pairs of samples of a class
    moex       the inputs' moments exchanged between samples, soft labels

The generated rows keep their provenance (`source`, `parent_ids`, `y_soft`) in
data/synthetic/; their id, label and x join the train split as one more shard, so every
strategy trains on them like on real rows. The generators read the train split as the
training workers do (pipelines/data/share.py: rows under `train.cache_mb`, the rest on disk).
A VAE or GAN trains in this process up to `synthesize.in_process_rows` train rows, and above
them in one Ray Train run of `train.num_workers` workers, each on its own rows, under DDP.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray
import ray.train
import torch
from ray.train import FailureConfig, LoggingConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from raysift.commands import add_parser, positive_int
from raysift.config import JobConfig, from_dict
from raysift.data.ingest import INFO, load_info, read_split
from raysift.data.share import Share, read_share
from raysift.data.user_data import write
from raysift.operators.augment import IdScheme
from raysift.operators.contract import ID, LABEL, PIXEL_MAX, DataError, X, data_errors, features
from raysift.operators.generate import sample_dataset
from raysift.operators.mixup import mix_dataset
from raysift.operators.moex import MomentMixer
from raysift.operators.pairs import pair_dataset
from raysift.operators.style import StyleTransfer, random_extractor
from raysift.seeding import derive_seed
from raysift.training import generative
from raysift.training.models import build_model
from raysift.training.neural_aug import Augmenter, TrainedAugmenter, joint_step

GENERATORS = "generators"  # RUN_DIR/generators/KIND.pt
SYNTHETIC = "synthetic"  # DATA_DIR/synthetic: the generated rows with their provenance
TRAIN_SHARD = "synthetic-00000.parquet"  # the generated rows' shard in DATA_DIR/train
IDS = IdScheme(offset=2**40)  # generated ids, clear of real ids below 2**32


def train_share(job: JobConfig, data_dir: Path, rank: int = 0, world: int = 1) -> Share:
    """`rank`'s rows of the train split (all of them in one process), as training reads them:
    features under `train.cache_mb`, the rest spilled to disk."""
    info, t = load_info(data_dir), job.train
    return read_share(
        data_dir / "train",
        job.seed,
        rank,
        world,
        tuple(info.x_shape),
        t.cache_mb * 2**20,
        t.spill_dir,
        np.dtype(info.x_dtype),
    )


def synthetic_rows(job: JobConfig, data_dir: Path, run_dir: Path) -> ray.data.Dataset:
    """The rows `job.synthesize` asks for, as a Ray Dataset (nothing written to the train
    split yet; trained generators are saved under run_dir/generators)."""
    cfg, info = job.synthesize, load_info(data_dir)
    k, seed = info.num_classes, derive_seed(job.seed, "synthesize", cfg.kind)
    if cfg.kind in generative.KINDS:
        spec = generative.GeneratorSpec(cfg.kind, tuple(info.x_shape), k, cfg.latent, cfg.hidden)
        model = fit_generator(job, data_dir, spec, seed, run_dir / GENERATORS)
        generative.save(model, run_dir / GENERATORS / f"{cfg.kind}.pt")
        return sample_dataset(
            model.sample,
            {c: cfg.per_class for c in range(k)},
            num_classes=k,
            seed=seed,
            ids=IDS,
            source=cfg.kind,
        )
    train = read_split(data_dir, "train")
    if cfg.kind == "moex":
        copies = max(1, round(cfg.per_class * k / info.counts["train"]))
        return mix_dataset(
            train.random_shuffle(seed=seed % 2**32),
            MomentMixer(cfg.moex_lambda, cfg.moments),
            num_classes=k,
            seed=seed,
            ids=IDS,
            copies=copies,
        )
    if cfg.kind == "style":
        rule = StyleTransfer(
            random_extractor(tuple(info.x_shape), seed),
            steps=cfg.steps,
            style_weight=cfg.style_weight,
            tv_weight=cfg.tv_weight,
        )
    else:
        augmenter = fit_augmenter(job, data_dir, seed)
        path = run_dir / GENERATORS / "neural.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(augmenter.state_dict(), path)
        rule = TrainedAugmenter(augmenter)
    return pair_dataset(
        train, rule, per_class=cfg.per_class, num_classes=k, seed=seed, ids=IDS, source=cfg.kind
    )


def fit_generator(
    job: JobConfig, data_dir: Path, spec: generative.GeneratorSpec, seed: int, folder: Path
) -> torch.nn.Module:
    """A VAE or GAN trained on the train split: in this process up to
    `synthesize.in_process_rows` rows, else in a Ray Train run (its files under `folder`,
    removed once the generator is loaded). A restarted worker group trains again from the
    start; the seeds make it end the same."""
    cfg = job.synthesize
    settings = {"epochs": cfg.epochs, "batch_size": cfg.batch_size, "lr": cfg.lr, "seed": seed}
    if load_info(data_dir).counts["train"] <= cfg.in_process_rows:
        return generative.fit_share(spec, train_share(job, data_dir), **settings)
    storage = folder / "ray-train"
    trainer = TorchTrainer(
        _generator_loop,
        train_loop_config={
            "job": job.to_dict(),
            "data_dir": str(data_dir.resolve()),
            "spec": dataclasses.asdict(spec),
            "settings": settings,
        },
        scaling_config=ScalingConfig(num_workers=job.train.num_workers, use_gpu=job.train.use_gpu),
        run_config=RunConfig(
            storage_path=str(storage.resolve()),
            name=spec.kind,
            failure_config=FailureConfig(max_failures=2),
            logging_config=LoggingConfig(log_level="WARNING"),
        ),
    )
    result = trainer.fit()
    with result.checkpoint.as_directory() as d:
        model = generative.load(Path(d) / f"{spec.kind}.pt")
    shutil.rmtree(storage, ignore_errors=True)
    return model


def _generator_loop(config: dict) -> None:
    """Every worker: its rows of the train split, `fit_share` under DDP; rank 0 reports the
    generator as the run's checkpoint."""
    job = from_dict(config["job"])
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    torch.set_num_threads(job.train.threads_per_worker)
    spec = generative.GeneratorSpec.from_dict(config["spec"])
    share = train_share(job, Path(config["data_dir"]), rank, ctx.get_world_size())
    model = generative.fit_share(
        spec, share, **config["settings"], device=ray.train.torch.get_device()
    )
    with tempfile.TemporaryDirectory() as d:
        checkpoint = None
        if rank == 0:
            generative.save(model.cpu(), Path(d) / f"{spec.kind}.pt")
            checkpoint = ray.train.Checkpoint.from_directory(d)
        ray.train.report({"rows": len(share)}, checkpoint=checkpoint)


def fit_augmenter(job: JobConfig, data_dir: Path, seed: int) -> Augmenter:
    """Train an augmenter jointly with a fresh copy of the job's model on the train split."""
    cfg, info = job.synthesize, load_info(data_dir)
    share = train_share(job, data_dir)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        augmenter = Augmenter(tuple(info.x_shape))
        classifier = build_model(job.model, tuple(info.x_shape), info.num_classes)
    optimizer = torch.optim.Adam([*augmenter.parameters(), *classifier.parameters()], lr=cfg.lr)
    g = torch.Generator().manual_seed(seed)
    for _ in range(cfg.epochs):
        order = torch.randperm(len(share), generator=g).numpy()
        for start in range(0, len(share), cfg.batch_size):
            b = order[start : start + cfg.batch_size]
            joint_step(
                augmenter,
                classifier,
                optimizer,
                torch.from_numpy(share.features(b)),
                torch.from_numpy(share.labels[b]),
                g,
                content_weight=cfg.content_weight,
            )
    return augmenter.eval()


def add_synthetic(job: JobConfig, data_dir: Path, run_dir: Path):
    """Make the synthetic rows, keep them in data/synthetic and add them to the train split;
    returns the updated DataInfo. Call it on a staging folder: it writes in place."""
    with data_errors():
        rows = synthetic_rows(job, data_dir, run_dir).materialize()
    table = pa.concat_tables(ray.get(rows.to_arrow_refs()))
    pq.write_table(table, _new_dir(data_dir / SYNTHETIC) / "part-00000.parquet")
    train_dir = data_dir / "train"
    x = features({X: np.concatenate([c.to_numpy() for c in table.column(X).chunks])})
    pq.write_table(
        pa.table({ID: table.column(ID), LABEL: table.column(LABEL), X: like_train(x, train_dir)}),
        train_dir / TRAIN_SHARD,
    )
    info = load_info(data_dir)
    labels = table.column(LABEL).to_numpy()
    info.counts["train"] += len(labels)
    info.class_counts["train"] = (
        np.asarray(info.class_counts["train"]) + np.bincount(labels, minlength=info.num_classes)
    ).tolist()
    info.source += f"; + {len(labels)} synthetic training rows ({job.synthesize.kind})"
    tmp = data_dir / f"{INFO}.tmp"
    tmp.write_text(json.dumps(dataclasses.asdict(info), indent=1))
    tmp.replace(data_dir / INFO)
    return info


def _new_dir(path: Path) -> Path:
    path.mkdir(parents=True)
    return path


def like_train(x: np.ndarray, train_dir: Path):
    """x as a tensor column of the train shards' dtype: 8-bit shards hold round(x * PIXEL_MAX)
    clipped to the byte's range, which `features` scales back to about x."""
    from ray.data.extensions import ArrowTensorArray

    first = sorted(train_dir.glob("part-*.parquet"))[0]
    dtype = pq.read_table(first, columns=[X]).column(X).chunk(0).to_numpy().dtype
    if dtype == np.uint8:
        x = np.clip(np.rint(x * PIXEL_MAX), 0, 255)
    return ArrowTensorArray.from_numpy(np.ascontiguousarray(x.astype(dtype)))


def generate(
    run_dir: str | Path,
    out: str,
    n: int,
    per_class: bool = False,
    kind: str | None = None,
    seed: int = 0,
) -> int:
    """Sample a run's saved VAE or GAN into OUT (Parquet, a new directory): n rows in all,
    spread evenly over the classes, or n of every class; returns the number of rows."""

    folder = Path(run_dir) / GENERATORS
    found = [k for k in generative.KINDS if (folder / f"{k}.pt").exists()]
    if not found:
        raise DataError(
            f"{folder}: no saved generator (vae.pt or gan.pt); run a job with "
            f"synthesize.kind vae or gan first"
        )
    if kind is None and len(found) > 1:
        raise DataError(f"{folder}: holds both vae.pt and gan.pt; pick one with --kind")
    kind = kind or found[0]
    if kind not in found:
        raise DataError(f"{folder / f'{kind}.pt'} does not exist (found {found[0]}.pt)")
    model = generative.load(folder / f"{kind}.pt")
    k = model.spec.num_classes
    counts = {c: n if per_class else n // k + (c < n % k) for c in range(k)}
    ds = sample_dataset(model.sample, counts, num_classes=k, seed=seed, ids=IDS, source=kind)
    write(ds, out)
    return sum(counts.values())


def _generate_command(args: argparse.Namespace) -> None:
    rows = generate(args.run_dir, args.output, args.n, args.per_class, args.kind, args.seed)
    print(f"generate: {rows} rows -> {args.output}")


def add_commands(subparsers) -> None:
    """Register `generate` on the CLI's subparsers."""

    p = add_parser(subparsers, "generate")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run made with synthesize.kind vae/gan")
    p.add_argument("output", metavar="OUT", help="new directory for the Parquet output")
    p.add_argument("--n", type=positive_int, required=True, help="rows in all (or per class)")
    p.add_argument("--per-class", action="store_true", help="N rows of every class")
    p.add_argument(
        "--kind", choices=generative.KINDS, help="which generator (default: the one the run saved)"
    )
    p.add_argument("--seed", type=int, default=0, help="default 0")
    p.set_defaults(func=_generate_command)
