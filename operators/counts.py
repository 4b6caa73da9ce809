"""Rows per group of a Dataset, counted without a shuffle.

`groupby(...).count()` starts a shuffle: seconds of set-up on a small cluster, and a shuffle's
memory on a large one, for a table of a few rows. Here every block counts its own rows per group
(`map_batches`, pandas), and the driver adds those small tables up as they stream in.
"""

from __future__ import annotations

from collections import Counter

import pandas as pd

_ROWS = "__rows"


def group_counts(ds, columns: list[str]) -> dict[tuple, int]:
    """{(value of each of `columns`, ...): rows} over `ds`, values as plain Python scalars."""
    per_block = ds.select_columns(list(columns)).map_batches(
        _count_block, fn_kwargs={"columns": list(columns)}, batch_format="pandas", batch_size=None
    )
    totals = Counter()
    for batch in per_block.iter_batches(batch_format="pandas", batch_size=None):
        for *key, rows in batch.itertuples(index=False):
            totals[tuple(_plain(k) for k in key)] += int(rows)
    return dict(totals)


def _count_block(batch: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    return batch.groupby(columns, sort=False).size().reset_index(name=_ROWS)


def _plain(value):
    return value.item() if hasattr(value, "item") else value
