"""Ingest: one streaming pass from a source to checked, split, canonical Parquet shards.

Output: `out_dir/{train,val,test}/part-NNNNN.parquet` with `id` int64, `label` int64 and `x` as
Ray's tensor column, plus `out_dir/info.json` (and, for text, `out_dir/vocab.json`: the
vocabulary counted over the training split in a first pass, whose ids the `x` rows hold). `x`
is float32, or uint8 when the source gives 8-bit pixels (IDX, image folders, uint8 arrays): they
stay 8-bit, a quarter of the bytes to store and read, and are scaled on the worker, batch by
batch (operators.contract.as_float). Shards are written into a temporary folder beside
`out_dir` and renamed into place only after the whole source has passed every check, so bad
input never leaves half an output. The train/val/test carving is a seeded hash of each id: the
same (id, seed) lands in the same split in every run, whatever the chunking.

A long-tailed variant (`source.imbalance_ratio` > 1) thins the train and val shards class by class
after the pass, before the rename (the number of classes is only known then); test stays as
given, so its balanced accuracy shows what balancing does. (A text vocabulary is counted before
the cut, over the whole train split.)
"""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from ray.data.extensions import ArrowTensorArray

from raysift.config import ConfigError, SourceConfig
from raysift.data.sources import SPLITS, Chunk, open_source
from raysift.data.text import Vocabulary, tokenize
from raysift.operators.contract import ID, LABEL, DataError, X
from raysift.operators.keys import unit_hash

INFO = "info.json"
PROVENANCE_DIR = "provenance"  # generated training rows: id, source, parent_ids (, y_soft)
VOCAB = "vocab.json"
_TRAIN, _VAL, _TEST = range(3)
LONG_TAILED = ("train", "val")
LONG_TAIL_STREAM = 0x4C4F4E47  # the cut's hash stream, apart from the split's unit_hash(ids, seed)


@dataclass
class DataInfo:
    """What the rest of the run needs to know about the ingested data."""

    num_classes: int
    x_shape: tuple
    counts: dict  # split -> rows
    class_counts: dict  # split -> rows per class
    class_names: list[str] | None
    source: str  # a description of where the data came from
    # imbalance_ratio > 1: {imbalance_ratio, keep_fraction per class, class_counts_before}
    long_tail: dict | None = None
    x_dtype: str = "float32"  # or "uint8": 8-bit pixels, read as x / 255
    # generated rows in the source (its `source` column not "real"): {train: kept, dropped}
    synthetic: dict | None = None


def ingest(
    cfg: SourceConfig,
    seed: int,
    out_dir: str | Path,
    *,
    chunk_rows: int = 4096,
    shard_rows: int = 8192,
) -> DataInfo:
    """Read, check, split and write the source; never touches an existing non-empty `out_dir`."""
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ConfigError(f"ingest: {out_dir} already exists; it is never overwritten")
    source = open_source(cfg, chunk_rows)
    tmp = out_dir.with_name(f".{out_dir.name}.ingest-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        info = _write(source, cfg, seed, tmp, shard_rows, chunk_rows)
        if out_dir.exists():
            out_dir.rmdir()
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return info


def read_split(out_dir: str | Path, split: str):
    """One split as a Ray Dataset: row order is id order within shards, shards in name order
    (the reader lists a folder in path order, and the driver sets Ray Data's `preserve_order`)."""
    from raysift.data.parquet import read_parquet

    if split not in SPLITS:
        raise ValueError(f"split: got {split!r}, expected one of {', '.join(SPLITS)}")
    folder = Path(out_dir) / split
    if not any(folder.glob("*.parquet")):
        raise DataError(f"{folder}: no Parquet shards (was the data ingested?)")
    # The folder, not a list of its files: Ray lists several paths in parallel threads, which
    # race on importing fsspec's optional HTTP module when aiohttp is absent.
    return read_parquet(str(folder.resolve()), file_extensions=["parquet"])


def load_info(out_dir: str | Path) -> DataInfo:
    path = Path(out_dir) / INFO
    if not path.exists():
        raise DataError(f"{path} does not exist (was the data ingested?)")
    info = DataInfo(**json.loads(path.read_text()))
    info.x_shape = tuple(info.x_shape)
    return info


def carve(
    ids: np.ndarray,
    given: np.ndarray | None,
    seed: int,
    given_splits: frozenset,
    test_fraction: float,
    val_fraction: float,
) -> np.ndarray:
    """Split codes (0 train, 1 val, 2 test): test carved from train rows unless the data gives a
    test split, then val from the rest of train unless the data gives a val split."""
    codes = np.full(len(ids), _TRAIN, np.int8) if given is None else given.copy()
    u = unit_hash(ids, seed)
    train = codes == _TRAIN
    test_cut = 0.0 if "test" in given_splits else test_fraction
    codes[train & (u < test_cut)] = _TEST
    if "val" not in given_splits:
        codes[train & (u >= test_cut) & ((u - test_cut) / (1 - test_cut) < val_fraction)] = _VAL
    return codes


def _write(
    source, cfg: SourceConfig, seed: int, tmp: Path, shard_rows: int, chunk_rows: int
) -> DataInfo:
    checker = Checker(cfg)
    writers = {s: _ShardWriter(tmp / s, shard_rows) for s in SPLITS}
    per_class = {s: np.zeros(0, np.int64) for s in SPLITS}
    chunks = source.chunks
    if cfg.kind == "text":
        vocab = _train_vocabulary(open_source(cfg, chunk_rows), cfg, seed)
        vocab.save(tmp / VOCAB)
        chunks = (
            Chunk(c.label, vocab.encode(c.x, cfg.max_len), c.where, c.first_row, c.id, c.split)
            for c in source.chunks
        )
    provenance, synthetic = None, {"train": 0, "dropped": 0}
    generated = GeneratedSplits()
    soft_width = None
    try:
        for chunk in chunks:
            ids, labels, x, given = checker.check(chunk)
            codes = carve(
                ids, given, seed, source.given_splits, cfg.test_fraction, cfg.val_fraction
            )
            made = generated_rows(chunk)
            if made.any():
                codes = generated.place(
                    codes, made, chunk, ids, given, seed, source.given_splits, cfg
                )
                kept = made & (codes == _TRAIN)
                synthetic["train"] += int(kept.sum())
                synthetic["dropped"] += int((made & (codes < 0)).sum())
                provenance = provenance or _ShardWriter(tmp / PROVENANCE_DIR, shard_rows)
                rows = chunk.rest.filter(pa.array(kept))
                provenance.write(
                    pa.table(
                        {
                            ID: pa.array(ids[kept], pa.int64()),
                            **{c: rows.column(c) for c in rows.schema.names},
                        }
                    )
                )
                if "y_soft" in rows.schema.names:
                    soft_width = _soft_width(rows.column("y_soft"), chunk, soft_width)
            for code, split in enumerate(SPLITS):
                m = codes == code
                writers[split].write(_table(ids[m], labels[m], x[m]))
                per_class[split] = _add(per_class[split], np.bincount(labels[m]))
        checker.check_unique_ids()
        if checker.shape is None:
            raise DataError(f"{source.description}: the dataset is empty (no rows)")
        for w in writers.values():
            w.close(checker.no_rows())
    finally:
        for w in [*writers.values(), provenance]:
            if w is not None:
                w.abort()
    counts = {s: w.count for s, w in writers.items()}
    names = source.class_names
    num_classes = max(len(names or ()), *(len(c) for c in per_class.values()), soft_width or 0)
    if soft_width is not None and soft_width != num_classes:
        raise DataError(
            f"{source.description}: column 'y_soft' holds {soft_width} classes, the "
            f"labels reach class {num_classes - 1}"
        )
    class_counts = {s: _add(c, np.zeros(num_classes, np.int64)) for s, c in per_class.items()}
    description, long_tail = source.description, None
    if cfg.imbalance_ratio > 1:
        long_tail, note = _make_long_tail(
            tmp, cfg.imbalance_ratio, seed, class_counts, shard_rows, checker.no_rows()
        )
        counts.update((s, int(class_counts[s].sum())) for s in LONG_TAILED)
        description += note
    if not counts["train"]:
        raise DataError(
            f"{source.description}: the train split is empty ({counts}); lower "
            f"source.test_fraction or check source.split_column"
        )
    if cfg.val_fraction > 0 and not counts["val"]:
        raise DataError(
            f"{source.description}: the val split is empty ({counts}); raise "
            f"source.val_fraction or give more data"
        )
    info = DataInfo(
        num_classes=num_classes,
        x_shape=tuple(checker.shape),
        counts=counts,
        class_counts={s: c.tolist() for s, c in class_counts.items()},
        class_names=names,
        source=description,
        long_tail=long_tail,
        x_dtype=str(checker.dtype),
        synthetic=synthetic if provenance is not None else None,
    )
    (tmp / INFO).write_text(json.dumps(asdict(info), indent=1))
    return info


def keep_fractions(num_classes: int, ratio: float) -> np.ndarray:
    """The share of its rows class k of C keeps: ratio**(-k/(C-1)), from 1 down to 1/ratio."""
    return ratio ** (-np.arange(num_classes) / max(num_classes - 1, 1))


def long_tail_mask(ids: np.ndarray, labels: np.ndarray, seed: int, keep: np.ndarray) -> np.ndarray:
    """Which rows the long tail keeps: a seeded hash of the id against its class's share, so the
    choice is the same whatever the chunking (and a row kept at ratio 100 is kept at 10)."""
    return unit_hash(ids, seed, LONG_TAIL_STREAM) < keep[labels]


def _cut_long_tail(
    folder: Path, seed: int, keep: np.ndarray, shard_rows: int, no_rows: np.ndarray
) -> np.ndarray:
    """Rewrite a split's shards, one at a time, with only the rows the long tail keeps; returns
    the rows kept per class."""
    cut = folder.with_name(f"{folder.name}.cut")
    writer, kept = _ShardWriter(cut, shard_rows), np.zeros(len(keep), np.int64)
    try:
        for shard in sorted(folder.glob("*.parquet")):
            table = pq.read_table(shard)
            labels = table.column(LABEL).to_numpy()
            m = long_tail_mask(table.column(ID).to_numpy(), labels, seed, keep)
            writer.write(table.filter(pa.array(m)))
            kept += np.bincount(labels[m], minlength=len(keep))
        writer.close(no_rows)
    finally:
        writer.abort()
    shutil.rmtree(folder)
    cut.rename(folder)
    return kept


def _make_long_tail(
    tmp: Path, ratio: float, seed: int, class_counts: dict, shard_rows: int, no_rows: np.ndarray
) -> tuple[dict, str]:
    """Cut train and val to the long tail (`class_counts` follows); returns the record for
    info.json and a note for the data description. A class the cut empties in train stops ingest
    (no model could learn it); one emptied in val only leaves a val metric without it: noted."""
    num_classes = len(class_counts["train"])
    keep = keep_fractions(num_classes, ratio)
    before = {s: class_counts[s] for s in LONG_TAILED}
    for s in LONG_TAILED:
        class_counts[s] = _cut_long_tail(tmp / s, seed, keep, shard_rows, no_rows)
    emptied = {s: np.flatnonzero((before[s] > 0) & (class_counts[s] == 0)) for s in LONG_TAILED}
    if len(emptied["train"]):
        k = emptied["train"][0]
        raise DataError(
            f"source.imbalance_ratio {ratio:g}: class {k} keeps none of its "
            f"{before['train'][k]} train rows (its share is {keep[k]:.3g}); lower "
            f"the ratio or give more data"
        )
    note = (
        f"; long-tailed (source.imbalance_ratio {ratio:g}): class k keeps "
        f"{ratio:g}**(-k/{max(num_classes - 1, 1)}) of its train and val rows, test as given"
    )
    if len(emptied["val"]):
        note += f"; val has no rows of class {', '.join(map(str, emptied['val']))}"
    record = {
        "imbalance_ratio": ratio,
        "keep_fraction": keep.tolist(),
        "class_counts_before": {s: before[s].tolist() for s in LONG_TAILED},
    }
    return record, note


def _train_vocabulary(source, cfg: SourceConfig, seed: int) -> Vocabulary:
    """The vocabulary of the rows of a text source that the split puts in train (one pass)."""
    placer = Checker(cfg)
    counts = Counter()
    for c in source.chunks:
        ids, given = placer.place(c)
        codes = carve(ids, given, seed, source.given_splits, cfg.test_fraction, cfg.val_fraction)
        for text in c.x[codes == _TRAIN]:
            counts.update(tokenize(text))
    return Vocabulary.build(counts, cfg.max_vocab, cfg.min_count)


def generated_rows(c: Chunk) -> np.ndarray:
    """Which rows the offline augmentation jobs made: a `source` column other than "real"."""
    if c.rest is None or "source" not in c.rest.schema.names:
        return np.zeros(len(c.label), bool)
    return c.rest.column("source").to_numpy(zero_copy_only=False) != "real"


class GeneratedSplits:
    """Where generated rows went so far (train, or left out), for rows made from them: the jobs
    write a row's generated parents before it (8 bytes a generated row, on the driver)."""

    def __init__(self):
        self.kept = np.zeros(0, np.int64)
        self.dropped = np.zeros(0, np.int64)

    def place(
        self,
        codes: np.ndarray,
        made: np.ndarray,
        c: Chunk,
        ids: np.ndarray,
        given: np.ndarray | None,
        seed: int,
        given_splits: frozenset,
        cfg: SourceConfig,
    ) -> np.ndarray:
        """Split codes with the generated rows in train, or -1 (left out) when an ancestor is
        not: validation and test hold real rows only, and no generated row carries a
        validation or test row into training. A real parent's split is the hash rule's for
        its id, a generated parent's is where it went; with a given split column, the row's
        own given split must be train."""
        codes = codes.copy()
        if given is not None:
            ok = given == _TRAIN
        elif "parent_ids" in c.rest.schema.names:
            ok = self._parents_in_train(made, c, ids, seed, given_splits, cfg)
        else:
            raise DataError(
                f"{c.where}: generated rows (column 'source') need 'parent_ids', "
                f"so that none of their parents is a validation or test row"
            )
        codes[made] = np.where(ok[made], _TRAIN, -1)
        self.kept = np.union1d(self.kept, ids[made & ok])
        self.dropped = np.union1d(self.dropped, ids[made & ~ok])
        return codes

    def _parents_in_train(self, made, c, ids, seed, given_splits, cfg) -> np.ndarray:
        parents = c.rest.column("parent_ids")
        lengths = pc.list_value_length(parents).fill_null(0).to_numpy(zero_copy_only=False)
        flat = parents.flatten().to_numpy(zero_copy_only=False).astype(np.int64)
        rows = np.repeat(np.arange(len(ids)), lengths)
        good = carve(flat, None, seed, given_splits, cfg.test_fraction, cfg.val_fraction) == _TRAIN
        good[np.isin(flat, self.kept)] = True
        good[np.isin(flat, self.dropped)] = False
        order = np.argsort(ids, kind="stable")  # parents generated in this very chunk
        at = np.minimum(np.searchsorted(ids, flat, sorter=order), len(ids) - 1)
        here = (ids[order[at]] == flat) & made[order[at]]
        ok = np.bincount(rows[~good & ~here], minlength=len(ids)) == 0
        for _ in range(len(ids)):  # a chain inside the chunk: settle it from the roots down
            settled = ok.copy()
            settled &= np.bincount(rows[here & ~ok[order[at]]], minlength=len(ids)) == 0
            if np.array_equal(settled, ok):
                break
            ok = settled
        return ok


def _soft_width(column, c: Chunk, width: int | None) -> int:
    storage = column.storage if hasattr(column, "storage") else column
    storage = storage.combine_chunks() if hasattr(storage, "combine_chunks") else storage
    values = storage.flatten() if len(column) else None
    w = len(values) // len(column) if values is not None else (width or 0)
    if width is not None and w != width:
        raise DataError(
            f"{c.where}: column 'y_soft' holds {w} classes at row {c.first_row}, {width} before"
        )
    return w


def _add(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    n = max(len(a), len(b))
    return np.pad(a, (0, n - len(a))) + np.pad(b, (0, n - len(b)))


class Checker:
    """Checks chunk after chunk, keeping what must agree across them (shape, id and split mode)."""

    def __init__(self, cfg: SourceConfig):
        self.cfg = cfg
        self.shape = None  # the row shape of the first chunk, and where it came from
        self.shape_where = None
        self.dtype = None  # uint8 (8-bit pixels, kept as they are) or float32, from the first chunk
        self.modes = {}  # "id" / "split" -> (given?, where the mode was set)
        self.next_id = 0
        self.given_ids, self.places = [], []  # ids from the data, and (offset, where, first_row)
        self.seen = 0

    def check(self, c: Chunk):
        """Validated (ids, labels int64, x float32, given split codes or None) for one chunk;
        labels or x are None when the chunk has none (the batch jobs' optional columns)."""
        ids, given = self.place(c)
        cfg = self.cfg
        labels = None
        if c.label is not None:
            labels = _integers(c.label, c, f"source.label_column {cfg.label_column!r}")
            if (labels < 0).any():
                i = int(np.argmax(labels < 0))
                raise DataError(
                    f"{c.where}: source.label_column {cfg.label_column!r} must be "
                    f">= 0; {_row(c, i)} has label {labels[i]}"
                )
        return ids, labels, None if c.x is None else self._features(c), given

    def place(self, c: Chunk):
        """(ids, given split codes or None): the ids are the data's own or assigned in order."""
        cfg = self.cfg
        n = next((len(a) for a in (c.label, c.x, c.rest) if a is not None), 0)
        if c.x is not None and len(c.x) != n:
            raise DataError(f"{c.where}: {len(c.x)} feature rows but {n} labels")
        self._same_mode("id", c.id is not None, c.where, f"source.id_column {cfg.id_column!r}")
        self._same_mode(
            "split", c.split is not None, c.where, f"source.split_column {cfg.split_column!r}"
        )
        if c.id is None:
            ids = np.arange(self.next_id, self.next_id + n, dtype=np.int64)
        else:
            ids = _integers(c.id, c, f"source.id_column {cfg.id_column!r}")
            self.given_ids.append(ids)
            self.places.append((self.seen, c.where, c.first_row))
        self.next_id += n
        self.seen += n
        return ids, self._given_split(c)

    def _same_mode(self, what: str, given: bool, where: str, field: str) -> None:
        first = self.modes.setdefault(what, (given, where))
        if first[0] != given:
            has, lacks = (where, first[1]) if given else (first[1], where)
            raise DataError(f"{field} is in {has} but not in {lacks}: every file needs it, or none")

    def _features(self, c: Chunk) -> np.ndarray:
        field = f"source.feature_column {self.cfg.feature_column!r}"
        x = np.asarray(c.x)
        if x.dtype.kind not in "iuf":
            raise DataError(f"{c.where}: {field} must hold numbers, got {x.dtype}")
        if x.ndim < 2:
            raise DataError(f"{c.where}: {field} must hold a tensor per row, got shape {x.shape}")
        if self.cfg.shape is not None:
            size = int(np.prod(self.cfg.shape))
            if size != int(np.prod(x.shape[1:])):
                raise ConfigError(
                    f"source.shape: {self.cfg.shape} holds {size} values, but "
                    f"{c.where} {_row(c, 0)} has shape {x.shape[1:]}"
                )
            x = x.reshape(len(x), *self.cfg.shape)
        dtype = np.dtype(np.uint8 if x.dtype == np.uint8 else np.float32)
        if self.shape is None:
            self.shape, self.shape_where = x.shape[1:], f"{c.where} {_row(c, 0)}"
            self.dtype = dtype
        elif x.shape[1:] != self.shape:
            raise DataError(
                f"{c.where}: {field} has ragged feature shapes: {_row(c, 0)} has "
                f"shape {x.shape[1:]}, {self.shape_where} has {self.shape}"
            )
        elif dtype != self.dtype:
            first = "uint8" if self.dtype == np.uint8 else "other numbers than uint8"
            raise DataError(
                f"{c.where}: {field} holds {x.dtype} at {_row(c, 0)}, but "
                f"{self.shape_where} holds {first}: 8-bit pixels (uint8) must be "
                f"8-bit in every file or in none"
            )
        if dtype == np.uint8:
            return x
        x = x.astype(np.float32, copy=False)
        bad = ~np.isfinite(x.reshape(len(x), -1)).all(axis=1)
        if bad.any():
            raise DataError(
                f"{c.where}: {field} holds NaN or inf at {_row(c, int(np.argmax(bad)))}"
                f" ({int(bad.sum())} such rows in this chunk)"
            )
        return x

    def no_rows(self) -> np.ndarray:
        """An empty feature array of the rows' shape and dtype."""
        return np.zeros((0, *self.shape), self.dtype)

    def _given_split(self, c: Chunk) -> np.ndarray | None:
        if c.split is None:
            return None
        if isinstance(c.split, str):
            return np.full(len(c.label), SPLITS.index(c.split), np.int8)
        codes = np.full(len(c.split), -1, np.int8)
        for code, name in enumerate(SPLITS):
            codes[c.split == name] = code
        if (codes < 0).any():
            i = int(np.argmax(codes < 0))
            raise DataError(
                f"{c.where}: source.split_column {self.cfg.split_column!r} has "
                f"{c.split[i]!r} at {_row(c, i)}; expected train, val or test"
            )
        return codes

    def check_unique_ids(self) -> None:
        if not self.given_ids:
            return
        ids = np.concatenate(self.given_ids)
        order = np.argsort(ids, kind="stable")
        dup = np.flatnonzero(ids[order][1:] == ids[order][:-1])
        if len(dup):
            a, b = order[dup[0]], order[dup[0] + 1]
            raise DataError(
                f"source.id_column {self.cfg.id_column!r}: id {ids[a]} appears more "
                f"than once: {self._place(a)} and {self._place(b)}"
            )

    def _place(self, k: int) -> str:
        offsets = [p[0] for p in self.places]
        offset, where, first_row = self.places[int(np.searchsorted(offsets, k, "right")) - 1]
        return f"{where} row {first_row + k - offset}"


def _row(c: Chunk, i: int) -> str:
    return f"row {c.first_row + i}"


def _integers(values, c: Chunk, field: str) -> np.ndarray:
    """Values as int64; floats are accepted when they are whole numbers (1.0, not 1.5 or NaN)."""
    v = np.asarray(values)
    if v.dtype.kind in "iu":
        return v.astype(np.int64, copy=False)
    if v.dtype.kind != "f":
        raise DataError(f"{c.where}: {field} must hold integers, got {v.dtype}")
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(v) | (v != np.round(v))
    if bad.any():
        i = int(np.argmax(bad))
        raise DataError(f"{c.where}: {field} must hold integers; {_row(c, i)} has {v[i]}")
    return v.astype(np.int64)


class _ShardWriter:
    """Appends rows to part-00000.parquet, part-00001.parquet, ... of at most `rows` rows each."""

    def __init__(self, folder: Path, rows: int):
        folder.mkdir(parents=True)
        self.folder, self.rows = folder, rows
        self.writer, self.in_file, self.files, self.count = None, 0, 0, 0

    def write(self, table: pa.Table) -> None:
        start = 0
        while start < table.num_rows:
            if self.writer is None or self.in_file == self.rows:
                self._next_file(table.schema)
            k = min(self.rows - self.in_file, table.num_rows - start)
            self.writer.write_table(table.slice(start, k))
            self.in_file += k
            self.count += k
            start += k

    def close(self, no_rows: np.ndarray) -> None:
        """Finish the last shard; an empty split gets one empty shard (with `no_rows`, the
        features' shape and dtype), so it reads as a Dataset."""
        if self.writer is None:
            empty = _table(np.zeros(0, np.int64), np.zeros(0, np.int64), no_rows)
            self._next_file(empty.schema)
        self.abort()

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def _next_file(self, schema: pa.Schema) -> None:
        self.abort()
        self.writer = pq.ParquetWriter(self.folder / f"part-{self.files:05d}.parquet", schema)
        self.files += 1
        self.in_file = 0


def _table(ids: np.ndarray, labels: np.ndarray, x: np.ndarray) -> pa.Table:
    return pa.table(
        {
            ID: pa.array(ids, pa.int64()),
            LABEL: pa.array(labels, pa.int64()),
            X: ArrowTensorArray.from_numpy(np.ascontiguousarray(x)),
        }
    )
