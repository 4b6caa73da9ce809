"""What a classifier gets right, counted one way everywhere: the summed loss, and hits and rows
per class, over batches; the accuracies are ratios of those sums. The training workers add their
sums across ranks before taking ratios (job/engine.py `evaluate`); a transfer's scenes and the
benchmarks take them in one process."""

from __future__ import annotations

from typing import Iterable

import numpy as np
import torch
import torch.nn.functional as F

BATCH_ROWS = 4096  # rows per forward pass


def hit_sums(model: torch.nn.Module, batches: Iterable[tuple], num_classes: int) -> torch.Tensor:
    """float64 [loss sum, hits per class..., rows per class...] of `model` in eval mode over
    `batches` of (x, y) tensors on its device; the same length on every rank, rows or none."""
    model.eval()
    sums = torch.zeros(1 + 2 * num_classes, dtype=torch.float64)
    with torch.no_grad():
        for xs, ys in batches:
            logits = model(xs)
            hits = (logits.argmax(1) == ys).double().cpu()
            sums[0] += float(F.cross_entropy(logits.float(), ys, reduction="sum"))
            sums[1 : 1 + num_classes].index_add_(0, ys.cpu(), hits)
            sums[1 + num_classes :].index_add_(0, ys.cpu(), torch.ones_like(hits))
    return sums


def array_batches(x: np.ndarray, y: np.ndarray, device, batch_size: int = BATCH_ROWS):
    """(x, y) NumPy rows as tensor batches on `device` (copies: Ray hands out read-only arrays)."""
    for start in range(0, len(y), batch_size):
        yield (
            torch.tensor(x[start : start + batch_size], dtype=torch.float32, device=device),
            torch.tensor(y[start : start + batch_size], device=device),
        )


def accuracy(sums: torch.Tensor) -> float:
    """The share of rows classified right; 0 for none."""
    correct, count = _split(sums)
    return float(correct.sum()) / max(float(count.sum()), 1)


def metrics(sums: torch.Tensor, prefix: str) -> dict:
    """Accuracy, balanced accuracy, mean loss and row count, named `{prefix}_...`."""
    correct, count = _split(sums)
    n = float(count.sum())
    return {
        f"{prefix}_accuracy": accuracy(sums),
        f"{prefix}_balanced_accuracy": balanced_accuracy(correct, count),
        f"{prefix}_loss": float(sums[0]) / max(n, 1),
        f"{prefix}_samples": int(n),
    }


def balanced_accuracy(correct, count) -> float:
    """Mean recall over the classes with samples (`correct` and `count` per class, as NumPy
    arrays or tensors); 0 for none."""
    present = count > 0
    if not present.any():
        return 0.0
    return float((correct[present] / count[present]).mean())


def _split(sums: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    k = (len(sums) - 1) // 2
    return sums[1 : 1 + k], sums[1 + k :]
