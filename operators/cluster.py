"""k-means over a Ray Dataset of any size, and what M2 takes from the clusters.

`KMeans.fit` streams: k-means++ (or random) initialisation on a bounded sample drawn by
hash(seed, id), then Lloyd passes in which every block becomes one row of per-cluster sums,
counts and inertia that the driver adds up in a fixed order (by the block's first id), so a
seed gives the same centres whatever order the tasks finish in. Memory on the driver: the
sample plus k x d numbers per block of a pass.

`representatives` and `drop_near_duplicates` work on the output of `KMeans.assign`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import ray

from .contract import ID, DataError, X, check_finite, data_errors, features, require_columns
from .keys import hash_keys
from .select import Selection, gather_smallest, require, selection, smallest_per_group

logger = logging.getLogger(__name__)

_DEDUP_CHUNK = 256  # rows compared against each other at once in the near-duplicate filter
_SLICE = 16384  # rows per distance computation: bounds the (rows x k) temporaries


class KMeans:
    """k-means (Lloyd, or mini-batch with `mini_batch` rows a step) on a Dataset's `column`.

    A mini-batch step still reads every block but does the distance work only on the rows whose
    hash(seed, step, id) falls in the first `mini_batch / n` of the range, and moves each centre
    by the per-centre learning rate of Sculley's mini-batch k-means.

    `column` may hold tensors of any fixed shape (flattened) or embeddings. `tol` is relative to
    the mean per-feature variance, as in scikit-learn: fitting stops once the squared centre
    shift of a step is at most `tol` times it. Empty clusters are re-seeded from the sample
    point farthest from every centre. After `fit`: `cluster_centers_` (k, d), `inertia_` (sum
    of squared distances to the nearest centre, over all rows), `counts_` and `n_iter_`.
    """

    def __init__(
        self,
        n_clusters: int = 8,
        *,
        init="k-means++",
        max_iter: int = 100,
        tol: float = 1e-4,
        mini_batch: int | None = None,
        sample_size: int = 10_000,
        seed: int = 0,
        column: str = X,
    ):
        self.n_clusters = n_clusters
        self.init = init
        self.max_iter = max_iter
        self.tol = tol
        self.mini_batch = mini_batch
        self.sample_size = sample_size
        self.seed = seed
        self.column = column

    def fit(self, ds: ray.data.Dataset) -> "KMeans":
        self._validate()
        require(ds, [ID, self.column], where="KMeans.fit")
        return self._fit(ds.select_columns([ID, self.column]))

    def _fit(self, data) -> "KMeans":
        """The initialisation and the Lloyd loop over `data`, whatever `_draw_sample` and
        `_pass` read it from (a Dataset here; one rank's rows in
        pipelines/training/collective.py)."""
        k = self.n_clusters
        self._sample, self.feature_shape_ = None, None
        if isinstance(self.init, str):
            sample = self._draw_sample(data)
            _check_enough(k, len(sample))
            rng = np.random.default_rng(self.seed)
            if self.init == "k-means++":
                centers = kmeans_plusplus(sample, k, rng)
            else:
                centers = sample[np.sort(rng.choice(len(sample), k, replace=False))]
        else:
            centers = np.asarray(self.init, dtype=np.float64).reshape(k, -1)
        fraction = 1.0
        if self.mini_batch:
            with data_errors():
                n_rows = data.count()
            _check_enough(k, n_rows)
            fraction = min(1.0, self.mini_batch / n_rows)
        seen = np.zeros(k)  # mini-batch: rows each centre has absorbed so far
        tol = None
        self.n_iter_ = 0
        for step in range(self.max_iter):
            stats = self._pass(data, centers, fraction, step)
            if tol is None:
                if fraction == 1.0:
                    _check_enough(k, stats.n)
                tol = self.tol * stats.mean_variance
            if fraction < 1.0:
                seen += stats.counts
                moved = stats.counts > 0
                new = centers.copy()
                new[moved] += (
                    stats.sums[moved] - stats.counts[moved, None] * centers[moved]
                ) / seen[moved, None]
                empty = seen == 0
            else:
                empty = stats.counts == 0
                new = centers.copy()
                new[~empty] = stats.sums[~empty] / stats.counts[~empty, None]
            if empty.any():
                new = self._reseed(data, new, empty)
            shift = float(((new - centers) ** 2).sum())
            centers = new
            self.n_iter_ = step + 1
            logger.info(
                "k-means step %d: inertia %.6g before the step, centre shift %.3g",
                self.n_iter_,
                stats.inertia,
                shift,
            )
            if shift <= tol:
                break
        final = self._pass(data, centers, 1.0, self.max_iter)
        self.cluster_centers_ = centers
        self.inertia_ = final.inertia
        self.counts_ = final.counts.astype(np.int64)
        return self

    def assign(self, ds: ray.data.Dataset) -> ray.data.Dataset:
        """Lazily add `cluster` (int64, nearest centre) and `dist` (float32, Euclidean) to ds."""
        if not hasattr(self, "cluster_centers_"):
            raise RuntimeError("KMeans is not fitted yet: call fit(ds) first")
        return ds.map_batches(
            assign_batch,
            batch_format="numpy",
            batch_size=None,
            fn_kwargs={
                "centers": self.cluster_centers_,
                "column": self.column,
                "shape": self.feature_shape_,
            },
        )

    def _validate(self) -> None:
        _check_int("n_clusters", self.n_clusters, 1)
        _check_int("max_iter", self.max_iter, 1)
        _check_int("seed", self.seed, 0)
        if self.mini_batch is not None:
            _check_int("mini_batch", self.mini_batch, 1)
        if not (isinstance(self.tol, (int, float)) and np.isfinite(self.tol) and self.tol >= 0):
            raise ValueError(f"tol must be a finite number >= 0, got {self.tol!r}")
        if isinstance(self.init, str):
            if self.init not in ("k-means++", "random"):
                raise ValueError(
                    f"init must be 'k-means++', 'random' or an array of centres, got {self.init!r}"
                )
            _check_int("sample_size", self.sample_size, self.n_clusters)
        else:
            init = np.asarray(self.init, dtype=np.float64)
            if init.ndim < 2 or len(init) != self.n_clusters or not np.isfinite(init).all():
                raise ValueError(
                    f"init must hold n_clusters={self.n_clusters} finite centres, "
                    f"got an array of shape {init.shape}"
                )
            _check_int("sample_size", self.sample_size, 1)

    def _draw_sample(self, data: ray.data.Dataset) -> np.ndarray:
        """Up to `sample_size` rows, those with the smallest hash(seed, id), flattened."""
        if self._sample is None:
            parts = data.map_batches(
                sample_candidates,
                batch_format="numpy",
                batch_size=None,
                fn_kwargs={"n": self.sample_size, "seed": self.seed, "column": self.column},
            )
            got = gather_smallest(parts, np.array([self.sample_size]))
            x = got[self.column] if got else np.zeros((0, 0), np.float32)
            self.feature_shape_ = x.shape[1:] if got else None
            self._sample = x.reshape(len(x), -1).astype(np.float64)
        return self._sample

    def _pass(self, data, centers: np.ndarray, fraction: float, step: int) -> "PassStats":
        parts = data.map_batches(
            lloyd_partial,
            batch_format="numpy",
            batch_size=None,
            fn_kwargs={
                "centers": centers,
                "column": self.column,
                "shape": self.feature_shape_,
                "fraction": fraction,
                "seeds": (self.seed, step),
            },
        )
        with data_errors():
            rows = list(parts.iter_batches(batch_size=None, batch_format="numpy"))
        if not rows:
            return PassStats(np.zeros_like(centers), np.zeros(len(centers)), 0.0, 0.0, 0)
        cat = {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}
        order = np.argsort(cat["first_id"], kind="stable")  # fixed order: fixed float sums
        return PassStats(
            cat["sums"][order].sum(0),
            cat["counts"][order].sum(0),
            float(cat["inertia"][order].sum()),
            float(cat["sq"][order].sum()),
            int(cat["n"].sum()),
        )

    def _reseed(self, data, centers: np.ndarray, empty: np.ndarray) -> np.ndarray:
        """Move each empty centre, lowest index first, to the sample point farthest from all."""
        sample = self._draw_sample(data)
        centers = centers.copy()
        closest = (
            _sq_dist(sample, centers[~empty]).min(1)
            if (~empty).any()
            else np.full(len(sample), np.inf)
        )  # a mini-batch step that drew no rows
        for j in np.flatnonzero(empty):
            centers[j] = sample[np.argmax(closest)]
            closest = np.minimum(closest, _sq_dist(sample, centers[j : j + 1])[:, 0])
        logger.info("k-means: re-seeded empty cluster(s) %s", np.flatnonzero(empty).tolist())
        return centers


@dataclass
class PassStats:
    sums: np.ndarray  # (k, d) float64
    counts: np.ndarray  # (k,)
    inertia: float
    sq: float  # sum of squared feature values
    n: int

    @property
    def mean_variance(self) -> float:
        """Mean over features of the variance, the scale `tol` is relative to."""
        if not self.n:
            return 0.0
        d = self.sums.shape[1]
        mean = self.sums.sum(0) / self.n
        return max(self.sq / (self.n * d) - float(mean @ mean) / d, 0.0)


def _check_int(name: str, value, minimum: int) -> None:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _check_enough(k: int, n: int) -> None:
    """A DataError (a ValueError): the parameter is fine, this data is too small for it."""
    if n < k:
        raise DataError(f"n_clusters={k} is larger than the number of samples ({n})")


def kmeans_plusplus(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Greedy k-means++: each new centre is the best of 2 + log(k) D^2-weighted candidates."""
    n = len(x)
    trials = 2 + int(np.log(k))
    centers = np.empty((k, x.shape[1]))
    centers[0] = x[rng.integers(n)]
    closest = _sq_dist(x, centers[:1])[:, 0]
    for c in range(1, k):
        total = closest.sum()
        if total <= 0:  # fewer distinct points than k: the rest duplicate, then get re-seeded
            centers[c:] = x[rng.integers(n, size=k - c)]
            break
        picks = np.searchsorted(np.cumsum(closest), rng.random(trials) * total, side="right")
        picks = np.minimum(picks, n - 1)
        potential = np.minimum(closest[None, :], _sq_dist(x[picks], x))
        best = int(potential.sum(1).argmin())
        centers[c] = x[picks[best]]
        closest = potential[best]
    return centers


def _sq_dist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.maximum(d2, 0.0)


def nearest(x: np.ndarray, centers: np.ndarray, sq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of each row's nearest centre and the squared distance to it.

    `sq` holds the rows' squared norms: d^2 = ||x||^2 - 2 max_c(x.c - ||c||^2 / 2), one matrix
    product per slice of rows and no (rows x k x d) work beyond it.
    """
    c = centers.astype(np.float32)
    half = 0.5 * (c * c).sum(1)
    labels = np.empty(len(x), np.int64)
    best = np.empty(len(x), np.float32)
    for s in range(0, len(x), _SLICE):
        score = x[s : s + _SLICE] @ c.T
        score -= half
        labels[s : s + _SLICE] = score.argmax(1)
        best[s : s + _SLICE] = score[np.arange(len(score)), labels[s : s + _SLICE]]
    return labels, np.maximum(sq - 2.0 * best, 0.0)


def cluster_sums(x: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Per-cluster sums of the rows, (k, d) float64: a one-hot product per slice of rows."""
    sums = np.zeros((k, x.shape[1]))
    for s in range(0, len(x), _SLICE):
        part = labels[s : s + _SLICE]
        onehot = np.zeros((len(part), k), np.float32)
        onehot[np.arange(len(part)), part] = 1.0
        sums += onehot.T @ x[s : s + _SLICE]
    return sums


def _checked(batch: dict, column: str, shape=None, d: int | None = None):
    """The batch's features as (n, d) float32 after the shape and NaN/inf checks, and the
    squared norm of each row."""
    require_columns(batch.keys(), [column])
    x = features(batch, column)
    if shape is not None and x.shape[1:] != tuple(shape):
        raise DataError(
            f"column '{column}': samples of shape {x.shape[1:]} in a dataset whose "
            f"samples have shape {tuple(shape)}"
        )
    flat = x.reshape(len(x), -1)
    if d is not None and len(x) and flat.shape[1] != d:
        raise DataError(
            f"column '{column}': samples with {flat.shape[1]} features, but the centres have {d}"
        )
    sq = np.einsum("ij,ij->i", flat, flat)
    if not np.isfinite(sq).all():  # NaN or inf in a row shows in its squared norm
        where = f"column '{column}'"
        check_finite(flat, batch.get(ID), where=where)
        raise DataError(f"{where}: values too large for float32 distances")
    return flat, sq


def sample_candidates(batch: dict, n: int, seed: int, column: str) -> dict:
    ids = batch[ID].astype(np.int64)
    _checked(batch, column)
    key = hash_keys(ids, seed)
    keep = smallest_per_group(np.zeros(len(ids), np.int64), key, ids, np.array([n]))
    return {
        "group": np.zeros(len(keep), np.int64),
        "key": key[keep],
        ID: ids[keep],
        column: features(batch, column)[keep],
    }


def lloyd_partial(
    batch: dict, centers: np.ndarray, column: str, shape, fraction: float, seeds: tuple
) -> dict:
    """One block's per-cluster sums and counts, inertia, sum of squares and row count."""
    ids = batch[ID].astype(np.int64)
    x, sq = _checked(batch, column, shape, centers.shape[1])
    first = ids.min() if len(ids) else -1
    if fraction < 1.0:  # mini-batch step: the rows whose hash(seed, step, id) falls below
        keep = hash_keys(ids, *seeds) < np.uint64(min(int(fraction * 2.0**64), 2**64 - 1))
        x, sq = x[keep], sq[keep]
    k = len(centers)
    labels, d2 = nearest(x, centers, sq)
    return {
        "first_id": np.array([first]),
        "sums": cluster_sums(x, labels, k)[None],
        "counts": np.bincount(labels, minlength=k)[None],
        "inertia": np.array([d2.sum(dtype=np.float64)]),
        "sq": np.array([sq.sum(dtype=np.float64)]),
        "n": np.array([len(x)]),
    }


def assign_batch(batch: dict, centers: np.ndarray, column: str, shape) -> dict:
    x, sq = _checked(batch, column, shape, centers.shape[1])
    labels, _ = nearest(x, centers, sq)
    diff = x - centers.astype(np.float32)[labels]  # exact distances: near-copies rank right
    return {
        **batch,
        "cluster": labels,
        "dist": np.sqrt(np.einsum("ij,ij->i", diff, diff)).astype(np.float32),
    }


def proportional_counts(sizes: np.ndarray, n_total: int) -> np.ndarray:
    """n_c proportional to `sizes`, summing to min(n_total, sizes.sum()).

    Largest-remainder rounding in exact integers; equal remainders go to the lower index.
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    if n_total >= int(sizes.sum()):
        return sizes.copy()
    return share_out(n_total, sizes)


def share_out(n: int, sizes: np.ndarray) -> np.ndarray:
    """n split in proportion to `sizes` (n may exceed their sum): largest-remainder rounding
    in exact integers, equal remainders to the lower index."""
    sizes = np.asarray(sizes, dtype=np.int64)
    base, remainder = np.divmod(n * sizes, max(int(sizes.sum()), 1))
    extra = n - int(base.sum())
    base[np.lexsort((np.arange(len(sizes)), -remainder))[:extra]] += 1
    return base


def representatives(
    assigned: ray.data.Dataset, n_total: int, reason: str = "representative"
) -> Selection:
    """M2 step 4: per cluster the n_c rows nearest its centre, n_c proportional to its size.

    Two streaming passes: per-block cluster counts, added up on the driver (no shuffle), then
    each block offers its own n_c nearest per cluster and the driver keeps the overall n_c
    (ties to the smaller id). Ids come by cluster, nearest first.
    """
    if not isinstance(n_total, (int, np.integer)) or n_total < 0:
        raise ValueError(f"n_total must be a non-negative integer, got {n_total!r}")
    require(assigned, [ID, "cluster", "dist"], where="representatives")
    if n_total == 0:
        return selection([], reason)
    parts = assigned.select_columns(["cluster"]).map_batches(
        _count_clusters, batch_format="numpy", batch_size=None
    )
    with data_errors():
        counted = list(parts.iter_batches(batch_size=None, batch_format="numpy"))
    if not counted:
        return selection([], reason, ["representatives: the dataset has no rows"])
    clusters, which = np.unique(
        np.concatenate([c["cluster"] for c in counted]), return_inverse=True
    )
    sizes = np.bincount(which, weights=np.concatenate([c["count"] for c in counted]))
    quota = proportional_counts(sizes.astype(np.int64), n_total)
    parts = assigned.select_columns([ID, "cluster", "dist"]).map_batches(
        cluster_candidates,
        batch_format="numpy",
        batch_size=None,
        fn_kwargs={"clusters": clusters, "quota": quota},
    )
    got = gather_smallest(parts, quota)
    ids = got[ID] if got else np.zeros(0, np.int64)
    notes = (
        []
        if len(ids) == n_total
        else [f"representatives: asked for {n_total} but there are {len(ids)} rows; all taken"]
    )
    return selection(ids, reason, notes)


def _count_clusters(batch: dict) -> dict:
    clusters, counts = np.unique(batch["cluster"], return_counts=True)
    return {"cluster": clusters.astype(np.int64), "count": counts}


def cluster_candidates(
    batch: dict, clusters: np.ndarray, quota: np.ndarray, key: str = "dist"
) -> dict:
    """Per cluster, this block's `quota` rows of smallest `key` (`dist`: nearest the centre)."""
    ids = batch[ID].astype(np.int64)
    group = np.searchsorted(clusters, batch["cluster"])  # every cluster was counted: same rows
    value = batch[key]
    keep = smallest_per_group(group, value, ids, quota)
    return {"group": group[keep], "key": value[keep], ID: ids[keep]}


def drop_near_duplicates(
    assigned: ray.data.Dataset, threshold: float, column: str = X
) -> ray.data.Dataset:
    """Within each cluster, drop a row closer than `threshold` to a row already kept.

    Rows are visited by (dist, id), so the row nearest the centre of a group of near-copies
    (e.g. offline-augmented variants of one image) is the one kept. Each cluster is handled
    by one task through Ray Data's groupby, so a cluster must fit in a worker's memory.
    """
    if not isinstance(threshold, (int, float)) or not np.isfinite(threshold) or threshold <= 0:
        raise ValueError(f"threshold must be a finite number > 0, got {threshold!r}")
    require(assigned, [ID, "cluster", "dist", column], where="drop_near_duplicates")
    return assigned.groupby("cluster").map_groups(
        _dedup_group,
        batch_format="numpy",
        fn_kwargs={"threshold": float(threshold), "column": column},
    )


def _dedup_group(batch: dict, threshold: float, column: str) -> dict:
    order = np.lexsort((batch[ID], batch["dist"]))
    batch = {k: v[order] for k, v in batch.items()}
    x = _checked(batch, column)[0].astype(np.float64)
    keep = greedy_keep(x, batch["dist"].astype(np.float64), threshold)
    return {k: v[keep] for k, v in batch.items()}


def nearest_distance(x: np.ndarray, others: np.ndarray) -> np.ndarray:
    """Each row of `x`'s Euclidean distance to its nearest row of `others` (inf for none),
    `others` taken a chunk at a time."""
    near = np.full(len(x), np.inf)
    for start in range(0, len(others), _DEDUP_CHUNK * 16):
        d2 = _sq_dist(x, others[start : start + _DEDUP_CHUNK * 16])
        near = np.minimum(near, np.sqrt(d2.min(1)))
    return near


def greedy_keep(x: np.ndarray, dist: np.ndarray, threshold: float) -> np.ndarray:
    """Mask of rows kept when each row, in order, is dropped if within `threshold` of a kept one.

    Rows come sorted by `dist` (distance to a common centre). By the triangle inequality a
    kept row more than `threshold` nearer the centre cannot be that close, so each chunk is
    compared with the recent kept rows only.
    """
    n = len(x)
    keep = np.zeros(n, dtype=bool)
    kept = np.zeros(0, dtype=np.int64)
    t2 = threshold * threshold
    for start in range(0, n, _DEDUP_CHUNK):
        chunk = x[start : start + _DEDUP_CHUNK]
        slack = 1e-4 * (threshold + dist[start])  # `dist` was rounded to float32
        recent = kept[dist[kept] > dist[start] - threshold - slack]
        blocked = (_sq_dist(chunk, x[recent]) < t2).any(1)
        within = _sq_dist(chunk, chunk) < t2
        for i in range(len(chunk)):
            if not blocked[i]:
                keep[start + i] = True
                blocked |= within[i]
        kept = np.flatnonzero(keep)
    return keep
