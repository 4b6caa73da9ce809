"""raysift: train classifiers on the data that matters.

The notebook API (pipelines/api.py): `load_job`, `run`, `compare`, and the `Run` and
`Comparison` they return, whose rounds and summaries are pandas DataFrames. It loads on first
use, so that importing any part of the package (a Ray worker importing an operator, the command
line printing its help) stays light.
"""

API = ("load_job", "run", "compare", "Run", "Comparison")
__all__ = list(API)


def __getattr__(name: str):
    if name in API:
        from raysift import api

        return getattr(api, name)
    raise AttributeError(f"module 'raysift' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *API])
