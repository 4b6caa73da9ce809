"""Transfer (M5) on MNIST-1D: new-scene accuracy and forgetting for each mixing rule.

    .venv/bin/python benchmarks/bench_transfer.py [--sizes 100 500] [--seeds 0 1 2 3 4]

Old scene: MNIST-1D as `mnist1d` generates it by default (4,000 train / 1,000 test).
New scene: the same templates under a visibly different transform (more shear, more correlated
and more i.i.d. noise, another generator seed); per seed, N labelled samples drawn from its
4,000 train, scored on its 1,000 test. The meta-model (`cnn1d`, trained once on the old train
split, cached under the cache folder) and the history library (herding, 20 per class, built
once under it from the old train split) are shared by every run: each rule starts from the
same weights and takes the same steps (epochs x ceil(N / batch)). Per seed, the rules see the
same N samples in the same order.

`--prepare` only writes the meta-model and seed 0's new samples into the cache, for the same
transfer as a Ray Train job: `raysift transfer configs/transfer_mnist1d.yaml`.

The runs are in-process: `transfer_step.run_epochs` at world 1, the code each Ray Train worker
of `raysift transfer` runs. 50 Ray Train fits would be mostly start-up (10-15 s each here).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import random
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from operators.contract import ID, LABEL, X
from pipelines.config import ModelConfig
from pipelines.history import HistoryLibrary, head_gradient_fn
from pipelines.models import build_model
from pipelines.engine import MODEL_FILE
from pipelines.transfer import load_meta
from pipelines.transfer_config import RULES, MetaConfig, TransferTrainConfig
from pipelines.transfer_step import count_correct, run_epochs

NEW_SCENE = {"shear_scale": 2.5, "iid_noise_scale": 0.05, "seed": 7}
META = {"epochs": 30, "batch_size": 128, "lr": 0.01, "seed": 0}
MODEL = ModelConfig(name="cnn1d")


def mnist1d(cache: Path, **changes) -> dict:
    """MNIST-1D from `get_dataset_args()` with `changes`, as (1, 40) signals; cached as .npz."""
    from mnist1d.data import get_dataset_args, make_dataset

    key = hashlib.sha256(json.dumps(changes, sort_keys=True).encode()).hexdigest()[:12]
    path = cache / f"mnist1d-{key}.npz"
    if not path.exists():
        args = get_dataset_args()
        for name, value in changes.items():
            setattr(args, name, value)
        np_state, py_state = np.random.get_state(), random.getstate()  # it seeds global RNGs
        try:
            made = make_dataset(args)
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)
        np.savez(path, x=made["x"], y=made["y"], x_test=made["x_test"], y_test=made["y_test"])
    with np.load(path) as f:
        return {k: (f[k][:, None, :].astype(np.float32) if k.startswith("x")
                    else f[k].astype(np.int64)) for k in f.files}


def meta_model(cache: Path, old: dict) -> MetaConfig:
    """The old-scene model, trained once (AdamW, plain loop) and kept in train.py's format."""
    folder, settings = cache / "meta", json.dumps(META, sort_keys=True)
    meta = MetaConfig(str(folder), MODEL, [1, 40], 10)
    saved = folder / "settings.json"
    if (folder / MODEL_FILE).exists() and saved.exists() and saved.read_text() == settings:
        return meta
    torch.manual_seed(META["seed"])
    model = build_model(MODEL, (1, 40), 10)
    opt = torch.optim.AdamW(model.parameters(), lr=META["lr"])
    x, y = torch.from_numpy(old["x"]), torch.from_numpy(old["y"])
    model.train()
    for _ in range(META["epochs"]):
        order = torch.randperm(len(y))
        for i in range(0, len(y), META["batch_size"]):
            idx = order[i:i + META["batch_size"]]
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict()}, folder / MODEL_FILE)
    (folder / "settings.json").write_text(settings)
    return meta


def export_new_scene(cache: Path, new: dict, size: int) -> Path:
    """Seed 0's draw of `size` new samples and the new test split, for the example Ray job."""
    pick = np.random.default_rng(0).choice(len(new["y"]), size, replace=False)
    path = cache / "new_scene.npz"
    np.savez(path, x=new["x"][pick], label=new["y"][pick], x_test=new["x_test"],
             label_test=new["y_test"])
    return path


def accuracy(model, data: dict) -> float:
    return count_correct(model, data["x_test"], data["y_test"]) / len(data["y_test"])


def mean_std(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {std:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 500])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--rules", nargs="+", default=list(RULES), choices=RULES)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.005)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--per-class", type=int, default=20)
    parser.add_argument("--cache", default="/tmp/raysift-bench-transfer")
    parser.add_argument("--prepare", action="store_true",
                        help="only write the meta-model and new_scene.npz (for "
                             "configs/transfer_mnist1d.yaml) into the cache, then stop")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)

    old, new = mnist1d(cache), mnist1d(cache, **NEW_SCENE)
    meta = meta_model(cache, old)
    exported = export_new_scene(cache, new, max(args.sizes))
    if args.prepare:
        print(f"meta-model in {meta.checkpoint}, new scene in {exported}")
        return
    model = load_meta(meta)
    library = HistoryLibrary(args.per_class, 10, "herding", seed=0)
    library.update({ID: np.arange(len(old["y"])), LABEL: old["y"], X: old["x"]},
                   head_gradient_fn(model))
    print(f"meta-model: old scene {accuracy(model, old):.3f}, new scene "
          f"{accuracy(model, new):.3f}; library {len(library)} samples; epochs {args.epochs}, "
          f"batch {args.batch_size} + {args.batch_size} history, SGD lr {args.lr} momentum "
          f"{args.momentum}; seeds {args.seeds}")

    rows = []
    for size in args.sizes:
        for rule in args.rules:
            runs, start = [], time.perf_counter()
            for seed in args.seeds:
                pick = np.random.default_rng(seed).choice(len(new["y"]), size, replace=False)
                model = load_meta(meta)
                train = TransferTrainConfig(rule=rule, epochs=args.epochs,
                                            batch_size=args.batch_size, lr=args.lr,
                                            momentum=args.momentum)
                stats = run_epochs(model, new["x"][pick], new["y"][pick], library, train,
                                   args.batch_size, seed)
                runs.append((accuracy(model, new), accuracy(model, old), stats))
            seconds = (time.perf_counter() - start) / len(args.seeds)
            conflict = [s["conflict_steps"] / s["steps"] for _, _, s in runs
                        if s["conflict_steps"] is not None]
            rows.append([str(size), rule, str(runs[0][2]["steps"]),
                         mean_std([r[0] for r in runs]), mean_std([r[1] for r in runs]),
                         f"{statistics.mean(conflict):.2f}" if conflict else "-",
                         f"{seconds:.1f}"])
            print(" | ".join(rows[-1]), flush=True)

    print("\n| N new | rule | steps | new-scene acc | old-scene acc | conflicting steps "
          "| s / run |\n| --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
