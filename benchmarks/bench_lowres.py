"""Low-resource benchmark (M3): does adversarial mixup help when labels are scarce?

5 and 10 labelled samples per class on MNIST-1D (cnn1d), scikit-learn digits (cnn2d) and the
VADER movie-review sentences (textcnn; fetched by benchmarks/fetch_reviews.py). Four methods:
no mixing, mixup at the input (for text: the word vectors, as token ids cannot be mixed),
mixup at a hidden layer, and adversarial mixup at that same hidden layer (one column per step
size in `--gammas`), so that the last two differ only by the ascent step on lam. Every method gets the same budget (`--epochs` full-batch
epochs from the same initial weights and the same labelled draw per seed); the epoch is chosen
on the validation split (evaluated every `--eval-every` epochs) and the test accuracy of that
epoch's weights is reported, as mean ± std over the seeds.

The runs train in this process with `pipelines.augmentation.batch_loss`, the loss the Ray Train
loop uses, and with the data written by `pipelines.ingest`; no run is a `TorchTrainer.fit`:
120 fits of a few seconds each would be mostly Ray start-up.

    .venv/bin/python benchmarks/bench_lowres.py                     # the full table
    .venv/bin/python benchmarks/bench_lowres.py --datasets digits --shots 5 --seeds 2 \\
        --methods mixup_hidden,advmix --gammas 0.5                   # one cell, another step
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.fetch_reviews import fetch_reviews  # noqa: E402
from pipelines.augmentation import batch_generator, batch_loss, build_mixer  # noqa: E402
from pipelines.config import from_dict  # noqa: E402
from pipelines.ingest import ingest, load_info  # noqa: E402
from pipelines.models import build_model  # noqa: E402
from pipelines.seeding import derive_seed  # noqa: E402

# Per dataset: the job sections shared by every method, and the layers mixed. `input` is the
# first mixable layer, `hidden` the input of the last stage (the embedding the classifier reads).
DATASETS = {
    "mnist1d": {"job": {"source": {"kind": "mnist1d", "num_samples": 5000},
                        "model": {"name": "cnn1d"}}, "input": 0, "hidden": 5},
    "digits": {"job": {"source": {"kind": "digits"}, "model": {"name": "cnn2d"}},
               "input": 0, "hidden": 4},
    "reviews": {"job": {"source": {"kind": "text", "max_len": 48},
                        "model": {"name": "textcnn", "kwargs": {"dim": 64, "channels": 32}}},
                "input": 1, "hidden": 2},
}
METHODS = ("none", "mixup", "mixup_hidden", "advmix")


def job_for(dataset: str, method: str, args, data_path: str | None, gamma: float = 0.0):
    """The validated job of one (dataset, method): the same train settings for every method."""
    spec = DATASETS[dataset]
    raw = copy.deepcopy(spec["job"])
    if data_path:
        raw["source"]["path"] = data_path
    raw["train"] = {"lr": args.lr, "weight_decay": args.weight_decay, "batch_size": 128}
    mixup = {"none": {},
             "mixup": {"kind": "mixup", "layer": spec["input"], "alpha": args.alpha},
             "mixup_hidden": {"kind": "mixup", "layer": spec["hidden"], "alpha": args.alpha},
             "advmix": {"kind": "adversarial", "layer": spec["hidden"], "alpha": args.alpha,
                        "gamma": gamma, "n_steps": args.n_steps}}[method]
    return from_dict({**raw, "mixup": mixup})


def load_data(dataset: str, job, root: Path) -> dict:
    """Ingest once into root/dataset (kept for later runs), then read the splits as arrays."""
    out = root / dataset
    if not (out / "info.json").exists():
        ingest(job.source, 0, out)
    info = load_info(out)
    data = {"num_classes": info.num_classes, "x_shape": tuple(info.x_shape)}
    for split in ("train", "val", "test"):
        t = pq.read_table(sorted(str(p) for p in (out / split).glob("*.parquet")))
        x = np.concatenate([c.to_numpy() for c in t.column("x").chunks]).astype(np.float32)
        labels = np.array(t.column("label").to_numpy(), dtype=np.int64)  # a writable copy
        data[split] = (torch.from_numpy(x), torch.from_numpy(labels))
    return data


def draw_labelled(labels: torch.Tensor, shots: int, seed: int) -> torch.Tensor:
    """`shots` training indices per class, the same for every method of a seed."""
    rng = np.random.default_rng(derive_seed(seed, "labelled", shots))
    y = labels.numpy()
    picks = [rng.choice(np.flatnonzero(y == c), shots, replace=False) for c in np.unique(y)]
    return torch.from_numpy(np.sort(np.concatenate(picks)))


@torch.no_grad()
def accuracy(model, x, y) -> float:
    model.eval()
    pred = torch.cat([model(x[i:i + 1024]).argmax(1) for i in range(0, len(x), 1024)])
    return float((pred == y).double().mean())


def fit(job, data: dict, shots: int, seed: int, epochs: int, eval_every: int) -> dict:
    """Train on the labelled draw; the test accuracy of the best validation epoch."""
    k = data["num_classes"]
    idx = draw_labelled(data["train"][1], shots, seed)
    x, y = data["train"][0][idx], data["train"][1][idx]
    torch.manual_seed(derive_seed(seed, "init", shots))
    model = build_model(job.model, data["x_shape"], k)
    optimizer = torch.optim.AdamW(model.parameters(), lr=job.train.lr,
                                  weight_decay=job.train.weight_decay)
    batch = job.train.batch_size
    best = {"val": -1.0, "epoch": 0, "state": copy.deepcopy(model.state_dict())}
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(
            derive_seed(seed, "order", epoch)))
        for step, start in enumerate(range(0, len(y), batch)):
            b = order[start:start + batch]
            loss = batch_loss(model, x[b], y[b], k, job, batch_generator(seed, 0, epoch, step, 0))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if (epoch + 1) % eval_every == 0:
            val = accuracy(model, *data["val"])
            if val > best["val"]:
                best = {"val": val, "epoch": epoch + 1, "state": copy.deepcopy(model.state_dict())}
    model.load_state_dict(best["state"])
    result = {"val": best["val"], "epoch": best["epoch"], "test": accuracy(model, *data["test"])}
    if job.mixup.kind == "adversarial":  # how far the ascent step moves lam, at the chosen weights
        model.train()
        out = build_mixer(job.mixup)(model, x, F.one_hot(y, k).float(),
                                     batch_generator(seed, 0, epochs, 0, 0))
        result.update(out.stats())
    return result


def mean_std(values) -> str:
    v = 100 * np.asarray(values)
    return f"{v.mean():.1f} ± {v.std(ddof=1) if len(v) > 1 else 0.0:.1f}"


def table(results: list[dict], columns: list[str]) -> str:
    """Test accuracy (%) per dataset and shots, a column per method; then, per adversarial
    column, its paired gain over hidden-layer mixup (same seeds) and the mean |lam - lam0| its
    step made; last, the mean epoch chosen per method."""
    cells = {}
    for r in results:
        cells.setdefault((r["dataset"], r["shots"]), {}).setdefault(r["method"], []).append(r)
    adversarial = [c for c in columns if c.startswith("advmix")] \
        if "mixup_hidden" in columns else []
    head = ["dataset", "shots", *columns]
    for c in adversarial:
        step = c.split()[1]
        head += [f"gain {step} vs hidden", f"lam change {step}"]
    head.append("epochs chosen")
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for (dataset, shots), by in cells.items():
        row = [dataset, str(shots)] + [mean_std([r["test"] for r in by[c]]) for c in columns]
        for c in adversarial:
            gain = [a["test"] - b["test"] for a, b in zip(by[c], by["mixup_hidden"])]
            row += [mean_std(gain), f"{np.mean([r['lam_change'] for r in by[c]]):.4f}"]
        row.append(" / ".join(f"{np.mean([r['epoch'] for r in by[c]]):.0f}" for c in columns))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--shots", default="5,10", help="labelled samples per class")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--epochs", type=int, default=200, help="full-batch epochs per run")
    parser.add_argument("--eval-every", type=int, default=5)
    parser.add_argument("--lr", type=float, default=0.003)
    parser.add_argument("--weight-decay", type=float, default=0.0001)
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument("--gammas", default="0.002,1",
                        help="adversarial step sizes, a column each (0.002: the published one)")
    parser.add_argument("--n-steps", type=int, default=1, help="adversarial ascent steps")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--data", type=Path, default=Path("runs/bench_lowres/data"),
                        help="ingested datasets are kept here")
    parser.add_argument("--out", type=Path, default=None, help="also write every run as JSON")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    methods = [m for m in args.methods.split(",") if m]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        parser.error(f"--methods: unknown {unknown}; choose from {', '.join(METHODS)}")
    datasets = [d for d in args.datasets.split(",") if d]
    if set(datasets) - set(DATASETS):
        parser.error(f"--datasets: choose from {', '.join(DATASETS)}")
    shots = [int(s) for s in args.shots.split(",")]
    gammas = [float(g) for g in args.gammas.split(",")]
    # (column, method, gamma): adversarial mixup once per step size
    runs = [(f"advmix g={g:g}", m, g) for m in methods for g in gammas if m == "advmix"] + \
        [(m, m, 0.0) for m in methods if m != "advmix"]
    runs.sort(key=lambda run: METHODS.index(run[1]))

    results, started = [], time.perf_counter()
    for dataset in datasets:
        path = str(fetch_reviews()) if dataset == "reviews" else None
        data = load_data(dataset, job_for(dataset, "none", args, path), args.data)
        t = time.perf_counter()
        for n in shots:
            for column, method, gamma in runs:
                job = job_for(dataset, method, args, path, gamma)
                for seed in range(args.seeds):
                    r = fit(job, data, n, seed, args.epochs, args.eval_every)
                    results.append({"dataset": dataset, "shots": n, "method": column,
                                    "seed": seed, **r})
        print(f"[{dataset}] {time.perf_counter() - t:.0f}s", file=sys.stderr)
    print(table(results, [column for column, _, _ in runs]))
    print(f"\n{len(results)} runs, {time.perf_counter() - started:.0f}s; test accuracy % "
          f"(mean ± std over {args.seeds} seeds); alpha {args.alpha}, {args.n_steps} ascent "
          f"step(s), {args.epochs} epochs, lr {args.lr}, weight decay {args.weight_decay}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
