"""Readers, one per source format, that stream raw chunks of label / x [/ id] [/ split].

A reader only decodes its format. It yields `Chunk`s of NumPy arrays that say which file and row
they came from, so that `ingest` can check the values and name the place of a bad one. Readers of
user data (parquet, idx, imagefolder, text) hold one chunk at a time, never the whole dataset.
The text reader's `x` holds strings; ingest turns them into token ids.
"""

from __future__ import annotations

import fnmatch
import math
import os
import random
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray
import ray.data.extensions  # noqa: F401  registers Ray's tensor types, so Parquet reads them back

from raysift.config import ConfigError, SourceConfig
from raysift.operators.contract import DataError, X, data_errors, require_columns

SPLITS = ("train", "val", "test")
PROVENANCE = ("source", "parent_ids", "y_soft")  # what the offline augmentation jobs add
CHUNK_BYTES = 64 << 20  # a chunk's feature bytes stay below this, whatever `chunk_rows` says
MNIST1D_SEED = 42  # the package's own seed: the standard MNIST-1D, whatever the job's seed is
MNIST1D_PART = 60000  # the standard set's size; larger sizes are parts of it with seeds 43, ...
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
_GRAY_MODES = ("1", "L", "LA", "I", "I;16", "F")


@dataclass
class Chunk:
    """Consecutive rows of one file or array, before validation."""

    label: np.ndarray
    x: np.ndarray  # (n, *shape), any numeric dtype
    where: str  # the file (or array) the rows come from
    first_row: int  # the row number of x[0] within `where`
    id: np.ndarray | None = None
    split: np.ndarray | str | None = None  # split names per row, or one name for all rows
    rest: pa.RecordBatch | None = None  # the file's other columns (parquet_chunks, keep_rest)


@dataclass
class Source:
    """An opened source: paths and headers checked, rows read only when `chunks` is iterated."""

    chunks: Iterator[Chunk]
    description: str
    given_splits: frozenset = frozenset()  # the splits the data itself assigns
    class_names: list[str] | None = None


def open_source(cfg: SourceConfig, chunk_rows: int = 4096) -> Source:
    """The reader for `cfg.kind`, opened on `cfg.path`."""
    readers = {
        "mnist1d": read_mnist1d,
        "digits": read_digits,
        "parquet": read_parquet,
        "npz": read_npz,
        "idx": read_idx,
        "imagefolder": read_imagefolder,
        "text": read_text,
    }
    if cfg.kind not in readers:
        raise ConfigError(f"source.kind: got {cfg.kind!r}, expected one of {', '.join(readers)}")
    if cfg.kind not in ("mnist1d", "digits") and not cfg.path:
        raise ConfigError(f"source.path: required for source.kind {cfg.kind!r}")
    return readers[cfg.kind](cfg, chunk_rows)


def _rows_per_chunk(row_bytes: float, chunk_rows: int) -> int:
    return max(1, min(chunk_rows, int(CHUNK_BYTES // max(row_bytes, 1))))


def _array_chunks(label, x, where: str, chunk_rows: int, id=None, split=None):
    step = _rows_per_chunk(x[0].nbytes if len(x) else 1, chunk_rows)
    for s in range(0, len(x), step):
        yield Chunk(
            label[s : s + step],
            x[s : s + step],
            where,
            s,
            None if id is None else id[s : s + step],
            split,
        )


# ---- built-in data ---------------------------------------------------------------------------


def read_mnist1d(cfg: SourceConfig, chunk_rows: int) -> Source:
    """MNIST-1D with its own 80/20 train/test split; x is (1, 40): one channel for a 1-D CNN.

    Up to MNIST1D_PART samples it is the package's standard set (seed 42); a larger size is made
    of parts of that size with seeds 42, 43, ..., generated and cached one at a time, so that
    no process holds more than one part."""
    if cfg.num_samples < 10:
        raise ConfigError(
            f"source.num_samples: got {cfg.num_samples}, expected >= 10 (one per class at least)"
        )
    sizes = [
        min(MNIST1D_PART, cfg.num_samples - start)
        for start in range(0, cfg.num_samples, MNIST1D_PART)
    ]

    def chunks():
        for part, size in enumerate(sizes):
            data = _mnist1d_arrays(size, MNIST1D_SEED + part)
            for split, suffix in (("train", ""), ("test", "_test")):
                x = data["x" + suffix].astype(np.float32)[:, None, :]
                yield from _array_chunks(
                    data["y" + suffix], x, f"mnist1d {split}", chunk_rows, split=split
                )

    parts = f", {len(sizes)} parts of up to {MNIST1D_PART}" if len(sizes) > 1 else ""
    return Source(
        chunks(),
        f"mnist1d (num_samples={cfg.num_samples}, seed {MNIST1D_SEED}{parts})",
        frozenset({"train", "test"}),
        [str(c) for c in range(10)],
    )


def cache_dir() -> Path:
    """raysift's download and generated-data cache (under $XDG_CACHE_HOME or ~/.cache)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "raysift"


def _mnist1d_arrays(num_samples: int, seed: int) -> dict:
    """Generated once per size and seed and kept as .npz: 60,000 samples take ~14 s to make."""
    path = cache_dir() / f"mnist1d-n{num_samples}-seed{seed}.npz"
    if path.exists():
        with np.load(path) as f:
            return {k: f[k] for k in f.files}
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples, args.seed = num_samples, seed
    np_state, py_state = np.random.get_state(), random.getstate()  # it seeds the global RNGs
    try:
        made = make_dataset(args)
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    arrays = {k: np.asarray(made[k]) for k in ("x", "y", "x_test", "y_test")}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)
    return arrays


def read_digits(cfg: SourceConfig, chunk_rows: int) -> Source:
    """scikit-learn's 8x8 digits, scaled from 0..16 to [0, 1]; no given test split."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    return Source(
        _array_chunks(d.target, x, "digits", chunk_rows),
        f"digits (scikit-learn, {len(x)} images 8x8)",
        class_names=[str(c) for c in d.target_names],
    )


# ---- finding user files ----------------------------------------------------------------------


def filesystem(path: str) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem for a local path or URI; fsspec serves schemes pyarrow lacks."""
    if "://" not in path:
        return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(path))
    try:
        return pafs.FileSystem.from_uri(path)
    except pa.ArrowInvalid:
        import fsspec

        fs, root = fsspec.core.url_to_fs(path)
        return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), root
    except OSError as e:
        raise DataError(f"source.path: cannot open {path}: {e}") from e


def list_files(path: str, suffixes: tuple[str, ...]) -> tuple[pafs.FileSystem, list[str]]:
    """The files `path` names, sorted: a file, a folder's files ending in `suffixes`, or a glob."""
    fs, root = filesystem(path)
    if any(c in root for c in "*?["):
        parts = root.split("/")
        first_glob = next(i for i, p in enumerate(parts) if any(c in p for c in "*?["))
        base = "/".join(parts[:first_glob]) or "/"
        infos = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
        files = sorted(
            i.path
            for i in infos
            if i.is_file
            and fnmatch.fnmatchcase(i.path, root)
            and ("**" in root or i.path.count("/") == root.count("/"))
        )
        if not files:
            raise DataError(f"source.path: the glob {path!r} matches no files")
        return fs, files
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        raise DataError(f"source.path: {path} does not exist")
    if info.type == pafs.FileType.File:
        return fs, [root]
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    files = sorted(
        i.path
        for i in infos
        if i.is_file and i.base_name.endswith(suffixes) and not _hidden(i.path[len(root) :])
    )
    if not files:
        raise DataError(f"source.path: no {' / '.join(suffixes)} files under {path}")
    return fs, files


def _hidden(relative: str) -> bool:
    return any(p.startswith((".", "_")) for p in relative.split("/") if p)


# ---- Parquet ---------------------------------------------------------------------------------


def read_parquet(cfg: SourceConfig, chunk_rows: int) -> Source:
    """Parquet files read in record batches; features as a tensor column or a (nested) list."""
    fs, files = list_files(cfg.path, (".parquet", ".pq"))
    given = set()
    for f in files:
        with reading_parquet(f):
            names = pq.read_schema(f, filesystem=fs).names
        require_columns(names, [cfg.label_column], where=f"{f}: source.label_column")
        require_columns(names, [cfg.feature_column], where=f"{f}: source.feature_column")
        if cfg.split_column in names:
            given |= _split_values(fs, f, cfg.split_column)

    def chunks():
        for f in files:
            with reading_parquet(f), pq.ParquetFile(f, filesystem=fs) as pf:
                yield from parquet_chunks(pf, f, cfg, chunk_rows)

    return Source(
        chunks(), f"parquet {cfg.path} ({len(files)} files)", frozenset(given & set(SPLITS))
    )


@contextmanager
def reading(path: str, what: str, errors=Exception):
    """A decoder's `errors` on a damaged file as a DataError naming the file, not a traceback."""
    try:
        yield
    except errors as e:
        reason = str(e) or type(e).__name__  # PIL raises some (a cut file's) with no message
        raise DataError(f"{path}: not a readable {what} ({reason})") from e


def reading_parquet(path: str):
    """pyarrow raises ArrowInvalid for a file that is not Parquet, OSError for a corrupt one."""
    return reading(path, "Parquet file", (pa.ArrowInvalid, OSError))


def _split_values(fs, path: str, column: str) -> set:
    with reading_parquet(path), pq.ParquetFile(path, filesystem=fs) as pf:
        return {
            v for b in pf.iter_batches(columns=[column]) for v in pc.unique(b.column(0)).to_pylist()
        }


def parquet_chunks(
    pf: pq.ParquetFile,
    path: str,
    cfg: SourceConfig,
    chunk_rows: int,
    *,
    row_groups: list[int] | None = None,
    first_row: int = 0,
    keep_rest: bool = False,
):
    """The file's rows (or those of `row_groups`, whose first row is `first_row` of the file)
    as Chunks; a missing label or feature column gives None there. `rest` holds the
    provenance columns of generated rows (`PROVENANCE`), or with `keep_rest` every other
    column (the batch jobs pass them through)."""
    names = pf.schema_arrow.names
    wanted = [cfg.label_column, cfg.feature_column, cfg.id_column, cfg.split_column]
    columns = (
        None if keep_rest else [c for c in dict.fromkeys(wanted + list(PROVENANCE)) if c in names]
    )
    md = pf.metadata
    row_bytes = sum(md.row_group(i).total_byte_size for i in range(md.num_row_groups))
    rows = _rows_per_chunk(row_bytes / max(md.num_rows, 1), chunk_rows)
    start = first_row
    for batch in pf.iter_batches(batch_size=rows, columns=columns, row_groups=row_groups):
        if not batch.num_rows:
            continue
        has = batch.schema.names
        rest = [c for c in has if c not in wanted]
        yield Chunk(
            label=_numbers(
                batch.column(cfg.label_column), f"{path}: source.label_column {cfg.label_column!r}"
            )
            if cfg.label_column in has
            else None,
            x=_tensor(
                batch.column(cfg.feature_column),
                path,
                start,
                f"source.feature_column {cfg.feature_column!r}",
            )
            if cfg.feature_column in has
            else None,
            where=path,
            first_row=start,
            **_id_and_split(batch, cfg, path),
            rest=batch.select(rest) if rest else None,
        )
        start += batch.num_rows


def _id_and_split(batch: pa.RecordBatch, cfg: SourceConfig, path: str) -> dict:
    """A batch's optional id and split columns as Chunk fields (None where the file has none)."""
    has = batch.schema.names
    return {
        "id": _numbers(batch.column(cfg.id_column), f"{path}: source.id_column {cfg.id_column!r}")
        if cfg.id_column in has
        else None,
        "split": _strings(
            batch.column(cfg.split_column), f"{path}: source.split_column {cfg.split_column!r}"
        )
        if cfg.split_column in has
        else None,
    }


def _numbers(col: pa.Array, what: str) -> np.ndarray:
    """Numeric values as NumPy (nulls become NaN, which `ingest` rejects by row)."""
    t = col.type
    if not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_null(t)):
        raise DataError(f"{what} must hold integers, got type {t}")
    return col.to_numpy(zero_copy_only=False)


def _strings(col: pa.Array, what: str) -> np.ndarray:
    if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
        raise DataError(f"{what} must hold the strings train / val / test, got type {col.type}")
    return col.to_numpy(zero_copy_only=False)


def _tensor(col: pa.Array, path: str, first_row: int, what: str) -> np.ndarray:
    """(n, *shape) from Ray's tensor column or a (nested) list column; ragged rows are errors."""
    if isinstance(col.type, pa.ExtensionType):
        values = col.to_numpy()
        return values if values.dtype != object else _stack(values, path, first_row, what)
    if not _is_list(col.type):
        raise DataError(f"{path}: {what} must be a tensor or list column, got type {col.type}")
    n, dims, values = len(col), [], col
    while _is_list(values.type):
        lengths = pc.list_value_length(values).fill_null(-1).to_numpy(zero_copy_only=False)
        odd = np.flatnonzero((lengths != lengths[0]) | (lengths < 0))
        if len(odd):
            k = int(odd[0])
            row = first_row + k // (len(lengths) // n)
            state = "null" if lengths[k] < 0 else f"of length {lengths[k]}, not {lengths[0]}"
            raise DataError(
                f"{path}: {what} has ragged feature shapes: row {row} holds a list "
                f"{state} (set the rows to one shape)"
            )
        dims.append(int(lengths[0]))
        values = values.flatten()
    return values.to_numpy(zero_copy_only=False).reshape(n, *dims)


def _is_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


def _stack(rows: np.ndarray, where: str, first_row: int, what: str) -> np.ndarray:
    first = np.shape(rows[0])
    for i, r in enumerate(rows):
        if np.shape(r) != first:
            raise DataError(
                f"{where}: {what} has ragged feature shapes: row {first_row + i} has "
                f"shape {np.shape(r)}, row {first_row} {first}"
            )
    return np.stack(rows)


# ---- text (CSV or Parquet) ------------------------------------------------------------------


def read_text(cfg: SourceConfig, chunk_rows: int) -> Source:
    """A string column (`source.text_column`) with integer labels in CSV or Parquet files; the
    chunks' x are the raw strings (an object array), tokenised by ingest."""
    fs, files = list_files(cfg.path, (".csv", ".parquet", ".pq"))
    given = set()
    for f in files:
        names = _table_schema(fs, f).names
        require_columns(names, [cfg.label_column], where=f"{f}: source.label_column")
        require_columns(names, [cfg.text_column], where=f"{f}: source.text_column")
        if cfg.split_column in names:
            given |= {
                v
                for b in _table_batches(fs, f, [cfg.split_column], cfg.split_column)
                for v in pc.unique(b.column(0)).to_pylist()
            }

    def chunks():
        for f in files:
            names = _table_schema(fs, f).names
            wanted = [cfg.label_column, cfg.text_column, cfg.id_column, cfg.split_column]
            columns = [c for c in dict.fromkeys(wanted) if c in names]
            start = 0
            for batch in _table_batches(fs, f, columns, cfg.split_column):
                for s in range(0, batch.num_rows, chunk_rows):
                    part = batch.slice(s, chunk_rows)
                    yield _text_chunk(part, cfg, f, start + s)
                start += batch.num_rows

    return Source(chunks(), f"text {cfg.path} ({len(files)} files)", frozenset(given & set(SPLITS)))


def _is_csv(path: str) -> bool:
    return path.lower().endswith(".csv")


def _open_csv(stream, path: str, columns: list[str] | None, split_column: str):
    import pyarrow.csv as pacsv

    try:
        return pacsv.open_csv(
            stream,
            parse_options=pacsv.ParseOptions(newlines_in_values=True),
            convert_options=pacsv.ConvertOptions(
                include_columns=columns, column_types={split_column: pa.string()}
            ),
        )
    except pa.ArrowInvalid as e:
        raise DataError(f"{path}: not a readable CSV file: {e}") from e


def _table_schema(fs, path: str) -> pa.Schema:
    if not _is_csv(path):
        with reading_parquet(path):
            return pq.read_schema(path, filesystem=fs)
    with fs.open_input_stream(path) as stream:
        return _open_csv(stream, path, None, "").schema


def _table_batches(fs, path: str, columns: list[str], split_column: str):
    """Record batches of `columns` from a CSV or Parquet file."""
    if not _is_csv(path):
        with reading_parquet(path), pq.ParquetFile(path, filesystem=fs) as pf:
            yield from pf.iter_batches(columns=columns)
        return
    with fs.open_input_stream(path) as stream:
        reader = _open_csv(stream, path, columns, split_column)
        try:
            yield from reader
        except pa.ArrowInvalid as e:
            raise DataError(f"{path}: not a readable CSV file: {e}") from e


def _text_chunk(batch: pa.RecordBatch, cfg: SourceConfig, path: str, first_row: int) -> Chunk:
    text = batch.column(cfg.text_column)
    what = f"source.text_column {cfg.text_column!r}"
    if pa.types.is_binary(text.type) or pa.types.is_large_binary(text.type):
        raise DataError(
            f"{path}: {what} is not UTF-8 text: {_first_undecodable(text, first_row)}"
            f"; save the file as UTF-8"
        )
    if not (pa.types.is_string(text.type) or pa.types.is_large_string(text.type)):
        raise DataError(f"{path}: {what} must hold strings, got type {text.type}")
    if text.null_count:
        k = int(np.flatnonzero(text.is_null().to_numpy(zero_copy_only=False))[0])
        raise DataError(f"{path}: {what} is empty (null) at row {first_row + k}")
    return Chunk(
        label=_numbers(
            batch.column(cfg.label_column), f"{path}: source.label_column {cfg.label_column!r}"
        ),
        x=text.to_numpy(zero_copy_only=False),
        where=path,
        first_row=first_row,
        **_id_and_split(batch, cfg, path),
    )


def _first_undecodable(col: pa.Array, first_row: int) -> str:
    """Where the first value that is not UTF-8 sits (a CSV reader hands such text as bytes)."""
    for k, value in enumerate(col.to_pylist()):
        try:
            (value or b"").decode("utf-8")
        except UnicodeDecodeError as e:
            return f"row {first_row + k} has byte {value[e.start]:#04x} at offset {e.start}"
    return "the reader found bytes that are not text"


# ---- NumPy .npz ------------------------------------------------------------------------------


def read_npz(cfg: SourceConfig, chunk_rows: int) -> Source:
    """Arrays named by the label / feature / id columns; `<name>_val`, `<name>_test` give splits."""
    fs, files = list_files(cfg.path, (".npz",))
    suffixes = {"train": "", "val": "_val", "test": "_test"}
    given = set()
    for f in files:
        with fs.open_input_file(f) as fh, np.load(fh) as z:
            require_columns(z.files, [cfg.label_column], where=f"{f}: source.label_column")
            require_columns(z.files, [cfg.feature_column], where=f"{f}: source.feature_column")
            for split in ("val", "test"):
                keys = [cfg.feature_column + suffixes[split], cfg.label_column + suffixes[split]]
                if any(k in z.files for k in keys):
                    require_columns(z.files, keys, where=f"{f}: the given {split} split")
                    given.add(split)

    def chunks():
        for f in files:
            with fs.open_input_file(f) as fh, np.load(fh) as z:
                for split, suffix in suffixes.items():
                    xk, lk, ik = (
                        c + suffix for c in (cfg.feature_column, cfg.label_column, cfg.id_column)
                    )
                    if xk not in z.files:
                        continue
                    x, label = _npz_array(z, xk, f), _npz_array(z, lk, f)
                    ids = _npz_array(z, ik, f) if ik in z.files else None
                    for k, a in ((lk, label), (ik, ids)):
                        if a is not None and len(a) != len(x):
                            raise DataError(
                                f"{f}: arrays '{xk}' ({len(x)} rows) and '{k}' "
                                f"({len(a)} rows) differ in length"
                            )
                    yield from _array_chunks(
                        label, x, f"{f} ['{xk}']", chunk_rows, ids, split if given else None
                    )

    return Source(chunks(), f"npz {cfg.path} ({len(files)} files)", frozenset(given))


def _npz_array(z, key: str, path: str) -> np.ndarray:
    try:
        return z[key]
    except ValueError as e:  # object (e.g. ragged) arrays need pickle, which we never allow
        raise DataError(f"{path}: array '{key}' cannot be read as numbers: {e}") from e


# ---- MNIST-style IDX -------------------------------------------------------------------------

_IDX_NAME = re.compile(r"^(?P<prefix>.+)-(?P<kind>images|labels)-idx\d-ubyte(\.gz)?$")
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(cfg: SourceConfig, chunk_rows: int) -> Source:
    """`<prefix>-images-idx3-ubyte[.gz]` with `<prefix>-labels-idx1-ubyte[.gz]`: `train*` files
    are the train split, `t10k*` (or `*test*`) the test split; images (1, H, W) as stored (8-bit
    pixels stay uint8)."""
    fs, files = list_files(cfg.path, ("-ubyte", "-ubyte.gz"))
    pairs: dict[str, dict] = {}
    for f in files:
        m = _IDX_NAME.match(PurePosixPath(f).name)
        if m:
            pairs.setdefault(m["prefix"], {})[m["kind"]] = f
    if not pairs:
        raise DataError(f"source.path: no *-images-idx3-ubyte[.gz] files in {cfg.path}")
    parts = []
    for prefix, pair in sorted(pairs.items()):
        for need in ("images", "labels"):
            if need not in pair:
                raise DataError(
                    f"{next(iter(pair.values()))}: no matching "
                    f"{prefix}-{need}-idx?-ubyte[.gz] file beside it"
                )
        image_dims = _idx_header_of(fs, pair["images"])[1]
        label_dims = _idx_header_of(fs, pair["labels"])[1]
        if len(image_dims) < 2 or len(label_dims) != 1 or image_dims[0] != label_dims[0]:
            raise DataError(
                f"{pair['images']} holds {image_dims}, {pair['labels']} holds "
                f"{label_dims}: expected N images and N labels"
            )
        parts.append((_idx_split(prefix, pair["images"]), pair, image_dims))

    def chunks():
        for split, pair, image_dims in parts:
            rows = _rows_per_chunk(4 * math.prod(image_dims[1:]), chunk_rows)
            start = 0
            for images, labels in zip(
                _idx_rows(fs, pair["images"], rows), _idx_rows(fs, pair["labels"], rows)
            ):
                yield Chunk(
                    labels,
                    images[:, None] if images.ndim == 3 else images,
                    pair["images"],
                    start,
                    split=split,
                )
                start += len(labels)

    return Source(
        chunks(), f"idx {cfg.path} ({', '.join(sorted(pairs))})", frozenset(s for s, _, _ in parts)
    )


def _idx_split(prefix: str, path: str) -> str:
    if prefix.startswith("t10k") or "test" in prefix:
        return "test"
    if "train" in prefix:
        return "train"
    raise DataError(f"{path}: cannot tell its split: IDX names start with 'train' or 't10k'")


def _idx_header(stream, path: str) -> tuple[np.dtype, tuple]:
    head = stream.read(4)
    if len(head) < 4 or head[0] or head[1] or head[2] not in _IDX_TYPES:
        raise DataError(f"{path}: not an IDX file (first bytes {head.hex()})")
    raw = stream.read(4 * head[3])
    if len(raw) < 4 * head[3]:
        raise DataError(f"{path}: the IDX header ends early")
    return np.dtype(_IDX_TYPES[head[2]]), tuple(int(d) for d in np.frombuffer(raw, ">u4"))


def _idx_header_of(fs, path: str) -> tuple[np.dtype, tuple]:
    with fs.open_input_stream(path, compression="detect") as s:
        return _idx_header(s, path)


def _idx_rows(fs, path: str, rows: int) -> Iterator[np.ndarray]:
    with fs.open_input_stream(path, compression="detect") as s:
        dtype, dims = _idx_header(s, path)
        per_row = math.prod(dims[1:]) * dtype.itemsize
        for start in range(0, dims[0], rows):
            k = min(rows, dims[0] - start)
            buf = s.read(k * per_row)
            if len(buf) < k * per_row:
                raise DataError(
                    f"{path}: the file ends at row {start + len(buf) // per_row}, "
                    f"its header says {dims[0]} rows"
                )
            yield np.frombuffer(buf, dtype).reshape(k, *dims[1:])


# ---- image folder ----------------------------------------------------------------------------


def read_imagefolder(cfg: SourceConfig, chunk_rows: int) -> Source:
    """One subfolder per class (class index = sorted folder names); x (C, H, W) 8-bit pixels.

    Ray Data tasks read the headers (for the common mode and size) and then decode the pixels,
    in parallel and in path order; the driver holds the paths and one chunk of pixels."""
    fs, root = filesystem(cfg.path)
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        raise DataError(f"source.path: {cfg.path} does not exist")
    if info.type != pafs.FileType.Directory:
        raise DataError(f"source.path: {cfg.path} must be a folder with one subfolder per class")
    classes = sorted(
        i.base_name
        for i in fs.get_file_info(pafs.FileSelector(root))
        if i.type == pafs.FileType.Directory and not i.base_name.startswith(".")
    )
    if not classes:
        raise DataError(f"source.path: {cfg.path} has no class subfolders")
    paths, labels = [], []
    for label, name in enumerate(classes):
        folder = f"{root.rstrip('/')}/{name}"
        infos = fs.get_file_info(pafs.FileSelector(folder, recursive=True))
        found = [
            i.path
            for i in sorted(infos, key=lambda i: i.path)
            if i.is_file
            and i.base_name.lower().endswith(IMAGE_SUFFIXES)
            and not _hidden(i.path[len(folder) :])
        ]
        paths += found
        labels += [label] * len(found)
    if not paths:
        raise DataError(
            f"source.path: no images in the class subfolders of {cfg.path} ({', '.join(classes)})"
        )
    if cfg.image_size is not None and (len(cfg.image_size) != 2 or min(cfg.image_size) < 1):
        raise ConfigError(f"source.image_size: got {cfg.image_size}, expected [height, width]")
    # A few blocks per CPU: Ray Data's default (a block per 200 paths or so) spends more time
    # scheduling tasks than reading headers.
    blocks = max(1, min(len(paths) // 1000, 4 * int(ray.cluster_resources().get("CPU", 1))))
    items = ray.data.from_items(
        [{"path": p, "label": c} for p, c in zip(paths, labels)], override_num_blocks=blocks
    )
    mode, size = _image_layout(
        _in_order(items.map_batches(_Headers(fs), batch_format="numpy")), cfg.image_size
    )

    def chunks():
        channels = 1 if mode == "L" else 3
        rows = _rows_per_chunk(channels * size[0] * size[1], chunk_rows)
        decoded = _in_order(
            items.map_batches(_Pixels(fs, mode, size), batch_size=rows, batch_format="numpy")
        )
        first = 0
        with data_errors():
            for batch in decoded.iter_batches(batch_size=rows, batch_format="numpy"):
                yield Chunk(batch["label"].astype(np.int64), batch[X], cfg.path, first)
                first += len(batch["label"])

    return Source(chunks(), f"imagefolder {cfg.path} ({len(classes)} classes)", class_names=classes)


def _in_order(ds):
    """Rows in path order, whatever the session's default: ids are assigned by row order."""
    ds.context.execution_options.preserve_order = True
    return ds


class _Headers:
    """Per image: grey or not, height, width (a header read: PIL decodes no pixels here)."""

    def __init__(self, fs):
        self.fs = fs

    def __call__(self, batch: dict) -> dict:
        from PIL import Image

        grey, hw = [], []
        for path in batch["path"]:
            with self.fs.open_input_file(path) as fh, reading(path, "image"):
                img = Image.open(fh)
                grey.append(img.mode in _GRAY_MODES)
                hw.append((img.height, img.width))
        return {
            "path": batch["path"],
            "grey": np.array(grey, bool),
            "hw": np.array(hw, np.int64).reshape(-1, 2),
        }


class _Pixels:
    """Decode a batch of images to (n, C, H, W) uint8 in one mode and size."""

    def __init__(self, fs, mode: str, size: tuple):
        self.fs, self.mode, self.size = fs, mode, size

    def __call__(self, batch: dict) -> dict:
        from PIL import Image

        out = []
        for path in batch["path"]:
            with self.fs.open_input_file(path) as fh, reading(path, "image"):
                img = Image.open(fh).convert(self.mode)
            if (img.height, img.width) != self.size:
                img = img.resize((self.size[1], self.size[0]), Image.BILINEAR)
            a = np.asarray(img, dtype=np.uint8)
            out.append(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))
        return {"label": batch["label"], X: np.stack(out)}


def _image_layout(headers, image_size) -> tuple[str, tuple]:
    """The common mode (L when every image is grey, else RGB) and (H, W) of all images; without
    `image_size`, the first image whose size differs from the first image's is named."""
    grey, first = True, None
    with data_errors():
        for batch in headers.iter_batches(batch_size=4096, batch_format="numpy"):
            grey &= bool(batch["grey"].all())
            if first is None:
                first = (batch["path"][0], tuple(batch["hw"][0]))
            if image_size is None:
                odd = np.flatnonzero((batch["hw"] != first[1]).any(axis=1))
                if len(odd):
                    (h, w), path = batch["hw"][odd[0]], batch["path"][odd[0]]
                    raise DataError(
                        f"{path}: image size {h}x{w} differs from {first[0]} "
                        f"({first[1][0]}x{first[1][1]}); set source.image_size "
                        f"to resize all"
                    )
    size = tuple(image_size) if image_size is not None else first[1]
    return ("L" if grey else "RGB"), size
