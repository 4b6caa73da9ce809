"""The pool scan after a round (M2 step 3, M1 step 6), run by every worker on its own pool.

Each rank scores its pool rows in its seeded order, one batch a step, and the ranks add up what
they found after every step: the group stops at the same step once `n_hard` mispredictions are
in hand over all ranks, so the rest of the pool is never scored and only scored rows count.
The hard rows kept are the first `n_hard` in scan order, step by step and rank by rank.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from raysift.operators.contract import ID
from raysift.training.collective import all_max, all_sum, gather


@dataclass
class Scan:
    scored: dict  # this rank's scored rows: column -> array (id, label, correct, ...)
    hard_ids: np.ndarray  # over all ranks, the first n_hard mispredictions in scan order
    n_scored: int  # rows scored over all ranks: the round's inference sample-passes
    exhausted: bool  # every rank scored its whole pool
    seconds_batches: float  # time in this rank's scoring batches


def scan_pool(
    score_rows: Callable[[np.ndarray], dict],
    rows: np.ndarray,
    n_hard: int,
    batch_size: int,
    progress: Callable[[int, int], None] | None = None,
) -> Scan:
    """Score `rows` (this rank's pool, in scan order) with `score_rows(rows) -> columns`
    until the ranks together found `n_hard` mispredictions; `n_hard = 0` scores everything.
    `progress(rows scored, mispredictions found)`, over all ranks, after every step."""
    steps = all_max(-(-len(rows) // batch_size))
    parts, hard, seconds = [], [], 0.0
    found = seen = 0
    stopped = False
    for step in range(steps):
        batch = rows[step * batch_size : (step + 1) * batch_size]
        wrong = 0
        if len(batch):
            start = time.perf_counter()
            out = score_rows(batch)
            seconds += time.perf_counter() - start
            parts.append(out)
            miss = np.flatnonzero(~out["correct"].astype(bool))
            hard.append(np.stack([np.full(len(miss), step), miss, out[ID][miss]], 1))
            wrong = len(miss)
        counts = all_sum(torch.tensor([wrong, len(batch)], dtype=torch.int64))
        found, seen = found + int(counts[0]), seen + int(counts[1])
        if progress:
            progress(seen, found)
        if n_hard and found >= n_hard:
            stopped = step < steps - 1
            break
    mine = np.concatenate(hard) if hard else np.zeros((0, 3), np.int64)
    everyone = [np.insert(h, 1, r, axis=1) for r, h in enumerate(gather(mine))]
    table = np.concatenate(everyone).astype(np.int64)  # step, rank, position, id
    table = table[np.lexsort((table[:, 2], table[:, 1], table[:, 0]))]
    hard_ids = table[:n_hard, 3] if n_hard else table[:, 3]
    scored = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]} if parts else {}
    return Scan(
        scored=scored,
        hard_ids=hard_ids,
        n_scored=seen,
        exhausted=not stopped,
        seconds_batches=seconds,
    )
