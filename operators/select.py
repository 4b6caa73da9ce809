"""Choose sample ids from a Dataset of any size: M1's balanced draw and a seeded random draw.

Only small candidate sets reach the driver: each block keeps its own best few rows per group
(`smallest_per_group`), and the driver merges those streams (`gather_smallest`). Ties go to the
smaller id and random keys are hashes of (seed, id), so a result never depends on how the data
was split into blocks or in which order the blocks finished.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import ray

from .contract import ID, LABEL, DataError, X, data_errors, require_columns
from .keys import hash_keys
from .norms import Norms, add_norms, aggregate_by_class

_MIN_BUFFER = 65536  # candidate rows the driver collects before it prunes


@dataclass
class Selection:
    """Ids chosen from a dataset, why each was chosen, and what the user should hear about."""

    ids: np.ndarray  # int64
    reasons: np.ndarray  # str, one per id
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)


def selection(ids: np.ndarray, reason: str, notes: list[str] | None = None) -> Selection:
    """A Selection whose ids all share one reason."""
    ids = np.asarray(ids, dtype=np.int64)
    reasons = np.empty(len(ids), dtype=object)
    reasons[:] = reason  # one str shared by every row (np.full would make one a row)
    return Selection(ids, reasons, list(notes or []))


def smallest_per_group(
    group: np.ndarray, key: np.ndarray, ids: np.ndarray, limit: np.ndarray
) -> np.ndarray:
    """Indices of the rows among the `limit[g]` smallest (key, id) of their group `g`.

    Groups are small non-negative ints; the indices come in (group, key, id) order.
    """
    order = np.lexsort((ids, key, group))
    g = group[order]
    rank = np.arange(len(g)) - np.searchsorted(g, g, side="left")
    return order[rank < limit[g]]


def gather_smallest(candidates: ray.data.Dataset, limit: np.ndarray) -> dict | None:
    """Merge per-block candidates (columns `group`, `key`, `id`, ...) on the driver.

    Keeps the `limit[g]` smallest (key, id) per group while streaming, so the driver holds a
    few times `limit.sum()` rows at most. None when no block had a candidate.
    """
    budget = max(2 * int(limit.sum()), _MIN_BUFFER)
    kept, pending, size = [], [], 0
    with data_errors():
        for batch in candidates.iter_batches(batch_size=None, batch_format="numpy"):
            if not len(batch[ID]):
                continue
            pending.append(batch)
            size += len(batch[ID])
            if size > budget:
                kept = [prune_candidates(kept + pending, limit)]
                pending, size = [], len(kept[0][ID])
    parts = kept + pending
    return prune_candidates(parts, limit) if parts else None


def prune_candidates(parts: list[dict], limit: np.ndarray) -> dict:
    for k in parts[0]:
        shapes = sorted({p[k].shape[1:] for p in parts})
        if len(shapes) > 1:
            raise DataError(f"column '{k}': samples of different shapes {shapes} in one dataset")
    rows = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    keep = smallest_per_group(rows["group"], rows["key"], rows[ID], limit)
    return {k: v[keep] for k, v in rows.items()}


def require(ds: ray.data.Dataset, columns: list[str], where: str) -> list[str]:
    """The dataset's column names, after checking `columns` are among them."""
    with data_errors():
        names = ds.schema().names
    require_columns(names, columns, where=where)
    return names


def without_ids(ds: ray.data.Dataset, exclude_ids) -> ray.data.Dataset:
    """Rows whose id is not in `exclude_ids` (e.g. the samples already in the training set)."""
    if exclude_ids is None or not len(exclude_ids):
        return ds
    exclude = np.unique(np.asarray(exclude_ids, dtype=np.int64))
    return ds.map_batches(
        _drop_rows, fn_kwargs={"exclude": exclude}, batch_format="numpy", batch_size=None
    )


def _drop_rows(batch: dict, exclude: np.ndarray) -> dict:
    keep = ~np.isin(batch[ID], exclude)
    return {k: v[keep] for k, v in batch.items()}


def random_draw(
    ds: ray.data.Dataset,
    ratio: float | None = None,
    n: int | None = None,
    seed: int = 0,
    reason: str = "initial",
) -> Selection:
    """A uniform draw of `n` ids, or of round(ratio * rows); ids ascending.

    Each id's rank is a hash of (seed, id), so the draw is the same whatever the block layout.
    """
    if (ratio is None) == (n is None):
        raise ValueError("random_draw: give exactly one of ratio and n")
    require(ds, [ID], where="random_draw")
    ids = ds.select_columns([ID])
    if ratio is not None:
        if not 0.0 < ratio <= 1.0:
            raise ValueError(f"ratio must be in (0, 1], got {ratio}")
        with data_errors():
            n = math.floor(ratio * ids.count() + 0.5)
    if not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    if n == 0:
        return selection([], reason)
    parts = ids.map_batches(
        random_candidates,
        fn_kwargs={"n": int(n), "seed": seed},
        batch_format="numpy",
        batch_size=None,
    )
    got = gather_smallest(parts, np.array([n]))
    chosen = np.sort(got[ID]) if got else np.zeros(0, np.int64)
    notes = (
        []
        if len(chosen) == n
        else [f"random_draw: asked for n={n} but the dataset has {len(chosen)} rows; all taken"]
    )
    return selection(chosen, reason, notes)


def random_candidates(batch: dict, n: int, seed: int) -> dict:
    ids = batch[ID].astype(np.int64)
    key = hash_keys(ids, seed)
    keep = smallest_per_group(np.zeros(len(ids), np.int64), key, ids, np.array([n]))
    return {"group": np.zeros(len(keep), np.int64), "key": key[keep], ID: ids[keep]}


def balanced_draw(
    ds: ray.data.Dataset,
    per_class: int,
    *,
    kind: str = "pixel_weighted_l2",
    channel_weights=None,
    column: str = X,
    exclude_ids=None,
    reason: str = "balanced",
) -> Selection:
    """M1 step 4: `per_class` ids per class, half at or above the class's mean norm, half below.

    Per class c with mean norm mu_c (over the rows not in `exclude_ids`): a = ceil(m/2) ids with
    norm >= mu_c in ascending norm, b = floor(m/2) with norm < mu_c in descending norm; a side
    that runs out is filled from the other. A class with fewer than m rows gives all of them and
    is named in `notes`. Uses the `norm` column when present, otherwise computes `kind` norms
    of `column`. Ids come by class, then the above side, then the below side, each in draw order.
    """
    if not isinstance(per_class, (int, np.integer)) or per_class <= 0:
        raise ValueError(f"per_class must be a positive integer, got {per_class!r}")
    names = require(ds, [ID, LABEL], where="balanced_draw")
    if "norm" in names:
        ds = ds.select_columns([ID, LABEL, "norm"])
    else:
        require_columns(names, [column], where="balanced_draw (no 'norm' column)")
        norms = Norms(
            kind=kind, channel_weights=channel_weights, column=column, keep_features=False
        )
        ds = add_norms(ds.select_columns([ID, LABEL, column]), norms)
    ds = without_ids(ds, exclude_ids)
    stats = aggregate_by_class(ds)
    if stats.empty:
        return selection([], reason, ["balanced_draw: no rows to draw from"])
    labels = stats[LABEL].to_numpy(np.int64)
    means = stats["mean"].to_numpy(np.float64)
    parts = ds.map_batches(
        balanced_candidates,
        batch_format="numpy",
        batch_size=None,
        fn_kwargs={"labels": labels, "means": means, "m": int(per_class)},
    )
    got = gather_smallest(parts, np.full(2 * len(labels), per_class))
    return compose_balanced(got, labels, stats["count"].to_numpy(), per_class, reason)


def compose_balanced(
    got: dict, labels: np.ndarray, counts: np.ndarray, per_class: int, reason: str
) -> Selection:
    """The draw from the merged candidates (group 2i: class i at or above its mean, 2i + 1:
    below, each nearest the mean first), with a note naming the classes that ran short."""
    chosen = []
    for i in range(len(labels)):
        above = got[ID][got["group"] == 2 * i]
        below = got[ID][got["group"] == 2 * i + 1]
        chosen += [above[: _take_above(per_class, len(above), len(below))]]
        chosen += [below[: per_class - len(chosen[-1])]]
    small = [f"{c} ({k})" for c, k in zip(labels, counts) if k < per_class]
    notes = (
        [f"fewer than per_class={per_class}, all taken: class (samples) {', '.join(small)}"]
        if small
        else []
    )
    return selection(np.concatenate(chosen) if chosen else [], reason, notes)


def _take_above(m: int, n_above: int, n_below: int) -> int:
    """How many of the m come from above the mean: ceil(m/2), or more if below runs short."""
    return min(n_above, max(math.ceil(m / 2), m - n_below))


def balanced_candidates(batch: dict, labels: np.ndarray, means: np.ndarray, m: int) -> dict:
    ids = batch[ID].astype(np.int64)
    norm = batch["norm"].astype(np.float64)
    cls = np.searchsorted(labels, batch[LABEL])  # every label is in `labels`: same rows
    below = norm < means[cls]
    group = 2 * cls + below
    key = np.where(below, -norm, norm)  # closest to the mean first on both sides
    keep = smallest_per_group(group, key, ids, np.full(2 * len(labels), m))
    return {"group": group[keep], "key": key[keep], ID: ids[keep]}
