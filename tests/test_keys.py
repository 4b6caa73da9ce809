"""The one seeded id hash behind splits, random draws and subsamples."""

import numpy as np

from raysift.operators.keys import hash_keys, unit_hash


def test_no_seed_is_splitmix64_from_state_zero():
    # Published first outputs of splitmix64 seeded with 0: its state steps by the golden gamma.
    gamma = 0x9E3779B97F4A7C15
    assert hash_keys(np.array([0]))[0] == 0xE220A8397B1DCDAF
    assert hash_keys(np.array([gamma]).astype(np.uint64).astype(np.int64))[0] == 0x6E789E6AA1B965F4


def test_keys_are_fixed_by_id_and_seeds_and_distinct():
    ids = np.arange(1000)
    assert np.array_equal(hash_keys(ids, 7), hash_keys(ids, 7))
    assert (hash_keys(ids, 7) != hash_keys(ids, 8)).mean() > 0.99
    assert (hash_keys(ids, 7, 1) != hash_keys(ids, 7, 2)).mean() > 0.99
    assert len(np.unique(hash_keys(ids, 7))) == 1000
    assert np.array_equal(hash_keys(ids[::-1], 7), hash_keys(ids, 7)[::-1])  # order-free


def test_unit_hash_is_near_uniform_in_the_unit_interval():
    ids = np.arange(20000)
    u = unit_hash(ids, 7)
    assert ((0 <= u) & (u < 1)).all()
    assert np.histogram(u, bins=10, range=(0, 1))[0].min() > 1850
    assert np.array_equal(u, (hash_keys(ids, 7) >> np.uint64(11)) * 2.0**-53)
