"""Text that learns: `textcnn` on all the movie-review sentences, random against GloVe vectors.

Every configuration trains on all 7,630 training sentences of the VADER movie-review set
(benchmarks/fetch_reviews.py) with Adam (lr 1e-3, batches of 50, Kim's settings), validates
after every epoch and stops when validation accuracy has not improved for `--patience` epochs;
the test accuracy is that of the best validation epoch, as mean ± std over the seeds, with the
wall time and the training sample-passes each run took. In this process, on the data
`raysift.data.ingest` writes, with the tokenizer of `raysift.data.text`.

    .venv/bin/python benchmarks/bench_text.py [--seeds 3] [--configs random,glove,glove_static]
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_lowres import accuracy, load_data, mean_std  # noqa: E402
from benchmarks.fetch_reviews import fetch_reviews  # noqa: E402
from raysift.config import from_dict  # noqa: E402
from raysift.seeding import derive_seed  # noqa: E402
from raysift.training.models import build_model  # noqa: E402

CONFIGS = {
    "random": {"dim": 64, "channels": 100},
    "glove": {"word_vectors": "glove-6b-50d", "channels": 100},
    "glove_static": {"word_vectors": "glove-6b-50d", "channels": 100, "freeze_vectors": True},
}


def job(kwargs: dict, root: Path, csv: str):
    return from_dict(
        {
            "run_dir": str(root / "reviews"),
            "source": {"kind": "text", "path": csv, "max_len": 48},
            "model": {"name": "textcnn", "kwargs": dict(kwargs)},
        }
    )


def fit(model, data: dict, seed: int, args) -> dict:
    """Train with early stopping on validation; the test accuracy of the best epoch."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=args.lr)
    x, y = data["train"]
    best, since, passes, started = {"val": -1.0}, 0, 0, time.perf_counter()
    for epoch in range(args.max_epochs):
        model.train()
        order = torch.randperm(
            len(y), generator=torch.Generator().manual_seed(derive_seed(seed, "order", epoch))
        )
        for start in range(0, len(y), args.batch_size):
            b = order[start : start + args.batch_size]
            loss = F.cross_entropy(model(x[b]), y[b])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        passes += len(y)
        val = accuracy(model, *data["val"])
        if val > best["val"]:
            best, since = (
                {"val": val, "epoch": epoch + 1, "state": copy.deepcopy(model.state_dict())},
                0,
            )
        else:
            since += 1
            if since >= args.patience:
                break
    model.load_state_dict(best["state"])
    return {
        "val": best["val"],
        "epoch": best["epoch"],
        "test": accuracy(model, *data["test"]),
        "seconds": time.perf_counter() - started,
        "passes": passes,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--max-epochs", type=int, default=15)
    parser.add_argument("--patience", type=int, default=3)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument(
        "--data",
        type=Path,
        default=Path("runs/bench_lowres/data"),
        help="the ingested sentences are kept here (shared with bench_lowres)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names = [c for c in args.configs.split(",") if c]
    if set(names) - set(CONFIGS):
        parser.error(f"--configs: choose from {', '.join(CONFIGS)}")
    csv = str(fetch_reviews())
    data = load_data("reviews", job(CONFIGS["random"], args.data, csv), args.data)
    print(
        "| textcnn | test acc % | val acc % | epoch chosen | wall s / run | "
        "train sample-passes / run |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name in names:
        runs = []
        for seed in range(args.seeds):
            torch.manual_seed(derive_seed(seed, "init", "text"))
            model = build_model(
                job(CONFIGS[name], args.data, csv).model, data["x_shape"], data["num_classes"]
            )
            runs.append(fit(model, data, seed, args))
        print(
            f"| {name} | {mean_std([r['test'] for r in runs])} | "
            f"{mean_std([r['val'] for r in runs])} | "
            f"{np.mean([r['epoch'] for r in runs]):.1f} | "
            f"{np.mean([r['seconds'] for r in runs]):.0f} | "
            f"{np.mean([r['passes'] for r in runs]):,.0f} |",
            flush=True,
        )
    print(
        f"\n{len(data['train'][1]):,} training / {len(data['val'][1]):,} validation / "
        f"{len(data['test'][1]):,} test sentences; {args.seeds} seeds; Adam lr {args.lr}, "
        f"batch {args.batch_size}, at most {args.max_epochs} epochs, patience {args.patience}"
    )


if __name__ == "__main__":
    main()
