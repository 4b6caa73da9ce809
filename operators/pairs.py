"""New rows from pairs of samples of one class, as a Ray Data job.

Style transfer (operators/style.py) and neural augmentation (pipelines/training/neural_aug.py) both
map two samples of a class to a new sample of that class: `combine(first, second) -> new`, batched.
`pair_dataset` runs such a rule per class (groupby(label).map_groups: one task holds a class),
drawing `per_class` pairs: the first sample runs round-robin through a seeded order of the
class, so every sample is used before any is used twice, and its partner is another sample of
the class drawn at random.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

from .augment import IdScheme, block_generator, class_rows, one_hot, rows_table
from .contract import LABEL, DataError


def draw_pairs(
    n: int, n_pairs: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """(first, second) indices into n samples: firsts round-robin through a random order,
    each second another sample drawn uniformly."""
    if n < 2:
        raise ValueError(f"n: pairs need at least 2 samples, got {n}")
    order = torch.randperm(n, generator=generator)
    first = order[torch.arange(n_pairs) % n]
    shift = torch.randint(1, n, (n_pairs,), generator=generator)
    return first, (first + shift) % n


def _pair_group(
    batch: dict,
    combine,
    per_class: int,
    seed: int,
    ids: IdScheme,
    num_classes: int,
    source: str,
    batch_size: int,
) -> pa.Table:
    row_ids, x, label = class_rows(batch, "pair_dataset")
    if len(row_ids) < 2:
        raise DataError(
            f"pair_dataset: class {label} has only id {int(row_ids[0])}; a pair "
            f"needs 2 samples of a class"
        )
    first, second = draw_pairs(len(row_ids), per_class, block_generator(seed, label, source))
    xt = torch.from_numpy(x)
    new = [
        combine(xt[first[s : s + batch_size]], xt[second[s : s + batch_size]])
        for s in range(0, per_class, batch_size)
    ]
    points = torch.cat(new).detach().numpy() if new else x[:0]
    a, b = first.numpy(), second.numpy()
    labels = np.full(per_class, label, dtype=np.int64)
    new_ids = ids.new_ids(row_ids[a], np.arange(per_class) // len(row_ids))
    return rows_table(
        new_ids,
        labels,
        points,
        source,
        np.stack([row_ids[a], row_ids[b]], 1),
        one_hot(labels, num_classes),
    )


def pair_dataset(
    ds,
    combine,
    *,
    per_class: int,
    num_classes: int,
    seed: int,
    ids: IdScheme,
    source: str,
    batch_size: int = 256,
    num_partitions: int | None = None,
):
    """`per_class` rows of every class made by `combine` from same-class pairs (only the new
    rows; union with `tag_real(ds)`). `parent_ids` = [first, second]; the id comes from `ids`
    anchored at the first, its copy number counting how often that sample was first."""
    if not callable(combine):
        raise ValueError(f"combine: expected a callable combine(first, second), got {combine!r}")
    if per_class < 0:
        raise ValueError(f"per_class: must be >= 0, got {per_class}")
    if num_classes < 1:
        raise ValueError(f"num_classes: must be >= 1, got {num_classes}")
    if batch_size < 1:
        raise ValueError(f"batch_size: must be >= 1, got {batch_size}")
    return ds.groupby(LABEL, num_partitions=num_partitions).map_groups(
        _pair_group,
        fn_kwargs={
            "combine": combine,
            "per_class": per_class,
            "seed": seed,
            "ids": ids,
            "num_classes": num_classes,
            "source": source,
            "batch_size": batch_size,
        },
        batch_format="numpy",
    )
