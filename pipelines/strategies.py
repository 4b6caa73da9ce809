"""Which samples a run trains on, round by round: M2 and the two baselines.

A strategy picks the first subset and, after each trained round, the samples to add. The driver
owns everything else (training, stopping, bookkeeping), so strategies stay small and testable.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import ray

from operators.cluster import KMeans, representatives
from operators.contract import ID, LABEL, from_columns
from operators.predict import collect_hard, score, shuffled_pool
from operators.select import random_draw, without_ids

from .config import JobConfig
from .seeding import derive_seed


@dataclass
class RoundContext:
    job: JobConfig
    train: ray.data.Dataset
    subset_ids: np.ndarray
    round_index: int
    model_factory: Callable  # builds the model of the round just trained
    progress: Callable[[int, int], None] | None = None


@dataclass
class Additions:
    ids: np.ndarray
    reasons: np.ndarray
    stop: bool = False  # the strategy has nothing more to add
    stats: dict = field(default_factory=dict)  # hard_found, infer_sample_passes, seconds


class Full:
    """Baseline: every training sample, one long round with a one-cycle schedule."""

    name = "full"

    def initial(self, job: JobConfig, train: ray.data.Dataset):
        ids = np.sort(np.concatenate([b[ID] for b in train.select_columns([ID]).iter_batches(
            batch_size=65536, batch_format="numpy")]))
        return ids, np.full(len(ids), "all", dtype=object)

    def epochs(self, job: JobConfig) -> int:
        return job.strategy.epochs

    def next(self, ctx: RoundContext) -> Additions:
        return Additions(np.zeros(0, np.int64), np.zeros(0, object), stop=True)


class RandomGrowth:
    """Baseline: M2's schedule, with random additions of M2's size instead of chosen ones."""

    name = "random"

    def initial(self, job: JobConfig, train: ray.data.Dataset):
        sel = random_draw(train, ratio=job.strategy.initial_ratio,
                          seed=derive_seed(job.seed, "initial"), reason="initial")
        return sel.ids, sel.reasons

    def epochs(self, job: JobConfig) -> int:
        return job.train.epochs_per_round

    def next(self, ctx: RoundContext) -> Additions:
        s = ctx.job.strategy
        start = time.perf_counter()
        sel = random_draw(without_ids(ctx.train, ctx.subset_ids), n=s.hard_per_round + s.reps_per_round,
                          seed=derive_seed(ctx.job.seed, "random", ctx.round_index), reason="random")
        return Additions(sel.ids, sel.reasons, stop=len(sel.ids) == 0,
                         stats={"seconds_select": time.perf_counter() - start,
                                "infer_sample_passes": 0, "hard_found": 0})


class M2(RandomGrowth):
    """M2: the first mispredictions of a seeded scan of the pool, plus cluster representatives."""

    name = "m2"

    def next(self, ctx: RoundContext) -> Additions:
        job, s = ctx.job, ctx.job.strategy
        start = time.perf_counter()
        pool = shuffled_pool(ctx.train, ctx.subset_ids, derive_seed(job.seed, "pool", ctx.round_index))
        scored = score(pool, ctx.model_factory, batch_size=job.score.batch_size,
                       num_actors=job.score.num_actors, use_gpu=job.score.use_gpu,
                       with_embedding=s.cluster_on == "embedding",
                       keep_features=s.cluster_on == "x")
        scan = collect_hard(scored, s.hard_per_round, batch_size=job.score.batch_size,
                            progress=ctx.progress)
        scored_seconds = time.perf_counter() - start
        start = time.perf_counter()
        reps = self._representatives(job, scan, ctx.round_index)
        ids = np.concatenate([scan.hard_ids, reps])
        reasons = np.array(["hard"] * len(scan.hard_ids) + ["representative"] * len(reps),
                           dtype=object)
        return Additions(ids, reasons, stop=len(scan.hard_ids) == 0,
                         stats={"seconds_score": scored_seconds,
                                "seconds_select": time.perf_counter() - start,
                                "infer_sample_passes": scan.n_scored,
                                "hard_found": int(len(scan.hard_ids)),
                                "pool_exhausted": scan.exhausted})

    @staticmethod
    def _representatives(job: JobConfig, scan, round_index: int) -> np.ndarray:
        """Cluster the scored, correctly classified rows; take those nearest each centre."""
        s = job.strategy
        if not s.reps_per_round or not scan.n_scored:
            return np.zeros(0, np.int64)
        keep = scan.scored["correct"].astype(bool)
        column = "embedding" if s.cluster_on == "embedding" else "x"
        if keep.sum() <= s.reps_per_round:
            return scan.scored[ID][keep].astype(np.int64)
        ds = from_columns({ID: scan.scored[ID][keep], LABEL: scan.scored[LABEL][keep],
                           column: scan.scored[column][keep]})
        k = min(s.cluster_k, int(keep.sum()))
        km = KMeans(n_clusters=k, max_iter=20, seed=derive_seed(job.seed, "kmeans", round_index) % (2**31),
                    column=column).fit(ds)
        return representatives(km.assign(ds), s.reps_per_round).ids


STRATEGIES = {"m2": M2, "random": RandomGrowth, "full": Full}


def make_strategy(name: str):
    return STRATEGIES[name]()
