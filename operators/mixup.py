"""Multi-sample augmentations: Mixup, CutMix, SamplePairing and SMOTE, with label smoothing.

The mixers take (x, y, generator), y one-hot or soft (N, K), and return the mixed x and its soft
targets: the batched form used inside training, on CPU or GPU. `mix_dataset` and
`smote_dataset` run the same functions as Ray Data jobs that write new rows with their
provenance (`source`, `parent_ids`, `y_soft`), for offline augmentation at scale.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F

from .augment import (
    IdScheme,
    block_generator,
    box_mask,
    class_rows,
    masked_fill_boxes,
    one_hot,
    per_sample,
    rows_table,
    spatial_dims,
)
from .cluster import share_out
from .contract import ID, LABEL, DataError, X, check_finite, features, require_columns
from .counts import group_counts
from .keys import hash_keys


def beta(alpha: float, n: int, generator: torch.Generator) -> torch.Tensor:
    """n float32 draws from Beta(alpha, alpha) on the CPU, seeded from the torch generator
    (torch's Beta sampler takes no generator)."""
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
    return torch.from_numpy(np.random.default_rng(seed).beta(alpha, alpha, n).astype(np.float32))


def cycle_partners(n: int, generator: torch.Generator) -> torch.Tensor:
    """A partner index per sample along one random cycle: no sample is its own partner (n >= 2),
    for odd batch sizes too."""
    order = torch.randperm(n, generator=generator, device=generator.device)
    partner = torch.empty_like(order)
    partner[order] = order.roll(-1)
    return partner


def mix(x: torch.Tensor, y: torch.Tensor, lam: torch.Tensor, partner: torch.Tensor):
    """lam * sample + (1 - lam) * partner, for the features and the targets alike."""
    partner = partner.to(x.device)
    lx = per_sample(lam.to(device=x.device, dtype=x.dtype), x)
    ly = lam.to(device=y.device, dtype=y.dtype)[:, None]
    return lx * x + (1 - lx) * x[partner], ly * y + (1 - ly) * y[partner.to(y.device)]


def check_smoothing(eps: float) -> float:
    """The label-smoothing amount, validated."""
    if not 0 <= eps < 1:
        raise ValueError(f"smoothing: must be in [0, 1), got {eps}")
    return float(eps)


def smooth_labels(y: torch.Tensor, eps: float) -> torch.Tensor:
    """(1 - eps) * y + eps / K: linear, so it commutes with every mixing rule."""
    check_smoothing(eps)
    return y if eps == 0 else y * (1 - eps) + eps / y.shape[1]


def soft_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    """Cross-entropy against soft targets: -sum_k target_k * log_softmax(logits)_k."""
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction: expected 'mean', 'sum' or 'none', got {reduction!r}")
    dtype = torch.promote_types(logits.dtype, torch.float32)  # half logits are scored in float32
    loss = -(target.to(dtype) * F.log_softmax(logits.to(dtype), dim=1)).sum(1)
    return loss.mean() if reduction == "mean" else loss.sum() if reduction == "sum" else loss


def _check_targets(x: torch.Tensor, y: torch.Tensor) -> None:
    if not (y.dim() == 2 and y.is_floating_point() and len(y) == len(x)):
        raise ValueError(
            f"y: expected float one-hot or soft targets ({len(x)}, K), got "
            f"{y.dtype} of shape {tuple(y.shape)}"
        )


def _check_alpha(alpha: float) -> float:
    if not alpha > 0:
        raise ValueError(f"alpha: must be > 0, got {alpha}")
    return float(alpha)


class _PairMixer:
    """What Mixup and CutMix share: alpha, one lam per sample or per batch, label smoothing,
    and a partner for each sample along a random cycle of the batch."""

    def __init__(self, alpha: float = 1.0, per_sample: bool = True, smoothing: float = 0.0):
        self.alpha = _check_alpha(alpha)
        self.per_sample = per_sample
        self.smoothing = check_smoothing(smoothing)

    def _draw(self, x, y, generator):
        """(partner index, lam per sample)."""
        _check_targets(x, y)
        partner = cycle_partners(len(x), generator)
        lam = beta(self.alpha, len(x) if self.per_sample else 1, generator).expand(len(x))
        return partner, lam

    def __call__(self, x, y, generator):
        return self.apply(x, y, generator)[:2]


class Mixup(_PairMixer):
    """x = lam * x_i + (1 - lam) * x_j and the same for targets, lam ~ Beta(alpha, alpha) per
    sample (or one per batch); j is the partner along a random cycle of the batch."""

    name = "mixup"

    def apply(self, x, y, generator):
        """(mixed x, soft targets, partner index)."""
        partner, lam = self._draw(x, y, generator)
        xm, ym = mix(x, y, lam, partner)
        return xm, smooth_labels(ym, self.smoothing), partner


def cut_boxes(shape: tuple[int, ...], cut: torch.Tensor, generator: torch.Generator):
    """Boxes of about `cut` of the area per sample (side fraction sqrt(cut) on images), centred
    anywhere and clipped to the sample: (start, size) as (N, d) integer tensors."""
    d = len(shape)
    side = cut.sqrt() if d == 2 else cut
    starts, sizes = [], []
    for length in shape:
        size = (side * length).round().long()
        u = torch.rand(len(cut), generator=generator, device=generator.device).to(cut.device)
        centre = (u * length).long().clamp(max=length - 1)
        start = (centre - size // 2).clamp(0, length)
        end = (centre - size // 2 + size).clamp(0, length)
        starts.append(start)
        sizes.append(end - start)
    return torch.stack(starts, 1), torch.stack(sizes, 1)


class CutMix(_PairMixer):
    """Paste a box of the partner into each sample; the target weight of the sample is exactly
    the share of its own pixels left after the box was clipped to the image."""

    name = "cutmix"

    def apply(self, x, y, generator):
        """(mixed x, soft targets, partner index)."""
        partner, lam = self._draw(x, y, generator)
        dims = spatial_dims(x)
        shape = tuple(x.shape[-dims:])
        start, size = cut_boxes(shape, 1 - lam, generator)
        weight = 1 - size.prod(1).double() / float(np.prod(shape))
        mask = box_mask(shape, start.to(x.device), size.to(x.device))
        xm = masked_fill_boxes(x, mask, x[partner.to(x.device)])
        w = weight.to(device=y.device, dtype=y.dtype)[:, None]
        ym = w * y + (1 - w) * y[partner.to(y.device)]
        return xm, smooth_labels(ym, self.smoothing), partner


class SamplePairing:
    """The pixel average of a sample and its partner, with the label of the first."""

    name = "pairing"

    def __init__(self, smoothing: float = 0.0):
        self.smoothing = check_smoothing(smoothing)

    def apply(self, x, y, generator):
        """(paired x, the first sample's targets, partner index)."""
        _check_targets(x, y)
        partner = cycle_partners(len(x), generator)
        return (x + x[partner.to(x.device)]) / 2, smooth_labels(y, self.smoothing), partner

    def __call__(self, x, y, generator):
        return self.apply(x, y, generator)[:2]


def smote(x: torch.Tensor, n_new: int, k: int, generator: torch.Generator):
    """n_new synthetic points x_a + u * (x_nn - x_a) from one class's samples x.

    Anchors a run round-robin through a random order of the class, so every sample anchors
    before any anchors twice; nn is one of a's k nearest other samples (Euclidean, ties to the
    lower index) and u ~ U[0, 1). Returns (points, anchor index, neighbour index).
    """
    n = len(x)
    if k < 1:
        raise ValueError(f"k: must be >= 1, got {k}")
    if n_new < 0:
        raise ValueError(f"n_new: must be >= 0, got {n_new}")
    if n_new == 0:
        none = torch.zeros(0, dtype=torch.long, device=x.device)
        return x[:0], none, none
    if n < 2:
        raise ValueError(f"x: SMOTE needs at least 2 samples of the class, got {n}")
    dev = generator.device
    order = torch.randperm(n, generator=generator, device=dev).to(x.device)
    t = torch.arange(n_new, device=x.device)
    slot = t % n
    anchors = order[: min(n_new, n)]
    flat = x.reshape(n, -1).double()
    dist = torch.cdist(flat[anchors], flat, compute_mode="donot_use_mm_for_euclid_dist")
    dist[torch.arange(len(anchors), device=x.device), anchors] = float("inf")
    k_eff = min(k, n - 1)
    nearest = torch.sort(dist, dim=1, stable=True).indices[:, :k_eff]
    pick = torch.randint(0, k_eff, (n_new,), generator=generator, device=dev).to(x.device)
    gap = torch.rand(n_new, generator=generator, device=dev).to(device=x.device, dtype=x.dtype)
    a = order[slot]
    nb = nearest[slot, pick]
    points = x[a] + per_sample(gap, x[a]) * (x[nb] - x[a])
    return points, a, nb


def _mix_block(
    batch: dict, mixer, num_classes: int, seed: int, ids: IdScheme, copies: int
) -> pa.Table:
    require_columns(batch, [ID, LABEL, X], "mix_dataset")
    row_ids = np.asarray(batch[ID], dtype=np.int64)
    x = features(batch)
    check_finite(x, row_ids)
    y = one_hot(batch[LABEL], num_classes, row_ids)
    first = int(row_ids[0]) if len(row_ids) else 0
    tables = []
    for c in range(copies):
        if len(row_ids):
            g = block_generator(seed, first, c, mixer.name)
            xm, ym, partner = mixer.apply(torch.from_numpy(x), torch.from_numpy(y), g)
            xm, ym, partner = xm.numpy(), ym.numpy(), partner.numpy()
        else:
            xm, ym, partner = x, y, np.zeros(0, np.int64)
        parents = np.stack([row_ids, row_ids[partner]], 1)
        tables.append(
            rows_table(ids.new_ids(row_ids, c), ym.argmax(1), xm, mixer.name, parents, ym)
        )
    return pa.concat_tables(tables)


def mix_dataset(
    ds,
    mixer,
    *,
    num_classes: int,
    seed: int,
    ids: IdScheme,
    copies: int = 1,
    batch_size: int | None = None,
):
    """`copies` mixed rows per input row (only the new rows; union with `tag_real(ds)`).

    Partners come from the same batch (a whole block by default): shuffle the dataset first
    for partners across blocks. A row's id comes from `ids` anchored at its first parent;
    `parent_ids` = [sample, partner]; `label` is the class with the largest weight in `y_soft`.
    """
    if not hasattr(mixer, "apply") or not getattr(mixer, "name", None):
        raise ValueError(
            f"mixer: expected Mixup, CutMix, SamplePairing or MomentMixer, got {mixer!r}"
        )
    if num_classes < 1:
        raise ValueError(f"num_classes: must be >= 1, got {num_classes}")
    if copies < 1:
        raise ValueError(f"copies: must be >= 1, got {copies}")
    return ds.map_batches(
        _mix_block,
        fn_kwargs={
            "mixer": mixer,
            "num_classes": num_classes,
            "seed": seed,
            "ids": ids,
            "copies": copies,
        },
        batch_size=batch_size,
        batch_format="numpy",
    )


SMOTE_BLOCK_ROWS = 4096  # a class larger than this is searched for neighbours in blocks
_BLOCK = "smote_block"
_BLOCK_STREAM = 0x534D4F54  # the blocks' hash stream, apart from other uses of the seed


def smote_blocks(
    ids: np.ndarray, labels: np.ndarray, blocks_per_class: np.ndarray, seed: int
) -> np.ndarray:
    """Each row's block within its class: hash(seed, id) mod the class's number of blocks, so a
    row's block never depends on how the data is split into files or tasks."""
    nb = np.asarray(blocks_per_class, np.int64)[np.asarray(labels, np.int64)].astype(np.uint64)
    return (hash_keys(ids, seed, _BLOCK_STREAM) % nb).astype(np.int64)


def _with_block(batch: dict, blocks_per_class: np.ndarray, seed: int) -> dict:
    """The batch's rows of the classes that get new rows, with their block."""
    labels = np.asarray(batch[LABEL], np.int64)
    keep = (labels < len(blocks_per_class)) & (
        blocks_per_class[np.minimum(labels, len(blocks_per_class) - 1)] > 0
    )
    out = {key: value[keep] for key, value in batch.items()}
    out[_BLOCK] = smote_blocks(out[ID], out[LABEL], blocks_per_class, seed)
    return out


def _smote_group(
    batch: dict,
    quota: dict,
    k: int,
    seed: int,
    ids: IdScheme,
    num_classes: int | None,
    blocks_per_class: np.ndarray,
) -> pa.Table:
    row_ids, x, label = class_rows(batch, "smote_dataset")
    block = int(batch[_BLOCK][0]) if _BLOCK in batch else 0
    n_new = int(quota.get((label, block), 0))
    if len(row_ids) < 2 and n_new:
        raise DataError(
            f"smote_dataset: class {label} has only id {int(row_ids[0])}"
            f"{f' in block {block}' if blocks_per_class[label] > 1 else ''}; "
            f"SMOTE needs 2 samples of a class to make {n_new} more"
        )
    salt = ("smote",) if blocks_per_class[label] == 1 else ("smote", block)
    g = block_generator(seed, label, *salt)
    points, a, nb = smote(torch.from_numpy(x), n_new, k, g)
    a, nb = a.numpy(), nb.numpy()
    labels = np.full(n_new, label, dtype=np.int64)
    y = one_hot(labels, num_classes) if num_classes else None
    new_ids = ids.new_ids(row_ids[a], np.arange(n_new) // max(len(row_ids), 1))
    return rows_table(
        new_ids, labels, points.numpy(), "smote", np.stack([row_ids[a], row_ids[nb]], 1), y
    )


def class_counts(ds) -> dict[int, int]:
    """Rows per label."""
    return {int(label): n for (label,), n in group_counts(ds, [LABEL]).items()}


def smote_dataset(
    ds,
    *,
    seed: int,
    ids: IdScheme,
    target: int | dict | None = None,
    k: int = 5,
    num_classes: int | None = None,
    num_partitions: int | None = None,
    block_rows: int = SMOTE_BLOCK_ROWS,
):
    """SMOTE rows that bring each class up to `target` rows (only the new rows).

    `target`: one count for every class, a {label: count} dict, or None for the size of the
    largest class. `parent_ids` = [anchor, neighbour]; the id comes from `ids` anchored at the
    anchor, its copy number counting how often that anchor was used.

    No task holds a whole class: a class of n rows is cut into ceil(n / block_rows) blocks by
    a seeded hash of the id (smote_blocks), one Ray task a block (groupby(label, block).
    map_groups), and an anchor's k nearest neighbours are searched within its block, not the
    whole class. A class of at most `block_rows` rows is one block: classic SMOTE, exactly as
    before. In a larger class the neighbours come from a random 1/B of the class, so they lie
    further apart on average (SMOTE on a random part of the class). The class's new rows are
    shared out over its blocks in proportion to their sizes (largest remainder), which a count
    pass measures. Classes that get no new rows are dropped before the grouping, so the
    majority class of a long-tailed set never moves. A task holds block_rows rows and a
    (block_rows x block_rows) float64 distance matrix (134 MB at 4096).
    """
    if k < 1:
        raise ValueError(f"k: must be >= 1, got {k}")
    if block_rows < 2:
        raise ValueError(f"block_rows: must be >= 2, got {block_rows}")
    if num_classes is not None and num_classes < 1:
        raise ValueError(f"num_classes: must be >= 1, got {num_classes}")
    counts = class_counts(ds)
    if target is None:
        target = max(counts.values(), default=0)
    wanted = target.values() if isinstance(target, dict) else [target]
    if any(int(c) < 0 for c in wanted):
        raise ValueError(f"target: counts must be >= 0, got {target}")
    n_new = {
        c: max(0, int(target.get(c, 0) if isinstance(target, dict) else target) - n)
        for c, n in counts.items()
    }
    blocks = np.zeros(max(counts, default=-1) + 1, np.int64)  # 0: the class gets no rows
    for c, n in counts.items():
        blocks[c] = -(-n // block_rows) if n_new[c] else 0
    keyed = ds.map_batches(
        _with_block, fn_kwargs={"blocks_per_class": blocks, "seed": seed}, batch_format="numpy"
    )
    quota = {(c, 0): n_new[c] for c in counts if blocks[c] == 1}
    if (blocks > 1).any():
        sizes = group_counts(keyed, [LABEL, _BLOCK])
        for c in np.flatnonzero(blocks > 1):
            per_block = np.array([sizes.get((int(c), b), 0) for b in range(blocks[c])])
            quota.update(
                {(int(c), b): int(q) for b, q in enumerate(share_out(n_new[int(c)], per_block))}
            )
    return keyed.groupby([LABEL, _BLOCK], num_partitions=num_partitions).map_groups(
        _smote_group,
        fn_kwargs={
            "quota": quota,
            "k": k,
            "seed": seed,
            "ids": ids,
            "num_classes": num_classes,
            "blocks_per_class": blocks,
        },
        batch_format="numpy",
    )
