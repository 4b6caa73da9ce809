"""The InfoBatch rule (Qin et al., ICLR 2024), written from the paper: which rows train an epoch.

Every training row keeps a score, its latest training loss. Each epoch a random fraction `r` of
the rows scoring below the mean is left out, and the kept below-mean rows weigh `1 / (1 - r)` in
the loss so the epoch's gradient stays about what it would be on all rows. The last epochs train
on everything with weight 1 (annealing), which the paper finds keeps the accuracy of full
training. These are pure functions of the scores and a seeded generator, so every DDP rank that
holds the same scores draws the same epoch.
"""

from __future__ import annotations

import math

import torch

# The authors' starting score. Any constant serves: equal scores prune nothing, and the first
# epoch trains every row and so replaces every score.
INITIAL_SCORE = 3.0
# Float products such as 0.7 * 10 land a hair off the integer they mean.
_EPS = 1e-9


def initial_scores(n: int) -> torch.Tensor:
    return torch.full((n,), INITIAL_SCORE, dtype=torch.float64)


def anneal_epoch(epochs: int, delta: float) -> int:
    """The first (0-based) epoch that trains on all rows: ceil(delta * epochs).

    So `delta * epochs` epochs at most are pruned, e.g. 20 epochs at delta 0.875 prune epochs
    0-17 and train 18 and 19 on everything; delta 1 never anneals.
    """
    return math.ceil(delta * epochs - _EPS)


def pruned_epochs(epochs: int, delta: float) -> int:
    """Epochs a run of `epochs` prunes when its scores start equal (`initial_scores`): the
    first trains every row and replaces every score, the anneal trains all; the rest prune."""
    return max(0, min(epochs, anneal_epoch(epochs, delta)) - 1)


def plan_epoch(
    scores: torch.Tensor,
    epoch: int,
    epochs: int,
    r: float,
    delta: float,
    generator: torch.Generator,
    mean: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows to train this epoch in ascending order, weight of every row; 0 where pruned).

    Below the mean means strictly below, so equal scores prune nothing. Of the k rows below it,
    k - floor((1 - r) * k) are pruned, exactly as many as the authors' code drops, chosen
    uniformly with `generator` (a CPU generator). `mean` is the scores' own mean unless given
    (the mean over every worker's rows, when each worker holds the scores of its own).
    """
    n = len(scores)
    weights = torch.ones(n, dtype=torch.float64)
    if epoch >= anneal_epoch(epochs, delta):
        return torch.arange(n), weights
    below = torch.nonzero(scores < (scores.mean() if mean is None else mean)).flatten()
    kept = math.floor((1 - r) * len(below) + _EPS)
    order = torch.randperm(len(below), generator=generator)
    weights[below[order[kept:]]] = 0.0
    weights[below[order[:kept]]] = 1 / (1 - r)
    return torch.nonzero(weights).flatten(), weights


def update_scores(scores: torch.Tensor, rows: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
    """New scores: the rows trained this epoch take their latest loss (`losses`, one per row of
    `rows`); the pruned rows keep theirs."""
    scores = scores.clone()
    scores[rows] = losses.to(scores.dtype)
    return scores
