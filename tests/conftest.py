"""One local Ray per test session; tests that need it ask for `ray_session`."""

import os

import pytest

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
# Ray workers inherit this, so callables defined in test modules unpickle there too.
_here = os.path.dirname(os.path.abspath(__file__))
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (_here, os.path.dirname(_here), os.environ.get("PYTHONPATH")) if p
)


@pytest.fixture(scope="session")
def ray_session():
    import ray
    from ray.data import DataContext
    from ray.data.context import ShuffleStrategy

    from raysift.job.rounds import init_ray

    init_ray(num_cpus=2)
    # Sort-based grouping starts in a fraction of the hash shuffle's time on 2 CPUs.
    DataContext.get_current().shuffle_strategy = ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
    yield ray
    ray.shutdown()
