"""Mixing rules by hand, their label weights, SMOTE's geometry, and the Ray jobs' rows."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from raysift.operators.augment import IdScheme
from raysift.operators.cluster import share_out
from raysift.operators.contract import ID, LABEL, DataError, X, from_columns
from raysift.operators.mixup import (
    CutMix,
    Mixup,
    SamplePairing,
    _smote_group,
    cycle_partners,
    mix,
    mix_dataset,
    smooth_labels,
    smote,
    smote_blocks,
    smote_dataset,
    soft_cross_entropy,
)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_mix_of_a_fixed_lambda_and_permutation_by_hand():
    x = torch.tensor([[0.0, 4.0], [8.0, 0.0], [4.0, 4.0]])
    y = torch.eye(3)
    xm, ym = mix(x, y, torch.tensor([0.25, 0.5, 1.0]), torch.tensor([2, 0, 1]))
    assert xm.tolist() == [[3.0, 4.0], [4.0, 2.0], [4.0, 4.0]]
    assert ym.tolist() == [[0.25, 0.0, 0.75], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]]


@pytest.mark.parametrize("n", [1, 2, 5, 8])
def test_partners_follow_one_cycle_without_fixed_points(n):
    partner = cycle_partners(n, gen(n))
    assert sorted(partner.tolist()) == list(range(n))
    seen, i = set(), 0
    while i not in seen:
        seen.add(i)
        i = int(partner[i])
    assert len(seen) == n  # one cycle through everyone, so nobody is their own partner for n >= 2


@pytest.mark.parametrize("n,per_sample", [(5, True), (6, True), (7, False)])
def test_mixup_mixes_features_and_targets_with_the_same_lambda(n, per_sample):
    x = torch.arange(n, dtype=torch.float32)[:, None].repeat(1, 3)  # sample i is all i
    xm, ym, partner = Mixup(alpha=0.4, per_sample=per_sample).apply(x, torch.eye(n), gen(1))
    lam = ym[torch.arange(n), torch.arange(n)]
    torch.testing.assert_close(ym[torch.arange(n), partner], 1 - lam)
    torch.testing.assert_close(xm[:, 0], lam * x[:, 0] + (1 - lam) * x[partner, 0])
    assert (lam == lam[0]).all() != per_sample


@pytest.mark.parametrize("shape", [(6, 8), (10,)])
def test_cutmix_label_weight_is_the_pasted_share_exactly(shape):
    n = 32
    x = torch.arange(n, dtype=torch.float32).view(n, 1, *([1] * len(shape))).expand(n, 2, *shape)
    xm, ym, partner = CutMix(alpha=0.3).apply(x.contiguous(), torch.eye(n), gen(2))
    pasted = (xm[:, 0] == partner.view(n, *([1] * len(shape)))).flatten(1).double().mean(1)
    own = (xm[:, 0] == torch.arange(n).view(n, *([1] * len(shape)))).flatten(1).double().mean(1)
    torch.testing.assert_close(own + pasted, torch.ones(n, dtype=torch.float64))
    torch.testing.assert_close(ym[torch.arange(n), partner].double(), pasted)
    torch.testing.assert_close(ym[torch.arange(n), torch.arange(n)].double(), own)
    assert torch.equal(xm[:, 0], xm[:, 1])  # the box spans every channel
    assert 0 < pasted.mean() < 1 and pasted.max() > 0.5  # large boxes that hit the border, too
    for sample in xm[:, 0] == partner.view(n, *([1] * len(shape))):
        for idx in torch.nonzero(sample, as_tuple=True):  # a box: contiguous along every axis
            assert idx.numel() == 0 or idx.max() - idx.min() + 1 == idx.unique().numel()


def test_sample_pairing_averages_and_keeps_the_first_label():
    x = torch.tensor([[2.0], [4.0], [10.0]])
    y = torch.eye(3)
    xm, ym, partner = SamplePairing().apply(x, y, gen(3))
    assert xm[:, 0].tolist() == ((x[:, 0] + x[partner, 0]) / 2).tolist()
    assert torch.equal(ym, y)
    _, smoothed = SamplePairing(smoothing=0.3)(x, y, gen(3))
    assert torch.allclose(smoothed, y * 0.7 + 0.1)


def test_label_smoothing_composes_with_mixing():
    x, y = torch.rand(6, 4, generator=gen(4)), F.one_hot(torch.arange(6) % 3, 3).float()
    for rule in (Mixup, CutMix):
        plain = rule()(x.view(6, 1, 4), y, gen(5))[1]
        smoothed = rule(smoothing=0.2)(x.view(6, 1, 4), y, gen(5))[1]
        torch.testing.assert_close(smoothed, smooth_labels(plain, 0.2))
        torch.testing.assert_close(smoothed.sum(1), torch.ones(6))
    with pytest.raises(ValueError, match="smoothing"):
        Mixup(smoothing=1.0)


def test_soft_cross_entropy_by_hand():
    logits = torch.log(torch.tensor([[0.25, 0.75], [0.5, 0.5]]))
    target = torch.tensor([[0.5, 0.5], [1.0, 0.0]])
    expect = [-(0.5 * np.log(0.25) + 0.5 * np.log(0.75)), -np.log(0.5)]
    per_sample = soft_cross_entropy(logits, target, "none").numpy()
    np.testing.assert_allclose(per_sample, expect, rtol=1e-6)
    assert soft_cross_entropy(logits, target).item() == pytest.approx(np.mean(expect), rel=1e-6)


def _on_segment(p, a, b):
    """The u in [0, 1] with p = a + u (b - a), or None."""
    d = b - a
    u = float(np.dot(p - a, d) / np.dot(d, d)) if np.dot(d, d) > 0 else 0.0
    return u if 0 <= u <= 1 and np.allclose(a + u * d, p, atol=1e-5) else None


def test_smote_points_lie_between_an_anchor_and_one_of_its_k_nearest():
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [5.0, 5.0], [6.0, 5.0]])
    points, a, nb = smote(x, 12, 2, gen(6))
    assert sorted(np.bincount(a.numpy(), minlength=5).tolist()) == [2, 2, 2, 3, 3]  # round-robin
    xs = x.numpy()
    dist = np.linalg.norm(xs[:, None] - xs[None], axis=2)
    for p, i, j in zip(points.numpy(), a.tolist(), nb.tolist()):
        nearest = [k for k in np.argsort(dist[i], kind="stable") if k != i][:2]
        assert j in nearest
        assert _on_segment(p, xs[i], xs[j]) is not None
    with pytest.raises(ValueError, match="at least 2"):
        smote(x[:1], 1, 2, gen())


def _mixed_ds():
    n = 9
    ids = 10 + np.arange(n, dtype=np.int64) * 2
    x = np.arange(n, dtype=np.float32)[:, None, None] * np.ones((1, 1, 3), np.float32)
    return ids, x, from_columns({ID: ids, LABEL: np.arange(n) % 3, X: x}, rows_per_block=5)


def test_mixed_rows_keep_valid_parents_and_repeat_with_the_seed(ray_session):
    ids, x, ds = _mixed_ds()
    scheme = IdScheme(offset=10_000, stride=1000)
    rows = mix_dataset(ds, Mixup(), num_classes=3, seed=3, ids=scheme, copies=2).take_all()
    assert len(rows) == 18 and len({r[ID] for r in rows}) == 18
    value = dict(zip(ids.tolist(), x[:, 0, 0].tolist()))
    label = dict(zip(ids.tolist(), (np.arange(9) % 3).tolist()))
    for r in rows:
        first, second = list(r["parent_ids"])
        assert first != second and {first, second} <= set(value)
        assert (r[ID] - 10_000) % 1000 == first and r["source"] == "mixup"
        y = np.asarray(r["y_soft"])
        lam = y[label[first]] if label[first] != label[second] else None
        if lam is not None:  # the row's x is the same mix of its parents as its target
            expect = lam * value[first] + (1 - lam) * value[second]
            assert np.asarray(r[X])[0, 0] == pytest.approx(expect)
        assert r[LABEL] == int(np.argmax(y)) and y.sum() == pytest.approx(1.0)

    again = mix_dataset(ds, Mixup(), num_classes=3, seed=3, ids=scheme, copies=2).take_all()
    assert [(r[ID], list(r["parent_ids"]), np.asarray(r[X]).tolist()) for r in rows] == [
        (r[ID], list(r["parent_ids"]), np.asarray(r[X]).tolist()) for r in again
    ]


def test_smote_job_brings_minority_classes_up_to_the_target(ray_session):
    labels = np.array([0] * 6 + [1] * 3 + [2] * 2)
    ids = np.arange(len(labels), dtype=np.int64) * 5
    x = np.random.default_rng(0).normal(size=(len(labels), 1, 2)).astype(np.float32)
    ds = from_columns({ID: ids, LABEL: labels, X: x}, rows_per_block=4)
    scheme = IdScheme(offset=1000, stride=100)
    rows = smote_dataset(ds, seed=4, ids=scheme, k=2, num_classes=3, num_partitions=2).take_all()
    made = np.bincount([r[LABEL] for r in rows], minlength=3)
    assert (made + np.bincount(labels)).tolist() == [6, 6, 6]
    by_id = dict(zip(ids.tolist(), range(len(ids))))
    for r in rows:
        a, b = list(r["parent_ids"])
        assert labels[by_id[a]] == labels[by_id[b]] == r[LABEL] and r["source"] == "smote"
        point = np.asarray(r[X]).ravel()
        assert _on_segment(point, x[by_id[a]].ravel(), x[by_id[b]].ravel()) is not None
        assert (r[ID] - 1000) % 100 == a
    assert len({r[ID] for r in rows}) == len(rows)


def test_smote_group_targets_row_order_and_a_class_of_one_row():
    scheme = IdScheme(offset=100, stride=100)
    one_block = np.array([1, 1, 1])
    three = {
        ID: np.array([7, 3, 5]),
        LABEL: np.array([1, 1, 1]),
        X: np.arange(6, dtype=np.float32).reshape(3, 1, 2),
    }
    made = _smote_group(
        three, quota={(1, 0): 2}, k=2, seed=0, ids=scheme, num_classes=2, blocks_per_class=one_block
    )
    assert made.num_rows == 2
    shuffled = {key: value[[2, 0, 1]] for key, value in three.items()}
    assert _smote_group(
        shuffled,
        quota={(1, 0): 2},
        k=2,
        seed=0,
        ids=scheme,
        num_classes=2,
        blocks_per_class=one_block,
    ).equals(made)  # row order does not matter
    assert (
        _smote_group(
            three, quota={}, k=2, seed=0, ids=scheme, num_classes=2, blocks_per_class=one_block
        ).num_rows
        == 0
    )
    one = {ID: np.array([50]), LABEL: np.array([2]), X: np.zeros((1, 1, 2), np.float32)}
    with pytest.raises(DataError, match="class 2 has only id 50"):
        _smote_group(
            one,
            quota={(2, 0): 2},
            k=2,
            seed=0,
            ids=scheme,
            num_classes=None,
            blocks_per_class=one_block,
        )
    assert (
        _smote_group(
            one, quota={}, k=2, seed=0, ids=scheme, num_classes=None, blocks_per_class=one_block
        ).num_rows
        == 0
    )


def test_smote_in_blocks_of_a_class_finds_neighbours_within_the_block(ray_session):
    # Class 0: 10 rows at 0, 1, 4, 9, ... (i^2), cut into ceil(10 / 4) = 3 blocks by the
    # hash of the id (seed 2: blocks of 3, 3 and 4 rows); class 1 gets no rows and is dropped.
    ids = np.arange(22, dtype=np.int64)
    labels = np.array([0] * 10 + [1] * 12)
    x = np.zeros((22, 1, 2), np.float32)
    x[:, 0, 0] = ids.astype(np.float32) ** 2
    ds = from_columns({ID: ids, LABEL: labels, X: x}, rows_per_block=5)
    scheme = IdScheme(offset=1000, stride=100)
    rows = smote_dataset(ds, seed=2, ids=scheme, target={0: 25}, k=1, block_rows=4).take_all()
    block = smote_blocks(ids[:10], labels[:10], np.array([3, 0]), 2)
    sizes = np.bincount(block, minlength=3)
    assert sizes.tolist() == [3, 3, 4]
    quota = share_out(15, sizes)  # 15 new rows shared out 4.5 : 4.5 : 6 -> 5, 4, 6
    assert quota.tolist() == [5, 4, 6]
    assert len(rows) == 15 and {r[LABEL] for r in rows} == {0}
    made = np.zeros(3, int)
    for r in rows:
        a, nb = r["parent_ids"]
        mates = np.flatnonzero(block == block[a])
        others = mates[mates != a]
        assert nb == others[np.argmin(np.abs(others**2 - a**2))]  # nearest in the block
        u = (r[X][0, 0] - a**2) / (nb**2 - a**2)
        assert 0 <= u < 1
        made[block[a]] += 1
    assert made.tolist() == quota.tolist()
    assert len({r[ID] for r in rows}) == 15
    again = smote_dataset(ds, seed=2, ids=scheme, target={0: 25}, k=1, block_rows=4).take_all()
    key = lambda r: r[ID]  # noqa: E731
    assert [(r[ID], list(r["parent_ids"])) for r in sorted(rows, key=key)] == [
        (r[ID], list(r["parent_ids"])) for r in sorted(again, key=key)
    ]
