"""MoEx, moment exchange (Li et al. 2021): a sample keeps its normalised features but wears the
mean and standard deviation of a partner, and its target leans towards the partner's label.

`exchange_moments` is the rule on a batch of feature maps, used at a hidden layer during training
(pipelines/moex.py) and on the inputs by `moex_dataset`, which writes the exchanged rows with
their provenance. Moments are taken per sample and position over the channels (positional
normalisation, the paper's choice) or per sample and channel over the positions ('spatial',
instance normalisation: for one-channel inputs, where moments over one channel say nothing).
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

from .augment import IdScheme, block_generator, one_hot, rows_table
from .contract import ID, LABEL, X, check_finite, features, require_columns
from .mixup import cycle_partners

MOMENTS = ("channel", "spatial")
EPS = 1e-5


def moment_dims(h: torch.Tensor, over: str) -> tuple[int, ...]:
    """The dimensions the moments are taken over, for (N, C, *positions) or flat (N, F)."""
    if over not in MOMENTS:
        raise ValueError(f"moments: expected one of {MOMENTS}, got {over!r}")
    if over == "channel":
        if h.dim() > 2 and h.shape[1] < 2:
            raise ValueError(f"moments: 'channel' needs >= 2 channels, the features have shape "
                             f"{tuple(h.shape)}; use 'spatial'")
        return (1,)
    if h.dim() < 3:
        raise ValueError(f"moments: 'spatial' needs (N, C, positions...) features, got shape "
                         f"{tuple(h.shape)}")
    return tuple(range(2, h.dim()))


def exchange_moments(h: torch.Tensor, partner: torch.Tensor, over: str = "channel",
                     eps: float = EPS) -> torch.Tensor:
    """(h - mean) / std * std[partner] + mean[partner], moments per sample over `over`
    (std = sqrt(biased variance + eps)): each sample's normalised features, the partner's
    moments."""
    dims = moment_dims(h, over)
    mean = h.mean(dim=dims, keepdim=True)
    std = (h.var(dim=dims, keepdim=True, unbiased=False) + eps).sqrt()
    partner = partner.to(h.device)
    return (h - mean) / std * std[partner] + mean[partner]


def moex_targets(y: torch.Tensor, partner: torch.Tensor, lam: float) -> torch.Tensor:
    """lam * y + (1 - lam) * y[partner]: the paper's loss lam * CE(y_a) + (1 - lam) * CE(y_b) is
    the cross-entropy against these soft targets."""
    return lam * y + (1 - lam) * y[partner.to(y.device)]


def check_lambda(lam: float) -> float:
    if not 0 <= lam <= 1:
        raise ValueError(f"lam: must be in [0, 1], got {lam}")
    return float(lam)


def _moex_block(batch: dict, num_classes: int, lam: float, over: str, seed: int,
                ids: IdScheme, copies: int) -> pa.Table:
    require_columns(batch, [ID, LABEL, X], "moex_dataset")
    row_ids = np.asarray(batch[ID], dtype=np.int64)
    x = features(batch)
    check_finite(x, row_ids)
    y = one_hot(batch[LABEL], num_classes, row_ids)
    first = int(row_ids[0]) if len(row_ids) else 0
    tables = []
    for c in range(copies):
        if len(row_ids) >= 2:
            partner = cycle_partners(len(x), block_generator(seed, first, c, "moex"))
            xm = exchange_moments(torch.from_numpy(x), partner, over).numpy()
            ym = moex_targets(torch.from_numpy(y), partner, lam).numpy()
            partner = partner.numpy()
        else:  # a block of one row has no partner: nothing to exchange
            xm, ym, partner = x[:0], y[:0], np.zeros(0, np.int64)
            row_ids = row_ids[:0]
        parents = np.stack([row_ids, row_ids[partner]], 1)
        tables.append(rows_table(ids.new_ids(row_ids, c), ym.argmax(1), xm, "moex", parents,
                                 ym))
    return pa.concat_tables(tables)


def moex_dataset(ds, *, num_classes: int, seed: int, ids: IdScheme, lam: float = 0.9,
                 over: str = "spatial", copies: int = 1, batch_size: int | None = None):
    """`copies` moment-exchanged rows per input row, partners along a random cycle of each block
    (only the new rows; union with `tag_real(ds)`). `parent_ids` = [sample, moment donor];
    `y_soft` = lam * own one-hot + (1 - lam) * donor's; `label` its largest entry."""
    check_lambda(lam)
    if over not in MOMENTS:
        raise ValueError(f"over: expected one of {MOMENTS}, got {over!r}")
    if num_classes < 1:
        raise ValueError(f"num_classes: must be >= 1, got {num_classes}")
    if copies < 1:
        raise ValueError(f"copies: must be >= 1, got {copies}")
    return ds.map_batches(
        _moex_block,
        fn_kwargs={"num_classes": num_classes, "lam": lam, "over": over, "seed": seed,
                   "ids": ids, "copies": copies},
        batch_size=batch_size, batch_format="numpy")
