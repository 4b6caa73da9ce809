"""Every Ray Data read of Parquet in raysift, through Ray's first Parquet reader.

Ray 2.60 routes `ray.data.read_parquet` through its DataSource V2 by default, which runs the
listing of the files as a task of its own before the reads: on a warm local Ray that task
waits 1.6 s wall for 59 ms of CPU, and a split of 5,000-54,000 rows takes 2.1-3.7 s to read
against 0.2-0.8 s through the first reader (benchmarks/bench_read.py). Jobs read several
splits and files, so the wait is paid many times over. Both list a folder's files in path
order.
"""

from __future__ import annotations

import ray
from ray.data import DataContext


def read_parquet(path: str, **kwargs) -> ray.data.Dataset:
    """`ray.data.read_parquet(path, **kwargs)` through the first reader; the caller's
    DataContext is left as it was (the dataset keeps its own copy)."""
    ctx = DataContext.get_current()
    before, ctx.use_datasource_v2 = ctx.use_datasource_v2, False
    try:
        return ray.data.read_parquet(path, **kwargs)
    finally:
        ctx.use_datasource_v2 = before
