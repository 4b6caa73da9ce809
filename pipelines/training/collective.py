"""What the training workers agree on: sums, maxima and small gathered tables across ranks.

Every worker owns its own rows, so a decision about all of them (a global early stop, the k-means
of the scored rows, a top-k draw) is a reduction of small per-rank summaries. Each helper is the
identity in a single process (no process group), which is how the policies are unit-tested.
Gathered tables are merged in rank order, so every rank computes the same answer from them.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist

from raysift.operators.cluster import (
    KMeans,
    PassStats,
    assign_batch,
    cluster_candidates,
    greedy_keep,
    lloyd_partial,
    nearest_distance,
    proportional_counts,
    sample_candidates,
)
from raysift.operators.contract import ID
from raysift.operators.keys import hash_keys
from raysift.operators.select import prune_candidates

DEDUP_OVERSAMPLE = 8  # rows a cluster offers per representative it may take, with dedup


def grouped() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank_and_world() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if grouped() else (0, 1)


def all_sum(t: torch.Tensor) -> torch.Tensor:
    """`t` summed over ranks, in place (a CPU or device tensor)."""
    if grouped():
        dist.all_reduce(t)
    return t


def all_sum_np(a: np.ndarray) -> np.ndarray:
    """A float64 or int64 NumPy array summed over ranks (through a CPU tensor)."""
    return all_sum(torch.from_numpy(np.ascontiguousarray(a))).numpy()


def all_min_np(a: np.ndarray) -> np.ndarray:
    """A float64 NumPy array's element-wise minimum over ranks."""
    t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64))
    if grouped():
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return t.numpy()


def all_sum_int(value: int) -> int:
    """A count summed over ranks."""
    return int(all_sum_np(np.array([value], np.int64))[0])


def all_max(value: int) -> int:
    t = torch.tensor([value], dtype=torch.int64)
    if grouped():
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t)


def sync_buffers(model: torch.nn.Module) -> None:
    """Give every rank rank 0's buffers (BatchNorm statistics). Each rank's running statistics
    follow its own batches (the engine's DDP does not send them every step); synced after an
    epoch, every rank evaluates and scores exactly the model that rank 0 checkpoints."""
    if grouped():
        for buffer in model.buffers():
            dist.broadcast(buffer, 0)


def gather(obj) -> list:
    """Every rank's `obj`, in rank order (pickled; keep it small)."""
    if not grouped():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def merge_smallest(candidates: dict, limit: np.ndarray) -> dict | None:
    """select.py's per-group top-k merge across ranks: each rank offers its own candidates
    (columns `group`, `key`, `id`, ...), and every rank gets the same `limit[g]` smallest
    (key, id) per group. None when no rank had a candidate."""
    parts = [p for p in gather(candidates) if p is not None and len(p[ID])]
    return prune_candidates(parts, limit) if parts else None


class RankKMeans(KMeans):
    """KMeans over rows spread across the ranks: the same k-means++ start on the same sample
    (the smallest hash(seed, id) over all ranks) and Lloyd passes whose per-rank sums are
    all-reduced, so every rank ends with the same centres. `fit_rows` takes this rank's rows
    as {id, column} arrays; mini-batch steps are not offered."""

    def fit_rows(self, rows: dict) -> "RankKMeans":
        if self.mini_batch:
            raise ValueError("RankKMeans: mini_batch is not supported")
        self._validate()
        return self._fit(rows)

    def _draw_sample(self, rows: dict) -> np.ndarray:
        if self._sample is None:
            mine = sample_candidates(rows, self.sample_size, self.seed, self.column)
            got = merge_smallest(mine, np.array([self.sample_size]))
            x = got[self.column] if got else np.zeros((0, 0), np.float32)
            self.feature_shape_ = x.shape[1:] if got else None
            self._sample = x.reshape(len(x), -1).astype(np.float64)
        return self._sample

    def _pass(self, rows: dict, centers: np.ndarray, fraction: float, step: int) -> PassStats:
        part = lloyd_partial(rows, centers, self.column, self.feature_shape_, 1.0, (0, 0))
        k, d = centers.shape
        flat = np.concatenate(
            [
                part["sums"].reshape(-1),
                part["counts"].reshape(-1),
                part["inertia"],
                part["sq"],
                part["n"],
            ]
        ).astype(np.float64)
        total = all_sum_np(flat)
        return PassStats(
            total[: k * d].reshape(k, d),
            total[k * d : k * d + k],
            float(total[-3]),
            float(total[-2]),
            int(total[-1]),
        )


def representatives(
    rows: dict,
    column: str,
    n_total: int,
    n_clusters: int,
    seed: int,
    dedup: float | None = None,
    taken: np.ndarray | None = None,
    spread: bool = False,
) -> np.ndarray:
    """M2 step 4 over the rows of every rank (this rank's as {id, column} arrays): k-means,
    then per cluster the rows nearest its centre, as many as its share of `n_total`. Ids by
    cluster, nearest first; all of them when there are at most `n_total`. With `spread`, a
    cluster's rows are instead those of smallest hash(seed, id): a seeded uniform draw within it.

    With `dedup`, a row within that distance of one already chosen is passed over for the next
    in that order (operators/cluster.py `greedy_keep`, as `raysift cluster --dedup` does): offline
    augmentation's near-copies of a sample spend one representative, not several. So is a row
    within `dedup` of one of `taken`, this rank's rows already chosen (flat, in the same space;
    every rank's count). Each cluster offers DEDUP_OVERSAMPLE times its share; past that many
    near-copies it gets fewer rows."""
    n = all_sum_int(len(rows[ID]))
    if n == 0 or (n <= n_total and dedup is None):
        return np.concatenate(gather(rows[ID])).astype(np.int64)
    k = min(n_clusters, n)
    km = RankKMeans(n_clusters=k, max_iter=20, seed=seed, column=column).fit_rows(rows)
    assigned = assign_batch(rows, km.cluster_centers_, column, km.feature_shape_)
    key = "draw" if spread else "dist"
    if spread:  # a seeded uniform draw within each cluster: its extent, not only its core
        assigned[key] = hash_keys(assigned[ID].astype(np.int64), seed)
    sizes = all_sum_np(np.bincount(assigned["cluster"], minlength=k).astype(np.int64))
    quota = proportional_counts(sizes, min(n_total, n))
    if dedup is None:
        got = merge_smallest(cluster_candidates(assigned, np.arange(k), quota, key), quota)
        return got[ID].astype(np.int64)
    offered = cluster_candidates(assigned, np.arange(k), quota * DEDUP_OVERSAMPLE, key)
    order = np.argsort(rows[ID], kind="stable")
    at = order[np.searchsorted(rows[ID][order], offered[ID])]  # the offered rows' positions
    offered[column] = np.asarray(rows[column]).reshape(len(rows[ID]), -1)[at]
    got = merge_smallest(offered, quota * DEDUP_OVERSAMPLE)
    x = got[column].astype(np.float64)
    taken = np.zeros((0, x.shape[1])) if taken is None else taken.reshape(len(taken), x.shape[1])
    far = all_min_np(nearest_distance(x, taken)) > dedup
    chosen = np.zeros(0, np.int64)  # rows of `got`, cluster by cluster
    for g in range(k):
        mine = np.flatnonzero((got["group"] == g) & far)
        mine = mine[nearest_distance(x[mine], x[chosen]) > dedup]  # clear of earlier clusters'
        keep = greedy_keep(x[mine], got["key"][mine], dedup)
        chosen = np.concatenate([chosen, mine[keep][: quota[g]]])
    return got[ID][chosen].astype(np.int64)
