"""The history library: size and balance, the herding pick, reservoir, batches, save and load."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from raysift.operators.contract import ID, LABEL, DataError, X
from raysift.transfer.history import TARGET, HistoryLibrary, herding, last_layer_gradients


def batch(ids, labels, values):
    """Samples whose single feature is also their (made-up) gradient."""
    return {
        ID: np.asarray(ids, np.int64),
        LABEL: np.asarray(labels, np.int64),
        X: np.asarray(values, np.float32).reshape(-1, 1),
    }


def x_as_gradient(x, labels):
    return x.reshape(len(x), -1)


@pytest.mark.parametrize("rule", ["herding", "reservoir"])
def test_size_and_class_balance_hold_across_updates(rule):
    lib = HistoryLibrary(per_class=2, num_classes=3, rule=rule, seed=0)
    offers = [
        batch([0, 1, 2], [0, 0, 0], [1, 2, 3]),
        batch([3, 4, 5, 6], [1, 0, 0, 2], [4, 5, 6, 7]),
        batch([7, 8, 9, 10, 11], [1, 1, 2, 2, 0], [8, 9, 10, 11, 12]),
    ]
    expected = [[2, 0, 0], [2, 1, 1], [2, 2, 2]]
    for offer, counts in zip(offers, expected):
        lib.update(offer, grad_fn=x_as_gradient)
        assert lib.counts().tolist() == counts
        assert len(lib) == sum(counts) and len(set(lib.ids_.tolist())) == len(lib)
    assert lib.seen_.tolist() == [6, 3, 3]


def test_herding_picks_the_samples_whose_mean_gradient_tracks_the_class_mean():
    # Gradients 4, 0, 1.5, 1.6: mean 1.775. Step 1 takes 1.6 (closest); step 2 wants 1.95 and
    # takes 1.5; step 3 wants 2.225 and takes 4 (|4 - 2.225| < |0 - 2.225|), although 0 is
    # nearer the mean than 4 is: the kept mean 2.37 beats 1.03 with 0.
    assert herding(np.array([[4.0], [0.0], [1.5], [1.6]]), 3).tolist() == [3, 2, 0]
    # Two dimensions, mean (1, 1): (1.2, 1.2) first; then (0.5, 0.5), which offsets it, rather
    # than (1.25, 1.25), the next nearest to the mean, which would repeat its error.
    grads = np.array([[2.05, 0.0], [0.0, 2.05], [1.2, 1.2], [1.25, 1.25], [0.5, 0.5]])
    assert herding(grads, 2).tolist() == [2, 4]


def test_herding_update_rescores_members_with_the_offered_samples():
    lib = HistoryLibrary(per_class=3, num_classes=1, rule="herding")
    lib.update(batch([10, 11, 12], [0, 0, 0], [4, 0, 1.5]), grad_fn=x_as_gradient)
    assert lib.ids_.tolist() == [10, 11, 12]  # room for all: no gradients needed yet
    lib.update(batch([13, 12], [0, 0], [1.6, 1.5]), grad_fn=x_as_gradient)  # 12 is held
    assert lib.ids_.tolist() == [13, 12, 10]
    np.testing.assert_array_equal(lib.x_[:, 0], np.float32([1.6, 1.5, 4.0]))


def test_last_layer_gradients_by_hand_and_against_autograd():
    g = last_layer_gradients(torch.tensor([[1.0, 2.0]]), torch.zeros(1, 2), torch.tensor([0]))
    np.testing.assert_allclose(g, [[-0.5, -1.0, -0.5, 0.5, 1.0, 0.5]])

    torch.manual_seed(0)
    head, h, y = torch.nn.Linear(4, 3), torch.randn(5, 4), torch.tensor([0, 1, 2, 1, 0])
    g = last_layer_gradients(h, head(h), y)
    for i in range(5):
        head.zero_grad()
        F.cross_entropy(head(h[i : i + 1]), y[i : i + 1]).backward()
        want = torch.cat([head.weight.grad, head.bias.grad[:, None]], 1).flatten()
        np.testing.assert_allclose(g[i], want.numpy(), atol=1e-6)


def _algorithm_r(n, k, seed):
    """The textbook reservoir on one stream 0..n-1, as the oracle."""
    rng, held = np.random.default_rng(seed), []
    for i in range(n):
        if len(held) < k:
            held.append(i)
        elif (j := int(rng.integers(i + 1))) < k:
            held[j] = i
    return held


def test_reservoir_is_algorithm_r_per_class_and_independent_of_batching():
    ids = np.arange(20)
    whole = HistoryLibrary(4, 1, rule="reservoir", seed=7).update(batch(ids, ids * 0, ids))
    assert whole.ids_.tolist() == _algorithm_r(20, 4, seed=7)
    split = HistoryLibrary(4, 1, rule="reservoir", seed=7)
    for part in (ids[:3], ids[3:11], ids[11:]):
        split.update(batch(part, part * 0, part))
    assert split.ids_.tolist() == whole.ids_.tolist()
    other = HistoryLibrary(4, 1, rule="reservoir", seed=8).update(batch(ids, ids * 0, ids))
    assert other.ids_.tolist() != whole.ids_.tolist()


def test_reservoir_holds_every_sample_about_equally_often():
    ids = np.arange(20)
    held = np.zeros(20)
    for seed in range(400):
        lib = HistoryLibrary(5, 2, rule="reservoir", seed=seed)
        held[lib.update(batch(ids, ids % 2, ids)).ids_] += 1
    # Each class streams 10 samples into 5 slots: every sample is kept with probability 1/2.
    assert np.abs(held / 400 - 0.5).max() < 0.1


def test_batches_walk_seeded_passes_and_split_over_workers():
    lib = HistoryLibrary(3, 1, rule="reservoir").update(batch([5, 6, 7], [0, 0, 0], [0, 0, 0]))
    stream = lib.iter_batches(batch_size=2, seed=3)
    first = [next(stream)[ID].tolist() for _ in range(3)]
    flat = sum(first, [])
    # Batches run across pass boundaries; each pass is a permutation of the library.
    assert sorted(flat[:3]) == [5, 6, 7] and sorted(flat[3:]) == [5, 6, 7]
    assert next(lib.iter_batches(2, seed=3))[ID].tolist() == first[0]
    ranks = [next(lib.iter_batches(2, seed=3, rank=r, world=2))[ID].tolist() for r in (0, 1)]
    assert ranks == [[first[0][0]], [first[0][1]]]
    with pytest.raises(ValueError, match="batch_size"):
        next(lib.iter_batches(3, seed=3, world=2))
    with pytest.raises(ValueError, match="seed"):
        next(lib.iter_batches(2, seed=-1))


def test_save_and_load_continue_the_same_stream(tmp_path):
    ids = np.arange(12)
    lib = HistoryLibrary(2, 2, rule="reservoir", seed=1)
    lib.update(batch(ids[:6], ids[:6] % 2, ids[:6]))
    lib.save(tmp_path)
    back = HistoryLibrary.load(tmp_path)
    assert (back.per_class, back.num_classes, back.rule, back.seed) == (2, 2, "reservoir", 1)
    np.testing.assert_array_equal(back.ids_, lib.ids_)
    np.testing.assert_array_equal(back.labels_, lib.labels_)
    np.testing.assert_array_equal(back.x_, lib.x_)
    assert back.x_.shape == (4, 1) and back.seen_.tolist() == [3, 3]
    rest = batch(ids[6:], ids[6:] % 2, ids[6:])
    assert back.update(rest).ids_.tolist() == lib.update(rest).ids_.tolist()


def test_bad_input_and_parameters_are_named():
    lib = HistoryLibrary(2, 2, rule="herding")
    with pytest.raises(DataError, match="'label'.*id 4"):
        lib.update(batch([3, 4], [1, 2], [0, 0]), grad_fn=x_as_gradient)
    with pytest.raises(DataError, match="'id'.*id 3"):
        lib.update(batch([3, 3], [1, 1], [0, 0]), grad_fn=x_as_gradient)
    with pytest.raises(ValueError, match="grad_fn"):
        lib.update(batch([3], [1], [0]))
    with pytest.raises(DataError, match="missing"):
        lib.update({ID: [1], LABEL: [0]}, grad_fn=x_as_gradient)
    for kwargs, name in [
        ({"per_class": 0}, "per_class"),
        ({"num_classes": 0}, "num_classes"),
        ({"rule": "random"}, "rule"),
        ({"seed": -1}, "seed"),
    ]:
        with pytest.raises(ValueError, match=name):
            HistoryLibrary(**{"per_class": 2, "num_classes": 2, **kwargs})


def with_targets(ids, values):
    """One-group samples whose (2, 2) target is their value: the target is the gradient."""
    b = batch(ids, np.zeros(len(ids)), values)
    b[TARGET] = np.repeat(np.asarray(values, np.float32)[:, None, None], 4, 1).reshape(-1, 2, 2)
    return b


def test_targets_travel_with_their_samples_and_feed_the_gradients(tmp_path):
    seen = []

    def target_as_gradient(x, y):
        seen.append(y.shape)
        return y.reshape(len(y), -1)[:, :1]

    lib = HistoryLibrary(per_class=3, num_classes=1, rule="herding")
    lib.update(with_targets([10, 11, 12], [4, 0, 1.5]), grad_fn=target_as_gradient)
    lib.update(with_targets([13], [1.6]), grad_fn=target_as_gradient)
    assert seen == [(4, 2, 2)]  # the herding pool's targets, not its labels
    assert lib.ids_.tolist() == [13, 12, 10]  # as with the same values as gradients above
    np.testing.assert_array_equal(lib.targets_[:, 0, 0], np.float32([1.6, 1.5, 4.0]))
    drawn = next(lib.iter_batches(3, seed=0))
    np.testing.assert_array_equal(drawn[TARGET][:, 1, 1], drawn[X][:, 0])
    lib.save(tmp_path)
    back = HistoryLibrary.load(tmp_path)
    np.testing.assert_array_equal(back.targets_, lib.targets_)
    with pytest.raises(DataError, match="'target'.*carry"):
        back.update(batch([20], [0], [1.0]), grad_fn=target_as_gradient)
    reservoir = HistoryLibrary(2, 1, rule="reservoir").update(with_targets([1, 2, 3], [7, 8, 9]))
    np.testing.assert_array_equal(reservoir.targets_[:, 0, 0], reservoir.x_[:, 0])
