"""The data contract every operator relies on, and the one error type for bad input.

A dataset has `id` (int64, unique), `label` (int64 in [0, num_classes)) and `x`
(a fixed-shape tensor column): float32, or uint8 for 8-bit pixels, which stay 8-bit on disk and
in memory (a quarter of the bytes) and read as x / 255 in [0, 1]. Operators read batches in
NumPy format and take the features through `features`, which does that scaling.
"""

from __future__ import annotations

import re
from contextlib import contextmanager

import numpy as np

ID, LABEL, X = "id", "label", "x"
PIXEL_MAX = 255  # uint8 features are 8-bit pixels: x / PIXEL_MAX


class DataError(ValueError):
    """Bad input: the message names the field, the file or the row."""


@contextmanager
def data_errors():
    """Give callers the DataError a Ray Data UDF raised.

    Ray re-raises a UDF's exception as `UserCodeException` and keeps only its text, so without
    this a caller catching `DataError` (the CLI, the round engine) would miss bad input; a
    streaming task's DataError comes back as a `RayTaskError` that is one, its text the whole
    remote traceback: either becomes a DataError with the message alone. (Ray loads here, not
    with the contract: the command line reads the contract's names before it knows the job.)
    """
    from ray.exceptions import UserCodeException

    try:
        yield
    except (UserCodeException, DataError) as err:
        found = re.search(r"DataError: (.+)", str(err))
        if found is None:
            raise
        raise DataError(found.group(1)) from err


def require_columns(batch_or_schema_names, columns, where: str = "dataset") -> None:
    """Raise a DataError naming every missing column."""
    names = set(batch_or_schema_names)
    missing = [c for c in columns if c not in names]
    if missing:
        raise DataError(f"{where}: missing column(s) {missing}; found {sorted(names)}")


def features(batch: dict, column: str = X) -> np.ndarray:
    """The batch's feature tensor as one float32 array (n, *shape), 8-bit pixels scaled.

    Ragged rows arrive as an object array of arrays; they are a contract violation.
    """
    x = batch[column]
    if not isinstance(x, np.ndarray) or x.dtype == object:
        shapes = {np.shape(v) for v in x}
        if len(shapes) > 1:
            ids = batch.get(ID)
            first = np.shape(x[0])
            bad = next(i for i, v in enumerate(x) if np.shape(v) != first)
            row = f"id {ids[bad]}" if ids is not None else f"row {bad}"
            raise DataError(
                f"column '{column}': ragged feature shapes {sorted(shapes)}; "
                f"{row} has shape {np.shape(x[bad])}, the first row {first}"
            )
        x = np.stack([np.asarray(v) for v in x])
    return as_float(x)


def as_float(x: np.ndarray) -> np.ndarray:
    """Features as float32: uint8 pixels divided by PIXEL_MAX, other numbers cast."""
    if x.dtype == np.uint8:
        return np.divide(x, PIXEL_MAX, dtype=np.float32)
    return x.astype(np.float32, copy=False)


def check_finite(x: np.ndarray, ids: np.ndarray | None, where: str = "column 'x'") -> None:
    """Raise a DataError naming the first row whose features hold NaN or inf."""
    bad = ~np.isfinite(x.reshape(len(x), -1)).all(axis=1)
    if bad.any():
        i = int(np.argmax(bad))
        row = f"id {int(ids[i])}" if ids is not None else f"row {i}"
        raise DataError(f"{where}: NaN or inf in features at {row} ({int(bad.sum())} rows in all)")


def from_columns(columns: dict, rows_per_block: int = 65536):
    """A Ray Dataset from in-memory NumPy columns; multi-dimensional ones become tensor columns."""
    import pyarrow as pa
    import ray
    from ray.data.extensions import ArrowTensorArray

    n = len(next(iter(columns.values())))
    tables = []
    for start in range(0, max(n, 1), rows_per_block):
        part = {}
        for name, values in columns.items():
            chunk = np.asarray(values[start : start + rows_per_block])
            part[name] = ArrowTensorArray.from_numpy(chunk) if chunk.ndim > 1 else pa.array(chunk)
        tables.append(pa.table(part))
    return ray.data.from_arrow(tables)
