"""Per-sample norms (M1 step 2) and their per-class statistics (M1 step 3).

`Norms` is a `map_batches` callable (`add_norms` applies it): one vectorised NumPy expression
per batch, so the cost is memory bandwidth, not per-row Python. `class_norm_stats` uses Ray
Data's own grouped aggregation, so only one row per class ever reaches the driver.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import ray
from ray.data.aggregate import Count, Max, Mean, Min, Std

from .contract import ID, LABEL, DataError, X, check_finite, data_errors, features, require_columns

KINDS = ("pixel_weighted_l2", "l1", "l2", "linf")
LUMINANCE = (0.299, 0.587, 0.114)


class Norms:
    """map_batches callable adding a float32 `norm` column.

    `pixel_weighted_l2` (M1's default) treats the first axis of each sample as channels (a
    one-axis sample is one channel), combines them into one value per pixel with
    `channel_weights`, and takes the L2 norm of those values. Default weights: 1 for one
    channel, ITU-R 601 luminance for three, the plain mean otherwise. `l1`, `l2` and `linf`
    work on the raw, flattened tensor. `keep_features=False` drops the feature column from
    the output when only the norms are wanted, which saves copying the tensors again.
    """

    def __init__(
        self,
        kind: str = "pixel_weighted_l2",
        channel_weights=None,
        column: str = X,
        keep_features: bool = True,
    ):
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if channel_weights is not None:
            if kind != "pixel_weighted_l2":
                raise ValueError(
                    f"channel_weights applies to kind='pixel_weighted_l2' only, not kind={kind!r}"
                )
            channel_weights = np.asarray(channel_weights, dtype=np.float32)
            if (
                channel_weights.ndim != 1
                or not len(channel_weights)
                or not np.isfinite(channel_weights).all()
            ):
                raise ValueError(
                    f"channel_weights must be a non-empty list of finite numbers, "
                    f"got {channel_weights.tolist()}"
                )
        self.kind = kind
        self.channel_weights = channel_weights
        self.column = column
        self.keep_features = keep_features

    def __call__(self, batch: dict) -> dict:
        require_columns(batch.keys(), [self.column])
        x = features(batch, self.column)
        norms = self.norms(x)
        if not np.isfinite(norms).all():  # NaN or inf in x shows in its norm: name the row
            check_finite(x, batch.get(ID), where=f"column '{self.column}'")
        out = {k: v for k, v in batch.items() if self.keep_features or k != self.column}
        out["norm"] = norms
        return out

    def norms(self, x: np.ndarray) -> np.ndarray:
        """The norms of an (n, *shape) float32 array, as float32."""
        n = len(x)
        if self.kind == "pixel_weighted_l2":
            x = self._weighted_pixels(x)
        flat = x.reshape(n, -1)
        if self.kind == "l1":
            return np.abs(flat).sum(axis=1, dtype=np.float32)
        if self.kind == "linf":
            return np.abs(flat).max(axis=1, initial=0.0).astype(np.float32)
        return np.sqrt(np.einsum("ij,ij->i", flat, flat))

    def _weighted_pixels(self, x: np.ndarray) -> np.ndarray:
        channels = x.reshape(len(x), 1, -1) if x.ndim <= 2 else x.reshape(len(x), x.shape[1], -1)
        c = channels.shape[1]
        weights = self.channel_weights
        if weights is None:
            weights = np.asarray(LUMINANCE if c == 3 else [1.0 / c] * c, dtype=np.float32)
        if len(weights) != c:
            raise DataError(
                f"column '{self.column}': {c} channel(s) per sample but "
                f"channel_weights has {len(weights)}"
            )
        if c == 1 and weights[0] == 1.0:
            return channels[:, 0]
        return np.einsum("c,ncp->np", weights, channels)


def add_norms(ds: ray.data.Dataset, norms: Norms) -> ray.data.Dataset:
    """`ds` with the `norm` column `norms` computes. Batches are zero-copy, read-only views of
    the blocks: `Norms` only reads them, and the writable copy Ray Data makes by default costs
    as much memory traffic as the norms themselves."""
    return ds.map_batches(norms, batch_format="numpy", zero_copy_batch=True)


def class_norm_stats(ds: ray.data.Dataset, norm_column: str = "norm") -> pd.DataFrame:
    """Per class: count, mean, std (population), min and max of the norms, sorted by label.

    Ray Data's grouped aggregation does the work; the driver receives one row per class.
    """
    with data_errors():
        require_columns(ds.schema().names, [LABEL, norm_column], where="class_norm_stats")
    return aggregate_by_class(ds, norm_column)


def aggregate_by_class(ds: ray.data.Dataset, norm_column: str = "norm") -> pd.DataFrame:
    """`class_norm_stats` for callers that checked the columns already: on a lazy dataset the
    check costs a run of its first block."""
    with data_errors():
        stats = (
            ds.groupby(LABEL)
            .aggregate(
                Count(alias_name="count"),
                Mean(norm_column, alias_name="mean"),
                Std(norm_column, ddof=0, alias_name="std"),
                Min(norm_column, alias_name="min"),
                Max(norm_column, alias_name="max"),
            )
            .to_pandas()
        )
    stats = stats[[LABEL, "count", "mean", "std", "min", "max"]]
    return stats.sort_values(LABEL, kind="stable").reset_index(drop=True)
