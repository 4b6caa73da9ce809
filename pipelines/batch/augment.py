"""`raysift augment | mixup | smote | dedup IN OUT`: offline augmentation as batch jobs.

Each reads a user's Parquet through `user_data.read_rows` (the `source` column options, ids
assigned when there are none) and writes the data contract plus `source` ("real" or the rule
that made the row), `parent_ids` (the rows it was made from) and, where labels mix (mixup,
cutmix, pairing), `y_soft`: the real rows first, then the new ones (`--new-only`: the new
ones alone). `dedup` writes the rows it keeps, their columns as they were.

New ids are `offset + copy * stride + parent id` (operators.augment.IdScheme) with the stride
the smallest power of two, at least 2**32, above every id of the input: chained jobs (augment,
then mixup) never collide. Rows are mixed with partners from the same batch of `--batch-size`
consecutive rows, so shuffle a file that is sorted by class first. The jobs set Ray Data's
`preserve_order`, which makes the batches, and so the output, the same for a seed in every run.

From Python, on a `ray.data.Dataset` in the contract, each is one call of the operator:
`mix_dataset(ds, Mixup(alpha=1.0), num_classes=10, seed=0, ids=IdScheme(2**32))`,
`augment_dataset(ds, Compose([(Flip(), 0.5)]), seed=0, ids=IdScheme(2**32))`,
`smote_dataset(ds, seed=0, ids=IdScheme(2**32))`, `dedup(ds, threshold=0.5, k=10)`.
"""

from __future__ import annotations

import argparse
import inspect
import logging

import yaml
from ray.data import DataContext
from ray.data.context import ShuffleStrategy

from raysift.batch.operator import read, show_progress
from raysift.commands import add_parser, non_negative, positive_float, positive_int
from raysift.config import AugmentConfig, ConfigError
from raysift.data.user_data import (
    Columns,
    add_column_options,
    column_max,
    columns_of,
    read_rows,
    row_count,
    write,
)
from raysift.operators.augment import IdScheme, augment_dataset, tag_real
from raysift.operators.cluster import KMeans, drop_near_duplicates
from raysift.operators.contract import DataError, X, data_errors
from raysift.operators.counts import group_counts
from raysift.operators.mixup import (
    SMOTE_BLOCK_ROWS,
    CutMix,
    Mixup,
    SamplePairing,
    mix_dataset,
    smote_dataset,
)
from raysift.training.loss import TRANSFORMS, build_transforms

logger = logging.getLogger(__name__)

MIXERS = {"mixup": Mixup, "cutmix": CutMix, "pairing": SamplePairing}
DEDUP_ROWS_PER_CLUSTER = 2000  # dedup's default k: a cluster's rows are compared in one task


def parse_transforms(text: str):
    """`flip,rotate:15,noise:0.05@0.5` -> one Compose: `name[:value][@p]`, the value setting
    the transform's first option (as in the job's `augment.transforms`), p its probability
    (default 1)."""
    specs = []
    for item in filter(None, (t.strip() for t in text.split(","))):
        head, _, p = item.partition("@")
        name, sep, value = head.partition(":")
        spec = {"name": name}
        if name in TRANSFORMS and sep:
            first = next(iter(_options(TRANSFORMS[name])), None)
            if first is None:
                raise ConfigError(f"--transforms {item!r}: {name} takes no value")
            spec[first] = yaml.safe_load(value)
        if p:
            spec["p"] = yaml.safe_load(p)
        specs.append(spec)
    if not specs:
        raise ConfigError("--transforms: name at least one, e.g. flip,rotate:15,noise:0.05")
    try:
        return build_transforms(AugmentConfig(transforms=specs))
    except ConfigError as err:
        raise ConfigError(f"--transforms {text!r}: {err}") from None


def _options(cls) -> list[str]:
    return list(inspect.signature(cls).parameters)


def id_scheme(src: str, columns: Columns) -> IdScheme:
    """Ids clear of every id in `src`: the stride a power of two above the largest."""
    top = column_max(src, columns.id)
    if top is None:
        top = row_count(src) - 1
    stride = 2 ** max(32, int(top).bit_length())
    return IdScheme(offset=stride, stride=stride)


def _num_classes(src: str, columns: Columns, given: int | None) -> int:
    top = column_max(src, columns.label)
    if given is None:
        return top + 1
    if top >= given:
        raise DataError(
            f"{src}: --label-column {columns.label!r} holds label {top}, outside "
            f"--num-classes {given}"
        )
    return given


def _batch_context() -> None:
    """Ray Data's settings for the batch jobs: rows in a fixed order (the same seed gives the
    same output), and SMOTE's grouping by a sort-based shuffle, whose tasks hold a range of
    blocks each (the hash shuffle's held more of the set in one worker: benchmarks/
    bench_smote.py)."""
    ctx = DataContext.get_current()
    ctx.execution_options.preserve_order = True
    ctx.shuffle_strategy = ShuffleStrategy.SORT_SHUFFLE_PULL_BASED


def _with_real(ds, new, new_only: bool, num_classes: int | None = None):
    return new if new_only else tag_real(ds, num_classes).union(new)


@data_errors()
def augment_job(
    src: str,
    dst: str,
    transforms: str,
    *,
    copies: int = 1,
    seed: int = 0,
    new_only: bool = False,
    batch_size: int = 1024,
    columns: Columns = Columns(),
) -> None:
    """`copies` augmented rows per input row (source "augment", parent_ids [the row])."""
    transform = parse_transforms(transforms)
    _batch_context()
    ds = read_rows(src, columns, need_label=True)
    new = augment_dataset(
        ds, transform, seed=seed, ids=id_scheme(src, columns), copies=copies, batch_size=batch_size
    )
    write(_with_real(ds, new, new_only), dst)


@data_errors()
def mixup_job(
    src: str,
    dst: str,
    kind: str = "mixup",
    *,
    alpha: float = 1.0,
    copies: int = 1,
    seed: int = 0,
    num_classes: int | None = None,
    new_only: bool = False,
    batch_size: int = 1024,
    columns: Columns = Columns(),
) -> int:
    """`copies` mixed rows per input row, each with its partner from the same batch (source
    the kind, parent_ids [row, partner], y_soft); returns the number of classes."""
    if kind not in MIXERS:
        raise ConfigError(f"--kind: got {kind!r}, expected one of {', '.join(MIXERS)}")
    mixer = SamplePairing() if kind == "pairing" else MIXERS[kind](alpha)
    _batch_context()
    ds = read_rows(src, columns, need_label=True)
    k = _num_classes(src, columns, num_classes)
    new = mix_dataset(
        ds,
        mixer,
        num_classes=k,
        seed=seed,
        ids=id_scheme(src, columns),
        copies=copies,
        batch_size=batch_size,
    )
    write(_with_real(ds, new, new_only, k), dst)
    return k


@data_errors()
def smote_job(
    src: str,
    dst: str,
    *,
    target: int | None = None,
    k: int = 5,
    seed: int = 0,
    new_only: bool = False,
    block_rows: int = SMOTE_BLOCK_ROWS,
    columns: Columns = Columns(),
) -> None:
    """SMOTE rows bringing every class to `target` rows (None: the largest class's count);
    source "smote", parent_ids [anchor, neighbour]; neighbours within blocks of `block_rows`
    rows of a class (operators.mixup.smote_dataset)."""
    _batch_context()
    ds = read_rows(src, columns, need_label=True)
    new = smote_dataset(
        ds, seed=seed, ids=id_scheme(src, columns), target=target, k=k, block_rows=block_rows
    )
    write(_with_real(ds, new, new_only), dst)


def dedup(ds, threshold: float, k: int, *, seed: int = 0, column: str = X):
    """The rows of `ds` that are not within `threshold` (Euclidean) of a row kept before them
    in their k-means cluster (operators.cluster.drop_near_duplicates), columns as they were."""
    km = KMeans(k, seed=seed, column=column).fit(ds)
    kept = drop_near_duplicates(km.assign(ds), threshold, column=column)
    return kept.drop_columns(["cluster", "dist"])


@data_errors()
def dedup_job(
    src: str,
    dst: str,
    threshold: float,
    *,
    k: int | None = None,
    seed: int = 0,
    columns: Columns = Columns(),
) -> int:
    """Write the rows `dedup` keeps; returns k."""
    _batch_context()
    ds = read_rows(src, columns)
    k = k or max(1, -(-row_count(src) // DEDUP_ROWS_PER_CLUSTER))
    write(dedup(ds, threshold, k, seed=seed), dst)
    return k


# ---- the command line ---------------------------------------------------------------------


def _summary(name: str, dst: str) -> None:
    if name == "dedup":
        print(f"{name}: {read(dst).count()} rows kept -> {dst}")
        return
    counts = {source: n for (source,), n in group_counts(read(dst), ["source"]).items()}
    order = sorted(counts, key=lambda source: (source != "real", source))
    print(f"{name}: {', '.join(f'{counts[s]} {s}' for s in order)} -> {dst}")


def _generating(job, name: str, *options: str):
    """The command that runs `job(IN, OUT, **options, columns=...)`, the options being the
    parsed ones of those names, then counts the rows by source."""

    def command(args) -> None:
        show_progress()
        chosen = {option: getattr(args, option) for option in options}
        job(args.input, args.output, **chosen, columns=columns_of(args))
        _summary(name, args.output)

    return command


def _dedup_command(args) -> None:
    show_progress()
    k = dedup_job(
        args.input, args.output, args.threshold, k=args.k, seed=args.seed, columns=columns_of(args)
    )
    print(f"dedup: k={k}, threshold {args.threshold}")
    _summary("dedup", args.output)


def _common(p: argparse.ArgumentParser, generated: bool = True) -> None:
    p.add_argument("input", metavar="IN", help="Parquet file, folder, glob or URI")
    p.add_argument("output", metavar="OUT", help="new directory for the Parquet output")
    p.add_argument("--seed", type=int, default=0, help="default 0")
    if generated:
        p.add_argument(
            "--new-only",
            action="store_true",
            help="write only the new rows (default: the real rows, then the new)",
        )
    add_column_options(p)


def add_commands(subparsers) -> None:
    """Register `augment`, `mixup`, `smote` and `dedup` on the CLI's subparsers."""
    fmt = argparse.RawDescriptionHelpFormatter
    p = add_parser(
        subparsers,
        "augment",
        formatter_class=fmt,
        description="Write COPIES augmented rows per row: source 'augment', parent_ids [row].",
        epilog="example:\n  raysift augment train.parquet aug/ --transforms "
        "flip@0.5,rotate:15,noise:0.05 --copies 4\n"
        f"transforms: {', '.join(TRANSFORMS)}; name:value sets the first option, "
        "@p the probability (default 1)",
    )
    _common(p)
    p.add_argument("--transforms", required=True, metavar="NAME[:V][@P],...")
    p.add_argument("--copies", type=positive_int, default=1, help="default 1")
    p.add_argument("--batch-size", type=positive_int, default=1024, help="default 1024")
    p.set_defaults(
        func=_generating(
            augment_job, "augment", "transforms", "copies", "seed", "new_only", "batch_size"
        )
    )

    p = add_parser(
        subparsers,
        "mixup",
        formatter_class=fmt,
        description="Write COPIES mixed rows per row, each with a partner from the same batch "
        "of --batch-size consecutive rows (shuffle a class-sorted file first): "
        "source the kind, parent_ids [row, partner], y_soft the mixed labels.",
        epilog="example:\n  raysift mixup train.parquet mixed/ --kind mixup --alpha 0.4 --copies 2",
    )
    _common(p)
    p.add_argument("--kind", choices=sorted(MIXERS), default="mixup", help="default mixup")
    p.add_argument(
        "--alpha", type=positive_float, default=1.0, help="lam ~ Beta(alpha, alpha) (default 1)"
    )
    p.add_argument("--copies", type=positive_int, default=1, help="default 1")
    p.add_argument(
        "--num-classes", type=positive_int, help="width of y_soft (default: the largest label + 1)"
    )
    p.add_argument(
        "--batch-size",
        type=positive_int,
        default=1024,
        help="rows a partner is drawn from (default 1024)",
    )
    p.set_defaults(
        func=_generating(
            mixup_job,
            "mixup",
            *("kind", "alpha", "copies", "seed", "num_classes", "new_only", "batch_size"),
        )
    )

    p = add_parser(
        subparsers,
        "smote",
        formatter_class=fmt,
        description="Write SMOTE rows a + u (nn - a) within each class: source 'smote', "
        "parent_ids [anchor, neighbour].",
        epilog="example:\n  raysift smote longtail.parquet balanced/ --balance --k 5",
    )
    _common(p)
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--target", type=positive_int, help="rows every class gets")
    how.add_argument("--balance", action="store_true", help="every class up to the largest")
    p.add_argument("--k", type=positive_int, default=5, help="neighbours (default 5)")
    p.add_argument(
        "--block-rows",
        type=positive_int,
        default=SMOTE_BLOCK_ROWS,
        help="a larger class is cut into blocks of about this many rows (a seeded "
        "hash of the id) and neighbours are searched within a block "
        f"(default {SMOTE_BLOCK_ROWS})",
    )
    p.set_defaults(
        func=_generating(smote_job, "smote", "target", "k", "seed", "new_only", "block_rows")
    )

    p = add_parser(
        subparsers,
        "dedup",
        formatter_class=fmt,
        description="Keep a row unless it lies within THRESHOLD (Euclidean, on x) of a row "
        "kept before it in its k-means cluster.",
        epilog="example:\n  raysift dedup aug/ deduped/ --threshold 0.5 --k 100",
    )
    _common(p, generated=False)
    p.add_argument("--threshold", type=non_negative, required=True)
    p.add_argument(
        "--k", type=positive_int, help=f"clusters (default: one per {DEDUP_ROWS_PER_CLUSTER} rows)"
    )
    p.set_defaults(func=_dedup_command)
