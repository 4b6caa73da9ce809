"""Which rows a run trains on, as policies: M2, M1 (norm_balanced) and the baselines.

Inside every training worker a policy picks the first subset (`initial`), says which of the
rank's rows each epoch trains on and with what weights (`plan_epoch`), and what a finished round
adds, drops or stops (`after_round`). Everything else
(training, validation, checkpoints, the manifest, the generic stop rules) is the engine's, so a
new strategy is one class here. After a round every rank sees only its own rows; the policies
decide through the collectives in pipelines/training/collective.py, so every rank gets the same
answer.
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from raysift.config import JobConfig, StrategyConfig
from raysift.data.share import Share
from raysift.operators.contract import ID, LABEL, X
from raysift.operators.norms import Norms
from raysift.operators.select import (
    Selection,
    balanced_candidates,
    compose_balanced,
    random_candidates,
    selection,
)
from raysift.seeding import derive_seed
from raysift.selection import seta
from raysift.selection.infobatch import initial_scores, plan_epoch, update_scores
from raysift.selection.scan import scan_pool
from raysift.training.collective import (
    all_sum,
    all_sum_int,
    all_sum_np,
    gather,
    merge_smallest,
    rank_and_world,
    representatives,
)

NO_HARD = "no hard samples left in the pool"


@dataclass
class EpochPlan:
    """The epoch's rows (positions into the rank's subset rows) and their loss weights; None:
    weight 1 through the job's augment and mixup sections."""

    pick: np.ndarray
    weights: torch.Tensor | None = None


@dataclass
class RoundView:
    """What a policy sees, on one rank, of the round just trained."""

    job: JobConfig
    round_index: int
    num_classes: int
    share: Share
    pool: np.ndarray  # positions of this rank's rows not in the manifest, in file order
    # (positions, extra column: None | "embedding" | "x") -> id, label, loss, correct, ...
    score_rows: Callable[[np.ndarray, str | None], dict]
    progress: Callable[[int, int], None] | None = None


@dataclass
class Additions:
    """A round's outcome. The rows it names may be every rank's or only this rank's own (each
    rank keeps those of its share); the rest is the same on every rank."""

    ids: np.ndarray
    reasons: np.ndarray
    stop_reason: str | None = None  # why the rounds end here; None: train on with the additions
    dropped: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # out of the pool
    remaining: dict | None = None  # label -> pool samples left after the drop (dropping policies)
    notes: list[str] = field(default_factory=list)  # what the user should hear (e.g. small classes)
    hard_found: int = 0
    infer_sample_passes: int = 0
    seconds_score: float = 0.0
    seconds_score_batches: float = 0.0  # of seconds_score, in the model's forward passes
    seconds_select: float = 0.0


def nothing(stop_reason: str | None = None, **stats) -> Additions:
    return Additions(np.zeros(0, np.int64), np.zeros(0, object), stop_reason=stop_reason, **stats)


class Policy(ABC):
    """Train every subset row each epoch, with weight 1; the subclasses say the rest."""

    name = ""
    single_round = False  # one round on all the data: no stop rules, no final phase
    plans_budget = (
        False  # strategy.budget_fraction plans its rounds (pipelines/selection/budget.py)
    )

    @abstractmethod
    def initial(self, view: RoundView) -> Selection:
        """The round-0 subset, drawn from every rank's rows (`view.pool`: all of them); as
        with `Additions`, a policy may name only this rank's rows."""

    def epochs(self, job: JobConfig) -> int:
        return job.train.epochs_per_round

    def planned_sizes(self, job: JobConfig, n_train: int, num_classes: int) -> tuple[int, int]:
        """(round 0's rows, rows a round adds) when every round adds all it may: the run's
        planned length, which a schedule over the whole run spans."""
        return n_train, 0

    def __init__(self):
        self.scores: torch.Tensor | None = None  # each trained row's latest loss (pruning)
        self.scores_phase: int | None = None  # the phase the scores belong to

    def plan_epoch(
        self, job: JobConfig, n_rows: int, round_index: int, epoch: int, epochs: int
    ) -> EpochPlan:
        """Every subset row with weight 1; with `strategy.round_prune_ratio`, InfoBatch's rule
        inside the phase: its first epoch trains every row, later ones leave out that share of
        the rows whose loss is below the mean. Scores start over each phase, whose subset is
        new."""
        ratio = job.strategy.round_prune_ratio
        if self.single_round or not ratio:
            return EpochPlan(np.arange(n_rows))
        if self.scores is None or self.scores_phase != round_index or len(self.scores) != n_rows:
            self.scores, self.scores_phase = initial_scores(n_rows), round_index
        rank, _ = rank_and_world()
        return infobatch_plan(
            self.scores,
            ratio,
            job.strategy.anneal_delta,
            derive_seed(job.seed, "round_prune", round_index, epoch, rank),
            epoch,
            epochs,
        )

    def end_epoch(self, pick: np.ndarray, losses: torch.Tensor) -> None:
        """Each picked row's training loss (only called when `plan_epoch` gave weights)."""
        self.scores = update_scores(self.scores, torch.from_numpy(pick), losses)

    @abstractmethod
    def after_round(self, view: RoundView) -> Additions:
        """What the round just trained adds, drops or stops; called on every rank at once."""

    def state_dict(self) -> dict:
        """This rank's policy state, saved with each checkpoint."""
        return (
            {}
            if self.scores is None
            else {"scores": self.scores, "scores_phase": self.scores_phase}
        )

    def load_state_dict(self, state: dict) -> None:
        self.scores, self.scores_phase = state.get("scores"), state.get("scores_phase")


class Full(Policy):
    """Baseline: every training sample, one long round with a one-cycle schedule."""

    name = "full"
    single_round = True

    def initial(self, view: RoundView) -> Selection:
        return selection(view.share.ids[view.pool], "all")  # each rank its own rows

    def epochs(self, job: JobConfig) -> int:
        return job.strategy.epochs

    def after_round(self, view: RoundView) -> Additions:
        return nothing("full data trained")


class ScoredPruning(Full):
    """Full's one round, each epoch training the rows a dynamic-pruning rule picks from their
    latest training losses (the subclass's rule). Each rank keeps the scores of its own rows and
    draws its own rows with its own seed."""

    def plan_epoch(
        self, job: JobConfig, n_rows: int, round_index: int, epoch: int, epochs: int
    ) -> EpochPlan:
        if self.scores is None:
            self.scores = initial_scores(n_rows)
        rank, _ = rank_and_world()
        return self.pick(
            job, derive_seed(job.seed, self.name, round_index, epoch, rank), epoch, epochs
        )

    @abstractmethod
    def pick(self, job: JobConfig, seed: int, epoch: int, epochs: int) -> EpochPlan:
        """The epoch's rows and weights from `self.scores` (weights are needed: they make the
        engine return the rows' losses)."""


class InfoBatch(ScoredPruning):
    """Baseline: the InfoBatch rule (pipelines/selection/infobatch.py); the mean the scores are
    compared with is over all ranks."""

    name = "infobatch"

    def pick(self, job: JobConfig, seed: int, epoch: int, epochs: int) -> EpochPlan:
        s = job.strategy
        return infobatch_plan(self.scores, s.prune_ratio, s.anneal_delta, seed, epoch, epochs)


class Seta(ScoredPruning):
    """Baseline: the SeTa rule (pipelines/selection/seta.py): a random share, grouped by loss, a
    window sliding from easy to hard; the groups are fitted to the kept scores of all ranks."""

    name = "seta"

    def pick(self, job: JobConfig, seed: int, epoch: int, epochs: int) -> EpochPlan:
        s = job.strategy
        rows = seta.plan_epoch(
            self.scores.numpy(),
            epoch,
            epochs,
            s.seta_ratio,
            s.num_group,
            s.window_scale,
            s.anneal_delta,
            np.random.default_rng(seed),
            pooled=lambda v: np.concatenate(gather(v)),
        )
        return EpochPlan(rows, torch.ones(len(rows), dtype=torch.float64))


class RandomGrowth(Policy):
    """Baseline: M2's schedule, with random additions of M2's size instead of chosen ones."""

    name = "random"
    plans_budget = True

    def initial(self, view: RoundView) -> Selection:
        total = all_sum_int(len(view.pool))
        n = math.floor(view.job.strategy.initial_ratio * total + 0.5)
        return random_pick(view, n, derive_seed(view.job.seed, "initial"), "initial")

    def planned_sizes(self, job: JobConfig, n_train: int, num_classes: int) -> tuple[int, int]:
        s = job.strategy
        return math.floor(s.initial_ratio * n_train + 0.5), s.hard_per_round + s.reps_per_round

    def after_round(self, view: RoundView) -> Additions:
        s = view.job.strategy
        start = time.perf_counter()
        sel = random_pick(
            view,
            s.hard_per_round + s.reps_per_round,
            derive_seed(view.job.seed, "random", view.round_index),
            "random",
        )
        return Additions(
            sel.ids,
            sel.reasons,
            stop_reason=None if len(sel) else NO_HARD,
            seconds_select=time.perf_counter() - start,
        )


class M2(RandomGrowth):
    """M2: the first mispredictions of a seeded scan of the pool, plus cluster representatives
    of the scored rows the model got right. With `hard_fill`, a scan that runs out of
    mispredictions fills the rest of `hard_per_round` with the right rows of highest loss or
    lowest margin: late rounds, when the model gets nearly all the pool right, still add the
    rows nearest its boundary rather than stopping or adding fewer."""

    name = "m2"

    def after_round(self, view: RoundView) -> Additions:
        job, s = view.job, view.job.strategy
        start = time.perf_counter()
        rank, _ = rank_and_world()
        order = np.random.default_rng(derive_seed(job.seed, "pool", view.round_index, rank))
        column = "embedding" if s.cluster_on == "embedding" else X
        scan = scan_pool(
            lambda rows: view.score_rows(rows, column),
            view.pool[order.permutation(len(view.pool))],
            s.hard_per_round,
            rank_batch(job),
            view.progress,
        )
        scored_seconds = time.perf_counter() - start
        start = time.perf_counter()
        got = scan.scored
        right = got["correct"].astype(bool) if got else np.zeros(0, bool)
        fill = np.zeros(0, np.int64)
        short = s.hard_per_round - len(scan.hard_ids)
        if s.hard_fill != "none" and short > 0:  # the scan ran out of mispredictions
            fill = nearest_misses(got, right, FILL_KEYS[s.hard_fill], short)
            if got:  # the fill is no representative
                right &= ~np.isin(got[ID], fill)
        reps = np.zeros(0, np.int64)
        if s.reps_per_round:
            rows = (
                {ID: got[ID][right], column: got[column][right]}
                if got
                else {ID: np.zeros(0, np.int64), column: np.zeros((0, 1), np.float32)}
            )
            reps = representatives(
                rows,
                column,
                s.reps_per_round,
                s.cluster_k,
                derive_seed(job.seed, "kmeans", view.round_index) % 2**31,
                dedup=s.reps_dedup,
                spread=s.reps_pick == "spread",
                taken=_chosen_features(view, got, column, np.concatenate([scan.hard_ids, fill]))
                if s.reps_dedup
                else None,
            )
        ids = np.concatenate([scan.hard_ids, fill, reps])
        reasons = np.array(
            ["hard"] * len(scan.hard_ids)
            + ["hard_fill"] * len(fill)
            + ["representative"] * len(reps),
            dtype=object,
        )
        found = len(scan.hard_ids) + len(fill)
        return Additions(
            ids,
            reasons,
            stop_reason=None if found else NO_HARD,
            hard_found=int(len(scan.hard_ids)),
            infer_sample_passes=scan.n_scored,
            seconds_score=scored_seconds,
            seconds_score_batches=scan.seconds_batches,
            seconds_select=time.perf_counter() - start,
        )


class NormBalanced(Policy):
    """M1: `per_class` samples per class by the norm rule; each round drops the pool samples the
    model already classifies correctly and draws `per_class` more per class from the rest.
    With `rescore_dropped` they leave only that round's draw and are scored again the next:
    a round-0 model's verdict no longer removes a sample for good."""

    name = "norm_balanced"

    def initial(self, view: RoundView) -> Selection:
        return self._draw(view, view.pool, "initial")

    def planned_sizes(self, job: JobConfig, n_train: int, num_classes: int) -> tuple[int, int]:
        return (job.strategy.per_class * num_classes,) * 2

    def after_round(self, view: RoundView) -> Additions:
        job, s = view.job, view.job.strategy
        start = time.perf_counter()
        scan = scan_pool(
            lambda rows: view.score_rows(rows, None), view.pool, 0, rank_batch(job), view.progress
        )
        scored_seconds = time.perf_counter() - start
        start = time.perf_counter()
        right = scan.scored["correct"].astype(bool) if scan.scored else np.zeros(0, bool)
        labels = scan.scored[LABEL][~right] if scan.scored else np.zeros(0, np.int64)
        missed = all_sum_np(np.bincount(labels, minlength=view.num_classes).astype(np.int64))
        remaining = {int(c): int(n) for c, n in enumerate(missed) if n}
        mine = scan.scored[ID][right] if scan.scored else np.zeros(0, np.int64)
        # rescore_dropped: what the model gets right sits out this draw only, scored again
        dropped = np.zeros(0, np.int64) if s.rescore_dropped else mine  # each rank its own
        stop = remaining_stop(s, remaining)
        sel = (
            selection([], "balanced")
            if stop
            else self._draw(view, view.pool[~np.isin(view.share.ids[view.pool], mine)], "balanced")
        )
        return Additions(
            sel.ids,
            sel.reasons,
            stop_reason=stop,
            dropped=dropped,
            remaining=remaining,
            notes=sel.notes,
            hard_found=sum(remaining.values()),
            infer_sample_passes=scan.n_scored,
            seconds_score=scored_seconds,
            seconds_score_batches=scan.seconds_batches,
            seconds_select=time.perf_counter() - start,
        )

    @staticmethod
    def _draw(view: RoundView, rows: np.ndarray, reason: str) -> Selection:
        """M1 step 4 over every rank's `rows`: class means of the norm from per-rank sums, each
        rank's nearest candidates on both sides, merged (operators/select.py's rule)."""
        s, share, k = view.job.strategy, view.share, view.num_classes
        norms = Norms(kind=s.norm, channel_weights=s.channel_weights, keep_features=False)
        norm = np.concatenate(
            [np.zeros(0)]
            + [
                norms.norms(share.features(rows[i : i + 4096])).astype(np.float64)
                for i in range(0, len(rows), 4096)
            ]
        )
        labels = share.labels[rows]
        sums = all_sum_np(
            np.concatenate(
                [
                    np.bincount(labels, weights=norm, minlength=k),
                    np.bincount(labels, minlength=k).astype(np.float64),
                ]
            )
        )
        counts = sums[k:].astype(np.int64)
        present = np.flatnonzero(counts)
        means = sums[:k][present] / counts[present]
        mine = {ID: share.ids[rows], LABEL: labels, "norm": norm}
        got = merge_smallest(
            balanced_candidates(mine, present, means, s.per_class),
            np.full(2 * len(present), s.per_class),
        )
        if got is None:
            return selection([], reason)
        return compose_balanced(got, present, counts[present], s.per_class, reason)


def infobatch_plan(
    scores: torch.Tensor, ratio: float, delta: float, seed: int, epoch: int, epochs: int
) -> EpochPlan:
    """InfoBatch's epoch (pipelines/selection/infobatch.py) on this rank's `scores`, against the
    mean score over every rank, drawn with this rank's `seed`."""
    total = all_sum(torch.tensor([float(scores.sum()), float(len(scores))], dtype=torch.float64))
    pick, weights = plan_epoch(
        scores,
        epoch,
        epochs,
        ratio,
        delta,
        torch.Generator().manual_seed(seed),
        mean=float(total[0] / total[1]),
    )
    return EpochPlan(pick.numpy(), weights[pick])


# strategy.hard_fill -> the key whose smallest values are the hardest rows the model gets right
FILL_KEYS = {"loss": lambda scored: -scored["loss"], "margin": lambda scored: scored["margin"]}


def nearest_misses(
    scored: dict, right: np.ndarray, key: Callable[[dict], np.ndarray], n: int
) -> np.ndarray:
    """The `n` rows of every rank's scored rows the model got right (`right`, this rank's)
    with the smallest `key` (ties by id), hardest first: what fills M2's hard additions when
    the pool holds too few mispredictions."""
    mine = (
        {
            "group": np.zeros(int(right.sum()), np.int64),
            "key": key(scored)[right].astype(np.float64),
            ID: scored[ID][right].astype(np.int64),
        }
        if scored
        else None
    )
    got = merge_smallest(mine, np.array([n]))
    return got[ID].astype(np.int64) if got else np.zeros(0, np.int64)


def random_pick(view: RoundView, n: int, seed: int, reason: str) -> Selection:
    """`n` of every rank's pool rows, uniformly: the smallest hash(seed, id), as
    operators/select.py's `random_draw` picks them. Ids ascending."""
    got = merge_smallest(random_candidates({ID: view.share.ids[view.pool]}, n, seed), np.array([n]))
    return selection(np.sort(got[ID]) if got else [], reason)


def _chosen_features(view: RoundView, got: dict | None, column: str, picked: np.ndarray):
    """This rank's rows already chosen, flat in the clustering space, for reps_dedup: this
    round's hard picks, and with `cluster_on: x` the subset trained so far (the share's rows
    outside the pool; embeddings of those would cost a forward pass, so they are left out)."""
    parts = [got[column][np.isin(got[ID], picked)]] if got else []
    if column == X:
        subset = np.setdiff1d(np.arange(len(view.share)), view.pool)
        parts.append(view.share.features(subset))
    parts = [p.reshape(len(p), -1) for p in parts if len(p)]
    return np.concatenate(parts).astype(np.float32) if parts else None


def rank_batch(job: JobConfig) -> int:
    """Rows a rank scores a step: the scoring batch shared out, so a step scores about
    `score.batch_size` rows over the group."""
    return max(1, job.score.batch_size // job.train.num_workers)


def remaining_stop(s: StrategyConfig, remaining: dict) -> str | None:
    """M1 step 7's stop condition on the samples the model still gets wrong, or None."""
    total = sum(remaining.values())
    if total == 0:
        return "no misclassified samples left in the pool"
    if s.remaining_total is not None and total <= s.remaining_total:
        return f"{total} misclassified samples left <= remaining_total {s.remaining_total}"
    if s.remaining_per_class is not None and max(remaining.values()) <= s.remaining_per_class:
        return (
            f"every class has <= remaining_per_class {s.remaining_per_class} "
            f"misclassified samples left (at most {max(remaining.values())})"
        )
    return None


STRATEGIES = {p.name: p for p in (M2, RandomGrowth, Full, NormBalanced, InfoBatch, Seta)}


def make_strategy(name: str) -> Policy:
    return STRATEGIES[name]()
