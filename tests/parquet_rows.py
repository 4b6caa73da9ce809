"""A batch job's Parquet output read back in this process: no Ray Data job per check."""

import pyarrow.parquet as pq
import ray.data  # noqa: F401  (registers the tensor types the jobs write)


def parquet_rows(path, key: str = "id") -> list[dict]:
    """Every row of a Parquet file or folder as a dict (tensor cells as NumPy arrays), by `key`."""
    table = pq.read_table(str(path))
    columns = {}
    for name in table.column_names:
        column = table[name].combine_chunks()
        is_tensor = hasattr(column, "to_numpy") and "Tensor" in type(column).__name__
        columns[name] = list(column.to_numpy()) if is_tensor else column.to_pylist()
    rows = [dict(zip(columns, values)) for values in zip(*columns.values())]
    return sorted(rows, key=lambda r: r[key])
