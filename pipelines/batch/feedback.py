"""`raysift feedback IN OUT`: a person's check of detections -> training annotations, as a job.

IN is a Parquet file or directory of rows in `operators.feedback.INPUT_SCHEMA`; OUT is a
directory of Parquet files, one row per image (see `operators.feedback`). The lead CLI calls
`add_commands`; notebooks and jobs call `run_feedback`.
"""

from __future__ import annotations

import argparse
from collections import Counter
from functools import partial

from raysift.commands import add_parser
from raysift.data.parquet import read_parquet
from raysift.operators.contract import data_errors, require_columns
from raysift.operators.feedback import CATEGORIES, INPUT_COLUMNS, check_thresholds, feedback


def run_feedback(
    in_path: str, out_path: str, conf_threshold: float = 0.5, iou_threshold: float = 0.5
) -> dict[str, int]:
    """Annotate every image of `in_path` into `out_path`; returns the images per category."""
    check_thresholds(conf_threshold, iou_threshold)
    ds = read_parquet(in_path)
    require_columns(ds.schema().names, INPUT_COLUMNS, where=str(in_path))
    with data_errors():
        out = feedback(ds, conf_threshold, iou_threshold).materialize()
    out.write_parquet(out_path)
    counts = Counter()
    for batch in out.iter_batches(batch_size=None, batch_format="pyarrow"):
        counts.update(batch["category"].to_pylist())
    return {c: int(counts.get(c, 0)) for c in CATEGORIES}


def _command(args: argparse.Namespace) -> None:
    counts = run_feedback(args.input, args.output, args.conf_threshold, args.iou_threshold)
    summary = ", ".join(f"{n} {c}" for c, n in counts.items())
    print(f"feedback: {sum(counts.values())} images -> {args.output} ({summary})")


def _threshold(text: str, zero_ok: bool) -> float:
    """argparse type: a float in [0, 1] (or (0, 1]), so a bad value is a usage error."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (0.0 <= value <= 1.0 and (zero_ok or value > 0.0)):
        raise argparse.ArgumentTypeError(f"must be in {'[' if zero_ok else '('}0, 1], got {text}")
    return value


def add_commands(subparsers) -> None:
    """Register `feedback` on the CLI's subparsers."""
    p = add_parser(subparsers, "feedback")
    p.add_argument("input", metavar="IN", help="Parquet file or directory of checked images")
    p.add_argument("output", metavar="OUT", help="directory to write the annotations to")
    p.add_argument(
        "--conf-threshold",
        type=partial(_threshold, zero_ok=True),
        default=0.5,
        help="a prediction with at least this score is confident (default 0.5)",
    )
    p.add_argument(
        "--iou-threshold",
        type=partial(_threshold, zero_ok=False),
        default=0.5,
        help="boxes with at least this IoU match (default 0.5)",
    )
    p.set_defaults(func=_command)
