"""`raysift norms | cluster | select | score ... IN OUT`: one operator as a batch job, Parquet in
and out.

IN is a Parquet file or directory, OUT a new directory; both may be local paths or URIs that
pyarrow reads (s3://, gs://, ...). The data streams through Ray Data, so IN may be far larger
than memory. The lead CLI calls `add_commands`; notebooks and jobs call `norms_job`,
`cluster_job`, `select_job` and `score_job`.
"""

from __future__ import annotations

import argparse
import functools
import logging
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import ray
from ray.data.aggregate import Max, Min

from raysift.commands import add_parser, non_negative, positive_float, positive_int
from raysift.config import ConfigError
from raysift.data.parquet import read_parquet
from raysift.data.user_data import Columns, add_column_options, columns_of, read_rows, write
from raysift.operators.cluster import KMeans, drop_near_duplicates
from raysift.operators.contract import ID, LABEL, DataError, X, data_errors
from raysift.operators.counts import group_counts
from raysift.operators.norms import KINDS, Norms, add_norms, class_norm_stats
from raysift.operators.predict import score
from raysift.operators.select import Selection, balanced_draw, random_draw, require
from raysift.training.saved import saved_model

logger = logging.getLogger(__name__)


def _operand(column: str, columns: Columns) -> str:
    """The column an operator works on, after the user's feature column became `x`."""
    return X if column == columns.feature else column


@data_errors()
def norms_job(
    src: str,
    dst: str,
    kind: str = "pixel_weighted_l2",
    channel_weights=None,
    column: str = X,
    columns: Columns = Columns(),
) -> pd.DataFrame | None:
    """Add `norm` to every row; returns the per-class statistics when rows have labels."""
    column = _operand(column, columns)
    ds = read_rows(src, columns, need_features=column == X)
    names = require(ds, [column], where=src)
    write(add_norms(ds, Norms(kind=kind, channel_weights=channel_weights, column=column)), dst)
    return class_norm_stats(read_rows(dst)) if LABEL in names else None


@data_errors()
def cluster_job(
    src: str,
    dst: str,
    k: int,
    column: str = X,
    max_iter: int = 100,
    tol: float = 1e-4,
    mini_batch: int | None = None,
    sample_size: int = 10_000,
    seed: int = 0,
    dedup: float | None = None,
    columns: Columns = Columns(),
) -> KMeans:
    """Fit k-means on `column`, write every row with `cluster` and `dist` (optionally dropping
    near-duplicates within a cluster); returns the fitted model."""
    column = _operand(column, columns)
    ds = read_rows(src, columns, need_features=column == X)
    km = KMeans(
        k,
        max_iter=max_iter,
        tol=tol,
        mini_batch=mini_batch,
        sample_size=sample_size,
        seed=seed,
        column=column,
    ).fit(ds)
    out = km.assign(ds)
    if dedup is not None:
        out = drop_near_duplicates(out, dedup, column=column)
    write(out, dst)
    return km


@data_errors()
def select_job(
    src: str,
    dst: str,
    per_class: int | None = None,
    ratio: float | None = None,
    seed: int = 0,
    kind: str = "pixel_weighted_l2",
    channel_weights=None,
    column: str = X,
    columns: Columns = Columns(),
) -> Selection:
    """Write the rows M1's balanced draw (`per_class`) or a seeded random draw (`ratio`) picks,
    each with a `reason` column; returns the selection."""
    if (per_class is None) == (ratio is None):
        raise ValueError("select_job: give exactly one of per_class and ratio")
    column = _operand(column, columns)
    ds = read_rows(src, columns, need_label=per_class is not None, need_features=column == X)
    if per_class is not None:
        sel = balanced_draw(
            ds, per_class, kind=kind, channel_weights=channel_weights, column=column
        )
    else:
        sel = random_draw(ds, ratio=ratio, seed=seed, reason="random")
    order = np.argsort(sel.ids)
    write(
        ds.map_batches(
            _chosen_rows,
            batch_format="numpy",
            fn_kwargs={"ids": sel.ids[order], "reasons": sel.reasons[order]},
        ),
        dst,
    )
    return sel


def read(src: str) -> ray.data.Dataset:
    """The Parquet dataset at `src` as it is (score keeps the user's column names), or a
    DataError naming the path."""
    try:
        return read_parquet(src)
    except (FileNotFoundError, ValueError) as err:
        raise DataError(f"{src}: no Parquet data to read ({str(err).splitlines()[0]})") from None


def score_job(
    model: str,
    src: str,
    dst: str,
    *,
    with_embedding: bool = False,
    keep_features: bool = False,
    batch_size: int = 1024,
    num_actors: int = 1,
    use_gpu: bool = False,
    column: str = X,
    label_column: str = LABEL,
) -> dict:
    """Write every row of `src` with the model's `loss`, `margin`, `pred`, `correct` (when
    rows have labels) and optionally `embedding` (operators/predict.py), on an actor pool;
    `model` is a run directory or a model file a run wrote. Returns the model's spec."""
    _, spec = saved_model(model)  # a bad model path fails before anything is read
    ds = read(src)
    require(ds, [column], where=src)
    if use_gpu and ray.cluster_resources().get("GPU", 0) < 1:
        raise ConfigError("--use-gpu: the Ray cluster has no GPU")
    _check_scorable(ds, src, column, label_column, spec)
    write(
        score(
            ds,
            functools.partial(_model_of, str(Path(model).resolve())),
            batch_size=batch_size,
            num_actors=num_actors,
            use_gpu=use_gpu,
            with_embedding=with_embedding,
            keep_features=keep_features,
            column=column,
            label_column=label_column,
            x_shape=tuple(spec["x_shape"]),
        ),
        dst,
    )
    return spec


def _check_scorable(
    ds: ray.data.Dataset, src: str, column: str, label_column: str, spec: dict
) -> None:
    """Refuse rows the model cannot take, before the scoring pool starts: a feature row whose
    size is not the model's input, a label outside its classes (one pass over the label column
    alone)."""
    x_shape = tuple(spec["x_shape"])
    first = np.asarray(ds.select_columns([column]).take(1)[0][column])
    if first.size != int(np.prod(x_shape)):
        raise DataError(
            f"{src}: column '{column}': rows of shape {first.shape}, the model takes {x_shape}"
        )
    if label_column in ds.schema().names:
        bounds = ds.select_columns([label_column]).aggregate(Min(label_column), Max(label_column))
        lo, hi = bounds[f"min({label_column})"], bounds[f"max({label_column})"]
        if lo < 0 or hi >= spec["num_classes"]:
            raise DataError(
                f"{src}: column '{label_column}': label {lo if lo < 0 else hi} is "
                f"outside the model's {spec['num_classes']} classes"
            )


def _model_of(path: str):
    """The model alone, built once in each scoring actor."""
    return saved_model(path)[0]


def _chosen_rows(batch: dict, ids: np.ndarray, reasons: np.ndarray) -> dict:
    """The batch's rows whose id is in the sorted `ids`, with their reason."""
    pos = np.searchsorted(ids, batch[ID])
    hit = pos < len(ids)
    hit[hit] = ids[pos[hit]] == batch[ID][hit]
    out = {k: v[hit] for k, v in batch.items()}
    out["reason"] = reasons[pos[hit]].astype(str)
    return out


def show_progress() -> None:
    """Log lines from the operators and the batch jobs on stderr, beside Ray Data's bars."""
    log = logging.getLogger("raysift")
    if not any(isinstance(h, _Stderr) for h in log.handlers):
        handler = _Stderr()
        handler.setFormatter(logging.Formatter("raysift: %(message)s"))
        log.addHandler(handler)
    log.setLevel(logging.INFO)


class _Stderr(logging.StreamHandler):
    """A handler on whatever `sys.stderr` is when a line is logged: a notebook or a test may
    swap it after the handler was added."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _):
        pass


def _norms_command(args: argparse.Namespace) -> None:
    show_progress()
    stats = norms_job(
        args.input, args.output, args.kind, args.channel_weights, args.column, columns_of(args)
    )
    print(f"norms: {args.kind} of '{args.column}' -> {args.output}")
    if stats is not None:
        print(stats.to_string(index=False))


def _cluster_command(args: argparse.Namespace) -> None:
    show_progress()
    km = cluster_job(
        args.input,
        args.output,
        args.k,
        args.column,
        args.max_iter,
        args.tol,
        args.mini_batch,
        args.sample_size,
        args.seed,
        args.dedup,
        columns_of(args),
    )
    print(
        f"cluster: k={args.k}, {km.n_iter_} step(s), inertia {km.inertia_:.6g}, "
        f"cluster sizes {km.counts_.tolist()} -> {args.output}"
    )


def _select_command(args: argparse.Namespace) -> None:
    show_progress()
    sel = select_job(
        args.input,
        args.output,
        args.per_class,
        args.ratio,
        args.seed,
        args.kind,
        args.channel_weights,
        args.column,
        columns_of(args),
    )
    print(f"select: {len(sel)} rows -> {args.output}")
    for note in sel.notes:
        print(f"  note: {note}")


def _score_command(args: argparse.Namespace) -> None:
    show_progress()
    score_job(
        args.model,
        args.input,
        args.output,
        with_embedding=args.embedding,
        keep_features=args.keep_features,
        batch_size=args.batch_size,
        num_actors=args.num_actors,
        use_gpu=args.use_gpu,
        column=args.feature_column,
        label_column=args.label_column,
    )
    scored = read(args.output)
    if "correct" in scored.schema().names:
        counts = {right: n for (right,), n in group_counts(scored, ["correct"]).items()}
        print(
            f"score: {sum(counts.values())} rows, {counts.get(False, 0)} mispredicted "
            f"-> {args.output}"
        )
    else:
        print(
            f"score: {scored.count()} rows, no labels: scored against the model's "
            f"predictions -> {args.output}"
        )


def _ratio(text: str) -> float:
    value = positive_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def _weights(text: str) -> list[float]:
    try:
        return [float(w) for w in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, e.g. 0.299,0.587,0.114; got {text!r}"
        ) from None


def _io_and_norm_options(p: argparse.ArgumentParser, norm_help: str) -> None:
    p.add_argument("input", metavar="IN", help="Parquet file or directory (path or URI)")
    p.add_argument("output", metavar="OUT", help="new directory for the Parquet output")
    p.add_argument(
        "--column", default=X, help=f"the column the norm is taken of (default {X}: the features)"
    )
    p.add_argument("--kind", choices=KINDS, default="pixel_weighted_l2", help=norm_help)
    p.add_argument(
        "--channel-weights",
        type=_weights,
        metavar="W1,W2,...",
        help="per-channel weights for pixel_weighted_l2 (default: 1 for one channel, "
        "luminance for three, the mean otherwise)",
    )
    add_column_options(p)


def add_commands(subparsers) -> None:
    """Register `norms`, `cluster`, `select` and `score` on the CLI's subparsers."""
    p = add_parser(subparsers, "norms")
    _io_and_norm_options(p, "which norm (default pixel_weighted_l2)")
    p.set_defaults(func=_norms_command)

    p = add_parser(subparsers, "cluster")
    p.add_argument("input", metavar="IN", help="Parquet file or directory (path or URI)")
    p.add_argument("output", metavar="OUT", help="new directory for the Parquet output")
    p.add_argument("--k", type=positive_int, required=True, help="number of clusters")
    p.add_argument("--column", default=X, help=f"feature column, e.g. embedding (default {X})")
    p.add_argument("--max-iter", type=positive_int, default=100, help="default 100")
    p.add_argument(
        "--tol",
        type=non_negative,
        default=1e-4,
        help="stop when the centre shift is below tol x mean variance (default 1e-4)",
    )
    p.add_argument(
        "--mini-batch",
        type=positive_int,
        help="rows per mini-batch step (default: full Lloyd passes)",
    )
    p.add_argument(
        "--sample-size",
        type=positive_int,
        default=10_000,
        help="rows the k-means++ initialisation sees (default 10000)",
    )
    p.add_argument("--seed", type=int, default=0, help="default 0")
    p.add_argument(
        "--dedup",
        type=positive_float,
        metavar="THRESHOLD",
        help="drop rows closer than THRESHOLD to a kept row of their cluster",
    )
    add_column_options(p)
    p.set_defaults(func=_cluster_command)

    p = add_parser(subparsers, "select")
    _io_and_norm_options(
        p, "norm for --per-class when IN has no norm column (default pixel_weighted_l2)"
    )
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument(
        "--per-class",
        type=positive_int,
        metavar="M",
        help="M per class, half above and half below the class mean norm",
    )
    how.add_argument("--ratio", type=_ratio, help="a seeded uniform draw of this fraction")
    p.add_argument("--seed", type=int, default=0, help="seed of --ratio (default 0)")
    p.set_defaults(func=_select_command)

    p = add_parser(
        subparsers,
        "score",
        description="Score every row of IN with a model a raysift run trained, on a Ray Data "
        "actor pool: an active-learning query from a model you already have. "
        "Without a label column each row is scored against the model's own "
        "prediction (loss = -log p(pred), margin = p(pred) - p(runner-up)).",
        epilog="example: raysift score runs/demo/m2 pool.parquet scored/ --embedding",
    )
    p.add_argument(
        "model",
        metavar="MODEL",
        help="a run directory (its final/model.pt) or a model file a run wrote",
    )
    p.add_argument("input", metavar="IN", help="Parquet file or directory (path or URI)")
    p.add_argument("output", metavar="OUT", help="new directory for the Parquet output")
    p.add_argument(
        "--feature-column",
        default=X,
        help=f"default {X}; flat rows are reshaped to the model's input shape",
    )
    p.add_argument("--label-column", default=LABEL, help=f"default {LABEL}")
    p.add_argument(
        "--embedding",
        action="store_true",
        help="also write the model's embedding (the input of its last stage)",
    )
    p.add_argument("--keep-features", action="store_true", help="keep the feature column")
    p.add_argument("--batch-size", type=positive_int, default=1024, help="default 1024")
    p.add_argument("--num-actors", type=positive_int, default=1, help="default 1")
    p.add_argument("--use-gpu", action="store_true", help="one GPU per scoring actor")
    p.set_defaults(func=_score_command)
