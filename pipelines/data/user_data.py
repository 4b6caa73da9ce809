"""A user's own Parquet as the data contract, and outputs that are never half written: what
every batch job (`raysift norms`, `cluster`, `select`, `augment`, `mixup`, `smote`, `dedup`)
reads and writes through.

`read_rows` takes the column options a job's `source` takes (label, feature and id column, a
shape for flat rows) and gives a Ray Dataset with `id`, `label` and `x` in place of the user's
columns, every other column passed through. It checks rows with ingest's checker, so a bad row
is named by its file and row, and assigns ids when the data has none: a row's position in
the files (sorted by path) counted across them, as ingest numbers them, whichever task reads
it. One read task per row group, streamed in batches: no task holds more than one batch.

`write` writes into a hidden folder beside the output and moves it into place only once every
row is written, so a failed job leaves nothing at OUT.
"""

from __future__ import annotations

import argparse
import logging
import os
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray
from ray.data.extensions import ArrowTensorArray

from raysift.config import ConfigError, SourceConfig
from raysift.data.ingest import Checker
from raysift.data.sources import filesystem, list_files, parquet_chunks, reading_parquet
from raysift.operators.contract import ID, LABEL, DataError, X, data_errors, require_columns

logger = logging.getLogger(__name__)

READ_ROWS = 4096  # rows per batch a read task hands on
_NO_SPLIT = "\0"  # batch jobs pass a split column through instead of reading it


@dataclass(frozen=True)
class Columns:
    """Which of the user's columns are the contract's `label`, `x` and `id`, and the shape flat
    feature rows take (the `source.*_column` and `source.shape` options of a job)."""

    label: str = LABEL
    feature: str = X
    id: str = ID
    shape: tuple | None = None

    def source(self, path: str) -> SourceConfig:
        return SourceConfig(
            kind="parquet",
            path=path,
            label_column=self.label,
            feature_column=self.feature,
            id_column=self.id,
            split_column=_NO_SPLIT,
            shape=list(self.shape) if self.shape else None,
        )


def read_rows(
    src: str,
    columns: Columns = Columns(),
    *,
    need_label: bool = False,
    need_features: bool = True,
    rows_per_batch: int = READ_ROWS,
) -> ray.data.Dataset:
    """The Parquet files at `src` (a file, folder, glob or URI) as the data contract: a
    missing needed column, a bad label or feature row is a DataError naming the file (and row,
    raised when the rows are read)."""
    try:
        fs, files = list_files(src, (".parquet", ".pq"))
    except DataError as err:
        raise DataError(f"{src}: no Parquet data to read ({err})") from None
    pieces, first_id, id_in = [], 0, None
    for path in files:
        with reading_parquet(path):
            md = pq.ParquetFile(path, filesystem=fs).metadata
        names = md.schema.to_arrow_schema().names
        if need_label:
            require_columns(names, [columns.label], where=f"{path}: --label-column")
        if need_features:
            require_columns(names, [columns.feature], where=f"{path}: --feature-column")
        has_id = columns.id in names
        if id_in is None:
            id_in = (has_id, path)
        elif id_in[0] != has_id:
            have, lack = (path, id_in[1]) if has_id else (id_in[1], path)
            raise DataError(
                f"--id-column {columns.id!r} is in {have} but not in {lack}: "
                f"every file needs it, or none"
            )
        row = 0
        for g in range(md.num_row_groups):
            rows = md.row_group(g).num_rows
            if rows:
                pieces.append(
                    {"path": path, "row_group": g, "first_row": row, "first_id": first_id + row}
                )
            row += rows
        first_id += row
    if not pieces:
        raise DataError(f"{src}: no rows to read")
    ds = ray.data.from_items(pieces, override_num_blocks=len(pieces))
    return ds.map_batches(
        _read_piece,
        batch_size=1,
        batch_format="pandas",
        fn_kwargs={"src": src, "columns": columns, "rows_per_batch": rows_per_batch},
    )


def column_max(src: str, column: str) -> int | None:
    """The largest value of one integer column of the files at `src`, read alone; None when the
    files lack it."""
    fs, files = list_files(src, (".parquet", ".pq"))
    top = None
    for path in files:
        with pq.ParquetFile(path, filesystem=fs) as pf:
            if column not in pf.schema_arrow.names:
                return None
            for batch in pf.iter_batches(columns=[column]):
                if batch.num_rows:
                    m = pa.compute.max(batch.column(0)).as_py()
                    top = m if top is None or (m is not None and m > top) else top
    return None if top is None else int(top)


def row_count(src: str) -> int:
    """Rows in the files at `src`, from their footers."""
    fs, files = list_files(src, (".parquet", ".pq"))
    return sum(pq.ParquetFile(f, filesystem=fs).metadata.num_rows for f in files)


def _read_piece(piece, src: str, columns: Columns, rows_per_batch: int):
    """One row group's rows, batch by batch, in the contract's columns."""
    p = piece.iloc[0]
    fs, _ = filesystem(src)
    checker = Checker(columns.source(src))
    checker.next_id = int(p["first_id"])
    with pq.ParquetFile(p["path"], filesystem=fs) as pf:
        for chunk in parquet_chunks(
            pf,
            p["path"],
            checker.cfg,
            rows_per_batch,
            row_groups=[int(p["row_group"])],
            first_row=int(p["first_row"]),
            keep_rest=True,
        ):
            try:
                ids, labels, x, _ = checker.check(chunk)
            except ConfigError as err:  # a --shape that does not fit: bad input for this job
                raise DataError(str(err).replace("source.shape", "--shape")) from None
            out = {ID: pa.array(ids, pa.int64())}
            if labels is not None:
                out[LABEL] = pa.array(labels, pa.int64())
            if x is not None:
                out[X] = ArrowTensorArray.from_numpy(np.ascontiguousarray(x))
            for name in chunk.rest.schema.names if chunk.rest is not None else ():
                if name in out:
                    raise DataError(
                        f"{p['path']}: column {name!r} is there beside the column "
                        f"named as the contract's {name!r}; rename one of them"
                    )
                out[name] = chunk.rest.column(name)
            yield pa.table(out)
        checker.check_unique_ids()


def write(ds: ray.data.Dataset, dst: str) -> None:
    """Write `ds` as Parquet files into the new or empty directory `dst`: first into a hidden
    folder beside it, moved into place once every row is written."""
    fs, path = filesystem(dst)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.File or (
        info.type == pafs.FileType.Directory
        and fs.get_file_info(pafs.FileSelector(path, recursive=False))
    ):
        raise DataError(f"{dst}: output already exists; choose a new or empty directory")
    parent, name = os.path.split(path.rstrip("/"))
    tmp = f"{parent}/.{name}.partial-{os.getpid()}"
    tmp_uri = tmp if "://" not in dst else dst.split("://")[0] + "://" + tmp.lstrip("/")
    logger.info("writing %s", dst)
    try:
        with data_errors():
            ds.write_parquet(tmp_uri)
        if info.type == pafs.FileType.Directory:
            fs.delete_dir(path)
        fs.move(tmp, path)
    finally:
        if fs.get_file_info(tmp).type != pafs.FileType.NotFound:
            fs.delete_dir(tmp)


def _shape(text: str) -> tuple:
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated sizes, e.g. 1,28,28; got {text!r}"
        ) from None
    if min(shape) < 1:
        raise argparse.ArgumentTypeError(f"sizes must be >= 1, got {text}")
    return shape


def add_column_options(p: argparse.ArgumentParser) -> None:
    """`--label-column`, `--feature-column`, `--id-column`, `--shape`: a job's `source` options."""
    p.add_argument("--label-column", default=LABEL, help=f"the labels (default {LABEL})")
    p.add_argument(
        "--feature-column",
        default=X,
        help=f"the features, a tensor or (nested) list column (default {X})",
    )
    p.add_argument(
        "--id-column",
        default=ID,
        help=f"unique integer ids (default {ID}); without it rows are numbered in file order",
    )
    p.add_argument(
        "--shape", type=_shape, metavar="D1,D2,...", help="reshape flat feature rows, e.g. 1,28,28"
    )


def columns_of(args: argparse.Namespace) -> Columns:
    return Columns(args.label_column, args.feature_column, args.id_column, args.shape)
