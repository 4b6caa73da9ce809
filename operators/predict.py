"""Score a pool with a trained model on a Ray Data actor pool (M2 step 3).

`Scorer` loads the model once per actor and adds `loss`, `correct`, `margin`, `pred` and,
optionally, `embedding`. `shuffled_pool` gives the pool in a seeded random order without an
all-to-all shuffle, and `collect_hard` consumes the scored stream only until it has found the
mispredictions it needs: the rest of the pool is never read that round.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import ray
import torch
import torch.nn.functional as F

from .contract import ID, LABEL, X, features

SCORE_COLUMNS = ["loss", "correct", "margin", "pred"]


class Scorer:
    """map_batches callable: `model_factory()` builds the model once per actor."""

    def __init__(self, model_factory: Callable[[], torch.nn.Module], with_embedding: bool = False,
                 keep_features: bool = False, use_gpu: bool = False, threads: int = 1):
        torch.set_num_threads(threads)
        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        self.model = model_factory().to(self.device).eval()
        self.with_embedding = with_embedding
        self.keep_features = keep_features

    def __call__(self, batch: dict) -> dict:
        # Ray hands out read-only views; torch wants arrays it may write to.
        x = torch.from_numpy(np.array(features(batch))).to(self.device)
        y = torch.from_numpy(np.array(batch[LABEL], dtype=np.int64)).to(self.device)
        with torch.no_grad():
            if self.with_embedding and hasattr(self.model, "embed"):
                emb = self.model.embed(x)
                logits = self.model.stages[-1](emb)
            else:
                logits = self.model(x)
                emb = logits
            out = score_logits(logits, y)
        out = {k: v.cpu().numpy() for k, v in out.items()}
        out[ID] = batch[ID]
        out[LABEL] = batch[LABEL]
        if self.with_embedding:
            out["embedding"] = emb.flatten(1).float().cpu().numpy()
        if self.keep_features:
            out[X] = batch[X]
        return out


def score_logits(logits: torch.Tensor, labels: torch.Tensor) -> dict:
    """Per-sample loss, correctness, margin (p_label - best other p) and prediction."""
    probs = logits.float().softmax(1)
    p_true = probs.gather(1, labels[:, None])[:, 0]
    others = probs.scatter(1, labels[:, None], -1.0)
    pred = logits.argmax(1)
    return {
        "loss": F.cross_entropy(logits.float(), labels, reduction="none"),
        "correct": pred == labels,
        "margin": p_true - others.max(1).values,
        "pred": pred,
    }


def score(ds: ray.data.Dataset, model_factory: Callable[[], torch.nn.Module], *,
          batch_size: int = 1024, num_actors: int = 1, use_gpu: bool = False,
          with_embedding: bool = False, keep_features: bool = False) -> ray.data.Dataset:
    """The lazy scored dataset; nothing runs until it is consumed."""
    return ds.map_batches(
        Scorer,
        fn_constructor_kwargs={"model_factory": model_factory, "with_embedding": with_embedding,
                               "keep_features": keep_features, "use_gpu": use_gpu},
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=num_actors),
        num_gpus=1 if use_gpu else 0,
    )


def _drop_and_shuffle(batch: dict, exclude: np.ndarray, seed: int) -> dict:
    keep = ~np.isin(batch[ID], exclude)
    ids = batch[ID][keep]
    if len(ids) == 0:
        return {k: v[keep] for k, v in batch.items()}
    # Seeded by the block's content, not by execution order: the same pool gives the same order.
    rng = np.random.default_rng([seed, int(ids.min()), len(ids)])
    order = rng.permutation(len(ids))
    return {k: v[keep][order] for k, v in batch.items()}


def shuffled_pool(ds: ray.data.Dataset, exclude_ids: np.ndarray, seed: int) -> ray.data.Dataset:
    """Rows of `ds` not in `exclude_ids`, blocks in a seeded order and rows shuffled within blocks."""
    exclude = np.sort(np.asarray(exclude_ids, dtype=np.int64))
    return ds.randomize_block_order(seed=seed % (2**32)).map_batches(
        _drop_and_shuffle, fn_kwargs={"exclude": exclude, "seed": seed},
        batch_size=None, batch_format="numpy")


@dataclass
class HardScan:
    """What one early-stopped scan of the pool found."""

    hard_ids: np.ndarray  # the first `n_hard` mispredictions in scan order
    scored: dict  # column -> array for every row scored before the stop
    exhausted: bool  # True when the whole pool was scored

    @property
    def n_scored(self) -> int:
        return len(self.scored[ID]) if self.scored else 0


def collect_hard(scored: ray.data.Dataset, n_hard: int, *, batch_size: int = 1024,
                 progress: Callable[[int, int], None] | None = None) -> HardScan:
    """Consume the scored stream until `n_hard` mispredictions are in hand (M2's early stop).

    Only the batches consumed count as scored; rows past the stop are dropped unread.
    `n_hard = 0` scores the whole pool.
    """
    batches, found, seen = [], 0, 0
    exhausted = True
    for batch in scored.iter_batches(batch_size=batch_size, batch_format="numpy",
                                     prefetch_batches=1):
        batches.append(batch)
        seen += len(batch[ID])
        found += int((~batch["correct"].astype(bool)).sum())
        if progress:
            progress(seen, found)
        if n_hard and found >= n_hard:
            exhausted = False
            break
    table = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]} if batches else {}
    if not table:
        return HardScan(hard_ids=np.zeros(0, np.int64), scored={}, exhausted=True)
    wrong = table[ID][~table["correct"].astype(bool)].astype(np.int64)
    return HardScan(hard_ids=wrong[:n_hard] if n_hard else wrong, scored=table,
                    exhausted=exhausted)
