"""Seeded per-id keys: every seeded choice (splits, random draws, subsamples) hashes the id.

A choice made from a hash of (seed, id) never depends on how the data was split into blocks or
in which order blocks arrive, so it is the same on one machine and on a cluster.
"""

from __future__ import annotations

import numpy as np


def hash_keys(ids: np.ndarray, *seeds: int) -> np.ndarray:
    """A uniform uint64 per id, fixed by the seeds: splitmix64 of the id xor a key of the seeds."""
    key = np.zeros(1, np.uint64)
    for s in seeds:
        key = _splitmix64(key ^ np.uint64(s % 2**64))
    return _splitmix64(np.asarray(ids, dtype=np.int64).astype(np.uint64) ^ key)


def unit_hash(ids: np.ndarray, *seeds: int) -> np.ndarray:
    """`hash_keys` as a float64 in [0, 1) (its top 53 bits)."""
    return (hash_keys(ids, *seeds) >> np.uint64(11)).astype(np.float64) * 2.0**-53


def _splitmix64(z: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):  # arithmetic modulo 2**64 is the point
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))
