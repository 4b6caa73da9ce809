"""Which samples a run trains on, round by round: M2, M1 (norm_balanced) and the baselines.

A strategy picks the first subset (`initial`: a Selection, with notes for the user) and, after
each trained round, the samples to add (`next`: Additions), possibly dropping pool samples that
are then never trained on nor drawn. The driver owns everything else (training, stopping,
bookkeeping), so strategies stay small and testable.
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
from operators.select import Selection, balanced_draw, random_draw, selection, without_ids

from .config import JobConfig, StrategyConfig
from .seeding import derive_seed

NO_HARD = "no hard samples left in the pool"


@dataclass
class RoundContext:
    job: JobConfig
    train: ray.data.Dataset
    subset_ids: np.ndarray  # what the round just trained on
    manifest_ids: np.ndarray  # the subset plus the dropped samples: the pool is the rest
    round_index: int
    model_factory: Callable  # builds the model of the round just trained
    progress: Callable[[int, int], None] | None = None


@dataclass
class Additions:
    ids: np.ndarray
    reasons: np.ndarray
    stop_reason: str | None = None  # why the rounds end here; None: train on with the additions
    stats: dict = field(default_factory=dict)  # hard_found, infer_sample_passes, seconds
    dropped: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # out of the pool
    remaining: dict | None = None  # label -> pool samples left after the drop (dropping strategies)
    notes: list[str] = field(default_factory=list)  # what the user should hear (e.g. small classes)


class Full:
    """Baseline: every training sample, one long round with a one-cycle schedule."""

    name = "full"

    def initial(self, job: JobConfig, train: ray.data.Dataset) -> Selection:
        ids = np.sort(np.concatenate([b[ID] for b in train.select_columns([ID]).iter_batches(
            batch_size=65536, batch_format="numpy")]))
        return selection(ids, "all")

    def epochs(self, job: JobConfig) -> int:
        return job.strategy.epochs

    def next(self, ctx: RoundContext) -> Additions:
        return Additions(np.zeros(0, np.int64), np.zeros(0, object),
                         stop_reason="full data trained")


class InfoBatch(Full):
    """Baseline: Full's one round, with the training loop pruning well-learned samples each
    epoch by the InfoBatch rule (pipelines/infobatch.py; the loop keys on the name)."""

    name = "infobatch"


class RandomGrowth:
    """Baseline: M2's schedule, with random additions of M2's size instead of chosen ones."""

    name = "random"

    def initial(self, job: JobConfig, train: ray.data.Dataset) -> Selection:
        return random_draw(train, ratio=job.strategy.initial_ratio,
                           seed=derive_seed(job.seed, "initial"), reason="initial")

    def epochs(self, job: JobConfig) -> int:
        return job.train.epochs_per_round

    def next(self, ctx: RoundContext) -> Additions:
        s = ctx.job.strategy
        start = time.perf_counter()
        sel = random_draw(without_ids(ctx.train, ctx.subset_ids), n=s.hard_per_round + s.reps_per_round,
                          seed=derive_seed(ctx.job.seed, "random", ctx.round_index), reason="random")
        return Additions(sel.ids, sel.reasons, stop_reason=None if len(sel.ids) else NO_HARD,
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
        return Additions(ids, reasons, stop_reason=None if len(scan.hard_ids) else NO_HARD,
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


class NormBalanced:
    """M1: `per_class` samples per class by the norm rule; each round drops the pool samples the
    model already classifies correctly and draws `per_class` more per class from the rest."""

    name = "norm_balanced"

    def initial(self, job: JobConfig, train: ray.data.Dataset) -> Selection:
        return self._draw(job, train, exclude_ids=None, reason="initial")

    def epochs(self, job: JobConfig) -> int:
        return job.train.epochs_per_round

    def next(self, ctx: RoundContext) -> Additions:
        job = ctx.job
        start = time.perf_counter()
        scored = score(without_ids(ctx.train, ctx.manifest_ids), ctx.model_factory,
                       batch_size=job.score.batch_size, num_actors=job.score.num_actors,
                       use_gpu=job.score.use_gpu)
        scan = collect_hard(scored, 0, batch_size=job.score.batch_size, progress=ctx.progress)
        scored_seconds = time.perf_counter() - start
        start = time.perf_counter()
        dropped, remaining = learned_and_left(scan.scored)
        stop = remaining_stop(job.strategy, remaining)
        sel = selection([], "balanced") if stop else self._draw(
            job, ctx.train, exclude_ids=np.concatenate([ctx.manifest_ids, dropped]),
            reason="balanced")
        return Additions(sel.ids, sel.reasons, stop_reason=stop, dropped=dropped,
                         remaining=remaining, notes=sel.notes,
                         stats={"seconds_score": scored_seconds,
                                "seconds_select": time.perf_counter() - start,
                                "infer_sample_passes": scan.n_scored,
                                "hard_found": sum(remaining.values())})

    @staticmethod
    def _draw(job: JobConfig, train: ray.data.Dataset, exclude_ids, reason: str) -> Selection:
        s = job.strategy
        return balanced_draw(train, s.per_class, kind=s.norm, channel_weights=s.channel_weights,
                             exclude_ids=exclude_ids, reason=reason)


def learned_and_left(scored: dict) -> tuple[np.ndarray, dict]:
    """M1 step 6 on a scored pool: the ids classified correctly (ascending), and per label how
    many are still misclassified."""
    if not scored:
        return np.zeros(0, np.int64), {}
    correct = scored["correct"].astype(bool)
    labels, counts = np.unique(scored[LABEL][~correct], return_counts=True)
    return (np.sort(scored[ID][correct].astype(np.int64)),
            {int(c): int(n) for c, n in zip(labels, counts)})


def remaining_stop(s: StrategyConfig, remaining: dict) -> str | None:
    """M1 step 7's stop condition on the samples the model still gets wrong, or None."""
    total = sum(remaining.values())
    if total == 0:
        return "no misclassified samples left in the pool"
    if s.remaining_total is not None and total <= s.remaining_total:
        return f"{total} misclassified samples left <= remaining_total {s.remaining_total}"
    if s.remaining_per_class is not None and max(remaining.values()) <= s.remaining_per_class:
        return (f"every class has <= remaining_per_class {s.remaining_per_class} "
                f"misclassified samples left (at most {max(remaining.values())})")
    return None


STRATEGIES = {"m2": M2, "random": RandomGrowth, "full": Full, "norm_balanced": NormBalanced,
              "infobatch": InfoBatch}


def make_strategy(name: str):
    return STRATEGIES[name]()
