"""The SeTa rule (Zhou, Gao and Wang, CVPR 2025, "Scale Efficient Training for Large Datasets"),
written from the paper and the authors' description: which rows train an epoch.

Like InfoBatch (pipelines/selection/infobatch.py) every row keeps its latest training loss as its
score. Each pruned epoch SeTa
1. keeps a random share `1 - ratio` of the rows (floored at 0.1, as InfoBatch's keep ratio is),
2. groups the kept rows by their score into `num_group` groups (k-means on the one number),
   ordered from easy (low loss) to hard,
3. trains a window of `round(num_group * window_scale)` consecutive groups that slides from the
   easy end to the hard end and starts over, one step an epoch; the first epoch takes every
   group.
The last epochs (from ceil(delta * epochs), InfoBatch's annealing) train a random `1 - ratio`
share of all rows, with no regard to loss. Rows weigh 1 throughout: SeTa does not rescale.

**(our choice)** the k-means: Lloyd's steps on the scores from centres spaced evenly between
the smallest and largest score, a row going to the nearest centre (the lower one on a tie); it
is exact and deterministic where the authors call scikit-learn. When every score is equal (the
first epoch) the kept rows are cut into `num_group` equal parts in their drawn order.
Pure functions of the scores and a NumPy generator; `pooled` lets every DDP rank fit the same
centres to the kept scores of all ranks while it draws and keeps its own rows.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from raysift.selection.infobatch import anneal_epoch

MIN_KEEP = 0.1
_EPS = 1e-9


def keep_ratio(ratio: float) -> float:
    """The share of rows an epoch draws before grouping: 1 - ratio, floored at 0.1."""
    return min(1.0, max(MIN_KEEP, 1.0 - ratio))


def random_keep(n: int, ratio: float, rng: np.random.Generator) -> np.ndarray:
    """floor(n * keep_ratio) of range(n), uniformly, in the order drawn."""
    return rng.permutation(n)[: math.floor(n * keep_ratio(ratio) + _EPS)]


def kmeans_1d(values: np.ndarray, k: int, max_iter: int = 100) -> np.ndarray:
    """`k` centres, ascending, of Lloyd's k-means on one-dimensional `values`, started evenly
    spaced between their minimum and maximum. A centre that loses all its values stays put."""
    values = np.asarray(values, np.float64)
    lo, hi = float(values.min()), float(values.max())
    centres = lo + (hi - lo) * (np.arange(k) + 0.5) / k
    for _ in range(max_iter):
        group = group_of(values, centres)
        sums = np.bincount(group, weights=values, minlength=k)
        counts = np.bincount(group, minlength=k)
        new = np.where(counts > 0, sums / np.maximum(counts, 1), centres)
        new = np.sort(new)
        if np.array_equal(new, centres):
            break
        centres = new
    return centres


def group_of(values: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Each value's nearest centre (centres ascending; a tie goes to the lower one)."""
    return np.searchsorted((centres[1:] + centres[:-1]) / 2, values, side="left")


def window(num_group: int, step: int, window_scale: float) -> tuple[int, int]:
    """The groups [start, end) an epoch trains: all of them at step 0, else a window of
    round(num_group * window_scale) groups at offset step mod (the positions it can take)."""
    if step == 0:
        return 0, num_group
    size = round(num_group * window_scale)
    if size < 1:
        raise ValueError(f"window_scale: {window_scale} of {num_group} groups leaves none")
    start = step % (num_group - size + 1)
    return start, start + size


def plan_epoch(
    scores: np.ndarray,
    epoch: int,
    epochs: int,
    ratio: float,
    num_group: int,
    window_scale: float,
    delta: float,
    rng: np.random.Generator,
    pooled: Callable[[np.ndarray], np.ndarray] = lambda v: v,
) -> np.ndarray:
    """The rows (ascending) that train `epoch` of `epochs`, from each row's score.

    `pooled(kept scores)` returns the kept scores the groups are fitted to: this rank's own by
    default, every rank's when the rows are spread over ranks. At least one row trains when
    there are any.
    """
    n = len(scores)
    kept = random_keep(n, ratio, rng)
    if epoch >= anneal_epoch(epochs, delta):
        return np.sort(kept)
    values = np.asarray(pooled(np.asarray(scores, np.float64)[kept]), np.float64)
    if not len(values) or values.min() == values.max():
        group = np.zeros(len(kept), np.int64)
        for g, part in enumerate(np.array_split(np.arange(len(kept)), num_group)):
            group[part] = g
    else:
        group = group_of(np.asarray(scores, np.float64)[kept], kmeans_1d(values, num_group))
    start, end = window(num_group, epoch, window_scale)
    pick = kept[(group >= start) & (group < end)]
    if not len(pick):  # as the authors do: never an empty epoch
        pick = kept[:1] if len(kept) else np.arange(1)
    return np.sort(pick)
