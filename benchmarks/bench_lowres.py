"""Low-resource benchmark (M3, M4): which augmentation helps when labels are scarce?

5 and 10 labelled samples per class on MNIST-1D (cnn1d), scikit-learn digits (cnn2d), the VADER
movie-review sentences (textcnn on GloVe vectors; fetched by benchmarks/fetch_reviews.py) and a
draw of Fashion-MNIST (cnn2d; `make fashion-mnist`; validation and test are seeded draws of
1,000 and 2,000 images). Columns:

    none          plain cross-entropy
    mixup         mixup at the input (for text: the word vectors, as token ids cannot be mixed)
    mixup_hidden  mixup at the input of the last stage
    advmix_old    adversarial mixup there, AMP's step (gamma 0.002 on the batch-mean loss)
    advmix_new    adversarial mixup there, each ratio stepped on its own loss (`--adv-*`)
    moex          moment exchange after the first stage (layer 1), lam 0.9
    vae, gan      `--synthetic` rows per class from a class-conditional generator fitted on
                  the labelled draw
    style         `--synthetic` rows per class by style transfer between labelled samples of a
                  class (a fixed random CNN's features)
    neural        an augmenter trained jointly with the classifier (Perez and Wang)

Every method gets the same budget: `--epochs` epochs of one step on the whole labelled draw
(generated rows add an equal-sized batch of synthetic rows to each step; neural augmentation
adds the merged samples), from the same initial weights and the same labelled draw per seed.
The epoch is chosen on the validation split (every `--eval-every` epochs) and the test accuracy
of that epoch's weights is reported as mean ± std over the seeds. The generators, style
transfer and neural augmentation need real-valued inputs, so the text rows leave them out.

The runs train in this process with `raysift.training.loss.batch_loss`, the loss the Ray Train
loop uses, and the generator and pair rules the `synthesize:` job section uses, on data written
by `raysift.data.ingest`; no run is a `TorchTrainer.fit` (hundreds of fits of a few seconds).

    .venv/bin/python benchmarks/bench_lowres.py                      # the full table
    .venv/bin/python benchmarks/bench_lowres.py --datasets digits --shots 5 --seeds 2 \\
        --methods mixup_hidden,advmix_new --adv-gamma 0.5             # one cell, another step
    .venv/bin/python benchmarks/bench_lowres.py --from-json a.json,b.json   # tables of saved runs
    .venv/bin/python benchmarks/bench_lowres.py --sweep 0.1:0.3:hidden:1,2:none:1:3 ...
        # advmix_new settings gamma:bound:layer:steps against hidden mixup, validation and test
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
from raysift.config import from_dict  # noqa: E402
from raysift.data.ingest import ingest, load_info  # noqa: E402
from raysift.operators.contract import X, features  # noqa: E402
from raysift.operators.pairs import draw_pairs  # noqa: E402
from raysift.operators.style import StyleTransfer, random_extractor  # noqa: E402
from raysift.seeding import derive_seed  # noqa: E402
from raysift.training import generative  # noqa: E402
from raysift.training.loss import batch_generator, batch_loss, build_mixer  # noqa: E402
from raysift.training.models import build_model  # noqa: E402
from raysift.training.neural_aug import Augmenter, joint_step  # noqa: E402

FASHION = "/usr/share/datasets/fashion-mnist"
# Per dataset: the job sections shared by every method, and the layers mixed. `input` is the
# first mixable layer, `hidden` the input of the last stage (the embedding the classifier reads),
# `moex` the input of stage 1 (after the first convolution, or the word vectors).
DATASETS = {
    "mnist1d": {
        "job": {"source": {"kind": "mnist1d", "num_samples": 5000}, "model": {"name": "cnn1d"}},
        "input": 0,
        "hidden": 5,
    },
    "digits": {
        "job": {"source": {"kind": "digits"}, "model": {"name": "cnn2d"}},
        "input": 0,
        "hidden": 4,
    },
    "reviews": {
        "job": {
            "source": {"kind": "text", "max_len": 48},
            "model": {
                "name": "textcnn",
                "kwargs": {"word_vectors": "glove-6b-50d", "channels": 32},
            },
        },
        "input": 1,
        "hidden": 2,
        "text": True,
    },
    "fashion": {
        "job": {
            "source": {"kind": "idx", "path": FASHION},
            "model": {"name": "cnn2d", "kwargs": {"channels": 16, "hidden": 64}},
        },
        "input": 0,
        "hidden": 4,
        "val_rows": 1000,
        "test_rows": 2000,
    },
}
METHODS = (
    "none",
    "mixup",
    "mixup_hidden",
    "advmix_old",
    "advmix_new",
    "moex",
    "vae",
    "gan",
    "style",
    "neural",
)
SYNTHETIC = ("vae", "gan", "style")
NEEDS_REAL_INPUT = ("vae", "gan", "style", "neural")


def job_for(dataset: str, method: str, args, root: Path, data_path: str | None):
    """The validated job of one (dataset, method): the same train settings for every method."""
    spec = DATASETS[dataset]
    raw = copy.deepcopy(spec["job"])
    if data_path:
        raw["source"]["path"] = data_path
    raw["run_dir"] = str(root / dataset)  # its data/ is where load_data ingests
    raw["train"] = {"lr": args.lr, "weight_decay": args.weight_decay, "batch_size": 128}
    hidden = {"layer": spec["hidden"], "alpha": args.alpha}
    mixup = {
        "mixup": {"kind": "mixup", "layer": spec["input"], "alpha": args.alpha},
        "mixup_hidden": {"kind": "mixup", **hidden},
        "advmix_old": {"kind": "adversarial", **hidden, "gamma": 0.002},
        "advmix_new": {
            "kind": "adversarial",
            **hidden,
            "ascent": "sample",
            "gamma": args.adv_gamma,
            "bound": args.adv_bound,
            "n_steps": args.adv_steps,
            **({"layer": args.adv_layer} if args.adv_layer is not None else {}),
        },
        "moex": {"kind": "moex", "layer": 1, "moex_lambda": 0.9},
    }.get(method, {})
    return from_dict({**raw, "mixup": mixup})


def load_data(dataset: str, job, root: Path) -> dict:
    """Ingest once into root/dataset/data (kept for later runs), then read the splits as
    arrays; validation and test are cut to a seeded draw where the dataset says so."""
    out = root / dataset / "data"
    if not (out / "info.json").exists():
        ingest(job.source, 0, out)
    info = load_info(out)
    data = {"num_classes": info.num_classes, "x_shape": tuple(info.x_shape)}
    for split in ("train", "val", "test"):
        t = pq.read_table(sorted(str(p) for p in (out / split).glob("*.parquet")))
        x = features({X: np.concatenate([c.to_numpy() for c in t.column(X).chunks])})
        labels = np.array(t.column("label").to_numpy(), dtype=np.int64)  # a writable copy
        cap = DATASETS[dataset].get(f"{split}_rows")
        if cap and len(labels) > cap:
            keep = np.sort(
                np.random.default_rng(derive_seed(0, split, cap)).choice(
                    len(labels), cap, replace=False
                )
            )
            x, labels = x[keep], labels[keep]
        data[split] = (torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(labels))
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
    pred = torch.cat([model(x[i : i + 1024]).argmax(1) for i in range(0, len(x), 1024)])
    return float((pred == y).double().mean())


def synthetic(method: str, x, y, k: int, x_shape, args, seed: int):
    """`--synthetic` rows per class made from the labelled draw (x, y) alone."""
    per_class = args.synthetic
    s = derive_seed(seed, "synthetic", method)
    if method in generative.KINDS:
        spec = generative.GeneratorSpec(method, x_shape, k, latent=16, hidden=128)
        model = generative.fit(spec, x, y, epochs=args.gen_epochs, batch_size=64, lr=1e-3, seed=s)
        labels = torch.arange(k).repeat_interleave(per_class)
        return model.sample(labels, torch.Generator().manual_seed(s)), labels
    rule = StyleTransfer(random_extractor(x_shape, s), steps=args.style_steps)
    g = torch.Generator().manual_seed(s)
    xs, ys = [], []
    for c in range(k):
        members = torch.nonzero(y == c).squeeze(1)
        first, second = draw_pairs(len(members), per_class, g)
        xs.append(rule(x[members[first]], x[members[second]]))
        ys.append(torch.full((per_class,), c))
    return torch.cat(xs), torch.cat(ys)


def fit(job, method: str, data: dict, shots: int, seed: int, args) -> dict:
    """Train on the labelled draw; the test accuracy of the best validation epoch."""
    k, started = data["num_classes"], time.perf_counter()
    idx = draw_labelled(data["train"][1], shots, seed)
    x, y = data["train"][0][idx], data["train"][1][idx]
    torch.manual_seed(derive_seed(seed, "init", shots))
    model = build_model(job.model, data["x_shape"], k)
    params = list(model.parameters())
    augmenter = None
    if method == "neural":
        augmenter = Augmenter(data["x_shape"])
        params += list(augmenter.parameters())
    made = synthetic(method, x, y, k, data["x_shape"], args, seed) if method in SYNTHETIC else None
    optimizer = torch.optim.AdamW(
        [p for p in params if p.requires_grad], lr=job.train.lr, weight_decay=job.train.weight_decay
    )
    batch = job.train.batch_size
    best = {"val": -1.0, "epoch": 0, "state": copy.deepcopy(model.state_dict())}
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(
            len(y), generator=torch.Generator().manual_seed(derive_seed(seed, "order", epoch))
        )
        for step, start in enumerate(range(0, len(y), batch)):
            b = order[start : start + batch]
            g = batch_generator(seed, 0, epoch, step, 0)
            if augmenter is not None:
                joint_step(augmenter, model, optimizer, x[b], y[b], g)
                continue
            xb, yb = x[b], y[b]
            if made is not None:  # an equal-sized batch of generated rows, in turn
                pick = (torch.arange(len(b)) + (epoch * len(y) + start)) % len(made[1])
                xb, yb = torch.cat([xb, made[0][pick]]), torch.cat([yb, made[1][pick]])
            loss = batch_loss(model, xb, yb, k, job, g)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if (epoch + 1) % args.eval_every == 0:
            val = accuracy(model, *data["val"])
            if val > best["val"]:
                best = {"val": val, "epoch": epoch + 1, "state": copy.deepcopy(model.state_dict())}
    model.load_state_dict(best["state"])
    result = {"val": best["val"], "epoch": best["epoch"], "test": accuracy(model, *data["test"])}
    if job.mixup.kind == "adversarial":  # how far the ascent step moves lam, at the chosen weights
        model.train()
        out = build_mixer(job.mixup)(
            model, x, F.one_hot(y, k).float(), batch_generator(seed, 0, args.epochs, 0, 0)
        )
        result.update(out.stats())
    result["seconds"] = time.perf_counter() - started  # generators and evaluations included
    return result


def mean_std(values) -> str:
    v = 100 * np.asarray(values)
    return f"{v.mean():.1f} ± {v.std(ddof=1) if len(v) > 1 else 0.0:.1f}"


def table(results: list[dict], columns: list[str]) -> str:
    """Test accuracy (%) per dataset and shots, a column per method; then the paired gain of
    each adversarial column over hidden-layer mixup (same seeds) and the mean |lam - lam0| its
    step made; last, the mean epoch chosen and the mean wall seconds of a run per method."""
    cells = {}
    for r in results:
        cells.setdefault((r["dataset"], r["shots"]), {}).setdefault(r["method"], []).append(r)
    adversarial = (
        [c for c in columns if c.startswith("advmix")] if "mixup_hidden" in columns else []
    )
    head = ["dataset", "shots", *columns]
    for c in adversarial:
        head += [f"{c} - hidden", f"lam change {c}"]
    head += ["epochs chosen", "wall s / run"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for (dataset, shots), by in cells.items():
        row = [dataset, str(shots)] + [
            mean_std([r["test"] for r in by[c]]) if c in by else "-" for c in columns
        ]
        for c in adversarial:
            if c not in by or "mixup_hidden" not in by:
                row += ["-", "-"]
                continue
            gain = [a["test"] - b["test"] for a, b in zip(by[c], by["mixup_hidden"])]
            row += [mean_std(gain), f"{np.mean([r['lam_change'] for r in by[c]]):.4f}"]
        row.append(
            " / ".join(
                f"{np.mean([r['epoch'] for r in by[c]]):.0f}" if c in by else "-" for c in columns
            )
        )
        row.append(
            " / ".join(
                f"{np.mean([r['seconds'] for r in by[c]]):.0f}"
                if c in by and "seconds" in by[c][0]
                else "-"
                for c in columns
            )
        )
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def sweep_settings(text: str) -> list[dict]:
    """'gamma:bound:layer:steps,...' as advmix_new argument sets ('none' bound, 'hidden' layer)."""
    settings = []
    for item in text.split(","):
        gamma, bound, layer, steps = item.split(":")
        settings.append(
            {
                "adv_gamma": float(gamma),
                "adv_bound": None if bound == "none" else float(bound),
                "adv_layer": None if layer == "hidden" else int(layer),
                "adv_steps": int(steps),
            }
        )
    return settings


def sweep(args, datasets: list[str], shots: list[int]) -> None:
    """Per advmix_new setting and dataset: its paired gain over hidden mixup on validation (what
    a setting is chosen by) and on test, and how far its step moved lam."""
    lines = [
        "| gamma | bound | layer | steps | dataset | shots | val gain | test gain | lam change |",
        "|" + " --- |" * 9,
    ]
    for dataset in datasets:
        path = str(fetch_reviews()) if dataset == "reviews" else None
        data = load_data(dataset, job_for(dataset, "none", args, args.data, path), args.data)
        for n in shots:
            job = job_for(dataset, "mixup_hidden", args, args.data, path)
            base = [fit(job, "mixup_hidden", data, n, seed, args) for seed in range(args.seeds)]
            for setting in sweep_settings(args.sweep):
                a = argparse.Namespace(**{**vars(args), **setting})
                job = job_for(dataset, "advmix_new", a, args.data, path)
                runs = [fit(job, "advmix_new", data, n, seed, a) for seed in range(args.seeds)]
                gains = {
                    k: mean_std([r[k] - b[k] for r, b in zip(runs, base)]) for k in ("val", "test")
                }
                layer = setting["adv_layer"] if setting["adv_layer"] is not None else "hidden"
                lines.append(
                    f"| {setting['adv_gamma']:g} | {setting['adv_bound']} | {layer} | "
                    f"{setting['adv_steps']} | {dataset} | {n} | {gains['val']} | "
                    f"{gains['test']} | "
                    f"{np.mean([r['lam_change'] for r in runs]):.3f} |"
                )
                print(lines[-1], file=sys.stderr, flush=True)
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--shots", default="5,10", help="labelled samples per class")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--epochs", type=int, default=150, help="epochs per run")
    parser.add_argument("--eval-every", type=int, default=5)
    parser.add_argument("--lr", type=float, default=0.003)
    parser.add_argument("--weight-decay", type=float, default=0.0001)
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument("--adv-gamma", type=float, default=0.5, help="advmix_new: step size")
    parser.add_argument(
        "--adv-bound", type=float, default=0.3, help="advmix_new: largest |lam - lam0|"
    )
    parser.add_argument("--adv-steps", type=int, default=1, help="advmix_new: ascent steps")
    parser.add_argument(
        "--adv-layer", type=int, default=None, help="advmix_new: layer (default: the hidden one)"
    )
    parser.add_argument("--synthetic", type=int, default=20, help="generated rows per class")
    parser.add_argument("--gen-epochs", type=int, default=300, help="VAE / GAN epochs")
    parser.add_argument("--style-steps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument(
        "--data",
        type=Path,
        default=Path("runs/bench_lowres/data"),
        help="ingested datasets are kept here",
    )
    parser.add_argument("--out", type=Path, default=None, help="also write every run as JSON")
    parser.add_argument(
        "--sweep",
        default=None,
        metavar="G:B:L:S,...",
        help="advmix_new settings to compare with hidden mixup (a sweep table)",
    )
    parser.add_argument(
        "--from-json",
        default=None,
        help="comma-separated JSON files of earlier runs: print their table",
    )
    args = parser.parse_args()
    methods = [m for m in args.methods.split(",") if m]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        parser.error(f"--methods: unknown {unknown}; choose from {', '.join(METHODS)}")
    if args.from_json:
        results = [r for f in args.from_json.split(",") for r in json.loads(Path(f).read_text())]
        print(table(results, [m for m in METHODS if any(r["method"] == m for r in results)]))
        return
    torch.set_num_threads(args.threads)
    datasets = [d for d in args.datasets.split(",") if d]
    if set(datasets) - set(DATASETS):
        parser.error(f"--datasets: choose from {', '.join(DATASETS)}")
    shots = [int(s) for s in args.shots.split(",")]
    if args.sweep:
        sweep(args, datasets, shots)
        return

    results, started = [], time.perf_counter()
    for dataset in datasets:
        path = str(fetch_reviews()) if dataset == "reviews" else None
        data = load_data(dataset, job_for(dataset, "none", args, args.data, path), args.data)
        t = time.perf_counter()
        for n in shots:
            for method in methods:
                if method in NEEDS_REAL_INPUT and DATASETS[dataset].get("text"):
                    continue
                job = job_for(dataset, method, args, args.data, path)
                for seed in range(args.seeds):
                    r = fit(job, method, data, n, seed, args)
                    results.append(
                        {"dataset": dataset, "shots": n, "method": method, "seed": seed, **r}
                    )
                if args.out:  # as it goes: a long run that stops keeps what it measured
                    args.out.parent.mkdir(parents=True, exist_ok=True)
                    args.out.write_text(json.dumps(results, indent=1))
        print(f"[{dataset}] {time.perf_counter() - t:.0f}s", file=sys.stderr)
    print(table(results, methods))
    print(
        f"\n{len(results)} runs, {time.perf_counter() - started:.0f}s; test accuracy % "
        f"(mean ± std over {args.seeds} seeds); alpha {args.alpha}, {args.epochs} epochs, "
        f"lr {args.lr}, weight decay {args.weight_decay}; advmix_new gamma {args.adv_gamma}, "
        f"bound {args.adv_bound}, {args.adv_steps} step(s), layer "
        f"{args.adv_layer if args.adv_layer is not None else 'hidden'}; "
        f"{args.synthetic} generated rows per class"
    )


if __name__ == "__main__":
    main()
