"""The history library: a fixed number of old-task samples per class, replayed during transfer (M5).

Rule `herding` (the default): per class, the library's members and the offered samples form a
pool; each gets a gradient vector from `grad_fn` under the current model, and the library keeps
`per_class` of them chosen greedily so that the *mean kept gradient* tracks the pool's mean
gradient: step k adds the sample that brings the mean of the k chosen closest (L2) to the pool
mean. Why herding rather than "the samples most aligned with the mean": the aligned ones are
near-copies of one another, while herding picks samples that balance each other's errors, so a
small library still pulls the model the way the whole old task does. Members are re-scored
every update, because what represents the old task changes as the model moves.

Rule `reservoir` (the control): per class, Algorithm R over the stream of offered samples, so
every sample offered so far is held with the same probability; seeded, and the same stream
gives the same library however it is split into batches.

Both keep at most `per_class` samples of each class, so the size and the class balance hold
across updates. `save`/`load` put the library beside a checkpoint: a Parquet table (id, label,
x) that reads back as a dataset under the data contract, and a JSON file of its settings and
random state, so a resumed run continues the same stream.

A sample whose training target is more than its class (a detector's image and its dense box
target, `detector.encode_targets`) carries it in a `target` column: a library offered batches
with that column holds, replays, saves and loads it with the sample, passes it to `grad_fn`
in place of the label, and uses the label only to balance (one label for all: one group).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from raysift.operators.contract import (
    ID,
    LABEL,
    DataError,
    X,
    check_finite,
    features,
    require_columns,
)
from raysift.run_state import atomic_write_json, atomic_write_table
from raysift.training.models import embed
from raysift.transfer.config import HISTORY_RULES, require_rule

TARGET = "target"
TABLE_FILE = "history.parquet"
SETTINGS_FILE = "history.json"

GradFn = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (x, training targets) -> (n, d)


def last_layer_gradients(
    embedding: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor
) -> np.ndarray:
    """Per-sample cross-entropy gradient of a linear softmax head, in closed form.

    For logits = W h + b the gradient is (p - onehot(y)) outer [h, 1]: the rows of
    [dL/dW | dL/db], flattened to (n, C * (H + 1)). No backward pass, one matrix product.
    """
    with torch.no_grad():
        err = logits.float().softmax(1)
        err[torch.arange(len(labels)), labels.long()] -= 1.0
        h = torch.cat(
            [embedding.float().flatten(1), torch.ones(len(embedding), 1, device=embedding.device)],
            1,
        )
        return (err[:, :, None] * h[:, None, :]).flatten(1).cpu().numpy()


def head_gradient_fn(model: torch.nn.Module, batch_size: int = 4096) -> GradFn:
    """A `grad_fn` for `HistoryLibrary.update`: `last_layer_gradients` of `model` in eval mode.

    Built-in models give their embedding (`models.embed`); the head's gradient is then exact
    and needs no backward pass, so scoring a whole old training split stays cheap.
    """

    def grad_fn(x: np.ndarray, labels: np.ndarray) -> np.ndarray:
        model.eval()
        device = next(model.parameters()).device
        out = []
        with torch.no_grad():
            for s in range(0, len(x), batch_size):
                xb = torch.as_tensor(x[s : s + batch_size], dtype=torch.float32, device=device)
                out.append(
                    last_layer_gradients(
                        embed(model, xb),
                        model(xb),
                        torch.as_tensor(labels[s : s + batch_size], device=device),
                    )
                )
        return np.concatenate(out)

    return grad_fn


def herding(grads: np.ndarray, k: int) -> np.ndarray:
    """Indices of `k` rows chosen greedily so their running mean stays closest to the mean row."""
    g = np.asarray(grads, dtype=np.float64)
    mean = g.mean(0)
    total = np.zeros_like(mean)
    free = np.ones(len(g), dtype=bool)
    chosen = []
    for step in range(1, min(k, len(g)) + 1):
        dist = (((total + g) / step - mean) ** 2).sum(1)
        dist[~free] = np.inf
        i = int(np.argmin(dist))  # ties go to the earlier row: members first, then offer order
        chosen.append(i)
        free[i] = False
        total += g[i]
    return np.asarray(chosen, dtype=np.int64)


class HistoryLibrary:
    """At most `per_class` samples of each of `num_classes` classes; learned state ends in `_`."""

    def __init__(self, per_class: int, num_classes: int, rule: str = "herding", seed: int = 0):
        if not isinstance(per_class, int) or per_class < 1:
            raise ValueError(f"per_class: must be a positive integer, got {per_class!r}")
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes: must be a positive integer, got {num_classes!r}")
        require_rule(rule, HISTORY_RULES)
        if not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed: must be a non-negative integer, got {seed!r}")
        self.per_class, self.num_classes, self.rule, self.seed = per_class, num_classes, rule, seed
        self._rng = np.random.default_rng(seed)
        self.ids_ = np.zeros(0, np.int64)
        self.labels_ = np.zeros(0, np.int64)
        self.x_: np.ndarray | None = None
        self.targets_: np.ndarray | None = None  # the `target` column, when samples carry one
        self.seen_ = np.zeros(num_classes, np.int64)  # new samples offered so far, per class

    def __len__(self) -> int:
        return len(self.ids_)

    def counts(self) -> np.ndarray:
        """Samples held per class."""
        return np.bincount(self.labels_, minlength=self.num_classes)

    def update(self, batch: dict, grad_fn: GradFn | None = None) -> "HistoryLibrary":
        """Offer a batch (id, label, x, and target when samples carry one); ids already held
        are ignored.

        `grad_fn(x, y) -> (n, d)` gives each sample's gradient under the current model, y the
        targets when the samples carry them, else the labels (e.g. `last_layer_gradients`);
        the herding rule needs it, reservoir ignores it.
        """
        if self.rule == "herding" and grad_fn is None:
            raise ValueError("grad_fn: the herding rule needs per-sample gradients")
        ids, labels, x, targets = self._validated(batch)
        new = ~np.isin(ids, self.ids_)
        ids, labels, x = ids[new], labels[new], x[new]
        if self.x_ is None:
            self.x_ = np.zeros((0, *x.shape[1:]), np.float32)
            if targets is not None:
                self.targets_ = np.zeros((0, *targets.shape[1:]), np.float32)
        held = len(self.ids_)
        pool_ids = np.concatenate([self.ids_, ids])
        pool_labels = np.concatenate([self.labels_, labels])
        pool_x = np.concatenate([self.x_, x])
        pool_targets = None if targets is None else np.concatenate([self.targets_, targets[new]])
        if self.rule == "reservoir":
            kept = self._reservoir(labels, held)
        else:
            y = pool_labels if pool_targets is None else pool_targets
            kept = self._herd(pool_labels, pool_x, y, grad_fn)
        self.ids_, self.labels_, self.x_ = pool_ids[kept], pool_labels[kept], pool_x[kept]
        if pool_targets is not None:
            self.targets_ = pool_targets[kept]
        self.seen_ += np.bincount(labels, minlength=self.num_classes)
        return self

    def _validated(
        self, batch: dict
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        require_columns(batch.keys(), [ID, LABEL, X], where="history batch")
        ids = np.asarray(batch[ID], dtype=np.int64)
        labels = np.asarray(batch[LABEL], dtype=np.int64)
        x = features(batch)
        check_finite(x, ids)
        bad = (labels < 0) | (labels >= self.num_classes)
        if bad.any():
            i = int(np.argmax(bad))
            raise DataError(
                f"column '{LABEL}': label {labels[i]} at id {ids[i]} is outside "
                f"[0, {self.num_classes})"
            )
        uniq, first = np.unique(ids, return_index=True)
        if len(uniq) != len(ids):
            dup = ids[np.setdiff1d(np.arange(len(ids)), first)[0]]
            raise DataError(f"column '{ID}': id {dup} appears more than once in the batch")
        if self.x_ is not None and x.shape[1:] != self.x_.shape[1:]:
            raise DataError(
                f"column '{X}': feature shape {x.shape[1:]} differs from the "
                f"library's {self.x_.shape[1:]}"
            )
        targets = features(batch, TARGET) if TARGET in batch else None
        if self.x_ is not None and (targets is None) != (self.targets_ is None):
            raise DataError(
                f"column '{TARGET}': the library's samples "
                f"{'carry' if self.targets_ is not None else 'do not carry'} one; "
                f"the batch's {'do not' if targets is None else 'do'}"
            )
        if targets is not None:
            check_finite(targets, ids, where=f"column '{TARGET}'")
            if self.targets_ is not None and targets.shape[1:] != self.targets_.shape[1:]:
                raise DataError(
                    f"column '{TARGET}': shape {targets.shape[1:]} differs from "
                    f"the library's {self.targets_.shape[1:]}"
                )
        return ids, labels, x, targets

    def _reservoir(self, labels: np.ndarray, held: int) -> np.ndarray:
        """Algorithm R per class: the n-th sample of a class replaces a random slot w.p. k/n.

        The pool is the `held` members, then the offered samples (of `labels`); returns the
        pool rows kept, class by class in slot order."""
        slots = [list(np.flatnonzero(self.labels_ == c)) for c in range(self.num_classes)]
        seen = self.seen_.copy()
        for i, c in enumerate(labels):
            seen[c] += 1
            if len(slots[c]) < self.per_class:
                slots[c].append(held + i)
                continue
            j = int(self._rng.integers(seen[c]))
            if j < self.per_class:
                slots[c][j] = held + i
        return np.asarray([s for class_slots in slots for s in class_slots], np.int64)

    def _herd(
        self, pool_labels: np.ndarray, pool_x: np.ndarray, pool_y: np.ndarray, grad_fn: GradFn
    ) -> np.ndarray:
        """The pool rows herding keeps, class by class (pool: the members, then the offer)."""
        per_class = [np.flatnonzero(pool_labels == c) for c in range(self.num_classes)]
        crowded = [rows for rows in per_class if len(rows) > self.per_class]
        if crowded:  # one grad_fn call for every class that must give up samples
            rows = np.concatenate(crowded)
            grads = np.asarray(grad_fn(pool_x[rows], pool_y[rows]))
            if grads.ndim != 2 or len(grads) != len(rows) or not np.isfinite(grads).all():
                raise ValueError(
                    f"grad_fn: expected {len(rows)} finite gradient rows (n, d), "
                    f"got shape {grads.shape}"
                )
            at = np.empty(len(pool_labels), np.int64)
            at[rows] = np.arange(len(rows))
        kept = []
        for rows in per_class:
            if len(rows) > self.per_class:
                rows = rows[herding(grads[at[rows]], self.per_class)]
            kept.append(rows)
        return np.concatenate(kept)

    def iter_batches(
        self, batch_size: int, seed: int, rank: int = 0, world: int = 1
    ) -> Iterator[dict]:
        """Endless history batches: seeded passes over the library, one after another.

        Each global batch of `batch_size` rows is split over `world` workers (rank takes
        rows rank, rank + world, ...), so under DDP the workers together replay the batch a
        single worker would.
        """
        if len(self) == 0:
            raise ValueError("the history library is empty: update it before drawing batches")
        if not isinstance(batch_size, int) or batch_size < 1 or batch_size % world:
            raise ValueError(
                f"batch_size: must be a positive multiple of world ({world}), got {batch_size!r}"
            )
        if not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed: must be a non-negative integer, got {seed!r}")
        if not 0 <= rank < world:
            raise ValueError(f"rank: must be in [0, {world}), got {rank!r}")
        pending, passes = np.zeros(0, np.int64), 0
        while True:
            while len(pending) < batch_size:
                perm = np.random.default_rng([seed, passes]).permutation(len(self))
                pending, passes = np.concatenate([pending, perm]), passes + 1
            take, pending = pending[:batch_size][rank::world], pending[batch_size:]
            out = {ID: self.ids_[take], LABEL: self.labels_[take], X: self.x_[take]}
            if self.targets_ is not None:
                out[TARGET] = self.targets_[take]
            yield out

    def save(self, directory: str | Path) -> None:
        """Write the table and the settings into `directory` (beside a checkpoint)."""
        import pyarrow as pa
        from ray.data.extensions import ArrowTensorArray

        if self.x_ is None:
            raise ValueError("the history library is empty: there is nothing to save")
        directory = Path(directory)
        columns = {
            ID: pa.array(self.ids_),
            LABEL: pa.array(self.labels_),
            X: ArrowTensorArray.from_numpy(self.x_),
        }
        if self.targets_ is not None:
            columns[TARGET] = ArrowTensorArray.from_numpy(self.targets_)
        atomic_write_table(directory / TABLE_FILE, pa.table(columns))
        atomic_write_json(
            directory / SETTINGS_FILE,
            {
                "per_class": self.per_class,
                "num_classes": self.num_classes,
                "rule": self.rule,
                "seed": self.seed,
                "seen": self.seen_.tolist(),
                "rng_state": self._rng.bit_generator.state,
            },
        )

    @classmethod
    def load(cls, directory: str | Path) -> "HistoryLibrary":
        """The library `save` wrote into `directory`, random state included."""
        import pyarrow.parquet as pq
        import ray.data.extensions  # noqa: F401  registers the tensor type for reading `x`

        directory = Path(directory)
        settings = json.loads((directory / SETTINGS_FILE).read_text())
        lib = cls(
            settings["per_class"], settings["num_classes"], settings["rule"], settings["seed"]
        )
        table = pq.read_table(directory / TABLE_FILE)
        require_columns(table.column_names, [ID, LABEL, X], where=str(directory / TABLE_FILE))
        lib.ids_, lib.labels_ = table[ID].to_numpy(), table[LABEL].to_numpy()
        lib.x_ = table[X].combine_chunks().to_numpy().astype(np.float32, copy=False)
        if TARGET in table.column_names:
            lib.targets_ = table[TARGET].combine_chunks().to_numpy().astype(np.float32, copy=False)
        lib.seen_ = np.asarray(settings["seen"], np.int64)
        lib._rng.bit_generator.state = settings["rng_state"]
        return lib
