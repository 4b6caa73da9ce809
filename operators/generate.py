"""Labelled rows drawn from a class-conditional generator, as a Ray Data job.

The generator is any callable `sample(labels, generator) -> x` (pipelines/training/generative.py
has a VAE and a GAN); it travels to the tasks with the job. Row i of the output has the label its
slot in `per_class` gives it and noise from a stream seeded by (seed, the block's first row),
so the same generator and seed give the same rows however Ray splits the range.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import ray
import torch

from .augment import IdScheme, block_generator, one_hot, rows_table


def class_slots(per_class: dict[int, int]) -> np.ndarray:
    """The label of every output row: class by class, in label order."""
    if any(int(n) < 0 for n in per_class.values()):
        raise ValueError(f"per_class: counts must be >= 0, got {per_class}")
    labels = sorted(per_class)
    return np.repeat(np.array(labels, dtype=np.int64), [int(per_class[c]) for c in labels]).astype(
        np.int64
    )


def _sample_block(
    batch: dict, sampler, slots: np.ndarray, num_classes: int, seed: int, ids: IdScheme, source: str
) -> pa.Table:
    rows = np.asarray(batch["id"], dtype=np.int64)
    labels = slots[rows]
    if len(rows):
        g = block_generator(seed, int(rows[0]), source)
        x = sampler(torch.from_numpy(labels), g).numpy()
    else:
        x = np.zeros((0, 1), np.float32)
    return rows_table(
        ids.new_ids(rows, 0),
        labels,
        x,
        source,
        np.zeros((len(rows), 0), np.int64),
        one_hot(labels, num_classes),
    )


def sample_dataset(
    sampler,
    per_class: dict[int, int],
    *,
    num_classes: int,
    seed: int,
    ids: IdScheme,
    source: str,
    rows_per_block: int = 1024,
):
    """`per_class[c]` rows of every class c drawn from `sampler`, with `source` as their tag,
    no `parent_ids` (a generated sample has none) and one-hot `y_soft`."""
    if not callable(sampler):
        raise ValueError(f"sampler: expected a callable sample(labels, generator), got {sampler!r}")
    if num_classes < 1:
        raise ValueError(f"num_classes: must be >= 1, got {num_classes}")
    if any(not 0 <= int(c) < num_classes for c in per_class):
        raise ValueError(
            f"per_class: labels must be in [0, {num_classes}), got {sorted(per_class)}"
        )
    slots = class_slots(per_class)
    blocks = max(1, -(-len(slots) // rows_per_block))
    return ray.data.range(len(slots), override_num_blocks=blocks).map_batches(
        _sample_block,
        fn_kwargs={
            "sampler": sampler,
            "slots": slots,
            "num_classes": num_classes,
            "seed": seed,
            "ids": ids,
            "source": source,
        },
        batch_size=None,
        batch_format="numpy",
    )
