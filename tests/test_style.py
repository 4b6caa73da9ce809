"""Style transfer losses on hand-made feature maps, the bounded optimisation and the pair job."""

import numpy as np
import pytest
import torch

from raysift.operators.augment import IdScheme
from raysift.operators.contract import ID, LABEL, X, from_columns
from raysift.operators.pairs import draw_pairs, pair_dataset
from raysift.operators.style import (
    StyleTransfer,
    content_loss,
    gram,
    random_extractor,
    style_loss,
    tv_loss,
)


def test_gram_matrix_by_hand():
    # one sample, 2 channels, 3 positions: rows a = (1, 2, 3), b = (0, 1, -1)
    f = torch.tensor([[[1.0, 2.0, 3.0], [0.0, 1.0, -1.0]]])
    # a.a = 14, a.b = -1, b.b = 2; divided by 3 positions
    assert torch.allclose(gram(f), torch.tensor([[[14.0, -1.0], [-1.0, 2.0]]]) / 3)
    # 2-D maps are flattened over their positions: the same numbers laid out 1 x 3
    assert torch.allclose(gram(f.view(1, 2, 1, 3)), gram(f))


def test_style_content_and_tv_losses_by_hand():
    f = torch.tensor([[[1.0, 2.0, 3.0], [0.0, 1.0, -1.0]]])
    t = torch.tensor([[[1.0, 2.0, 3.0], [0.0, 1.0, 2.0]]])
    # Gram of t: a.a 14, a.b 8, b.b 5 (/3); differences from f: 0, 9/3, 9/3, 3/3
    expect = (0 + 9 + 9 + 1) / 4
    assert style_loss([f], [t]).item() == pytest.approx(expect)
    assert style_loss([f, f], [t, f]).item() == pytest.approx(expect)  # layers add up
    assert content_loss(f, t).item() == pytest.approx(9 / 6)  # one difference of 3, 6 entries
    img = torch.tensor([[[[0.0, 1.0], [3.0, 1.0]]]])  # (1, 1, 2, 2)
    # rows: (3-0)^2, (1-1)^2 -> mean 4.5; columns: (1-0)^2, (1-3)^2 -> mean 2.5
    assert tv_loss(img).item() == pytest.approx(7.0)
    assert tv_loss(torch.tensor([[0.0, 2.0, 3.0]])).item() == pytest.approx(2.5)  # a signal


def test_style_transfer_lowers_its_loss_in_a_bounded_number_of_steps():
    g = torch.Generator().manual_seed(0)
    content = torch.randn(4, 1, 8, 8, generator=g)
    style = torch.randn(4, 1, 8, 8, generator=g) * 2 + 1
    rule = StyleTransfer(random_extractor((1, 8, 8), seed=3), steps=30, lr=0.05)
    with torch.no_grad():
        cf, sf = rule.extractor(content), rule.extractor(style)
        before = rule.losses(content, cf, sf)[2]
    out = rule(content, style)
    with torch.no_grad():
        after = rule.losses(out, cf, sf)[2]
    assert out.shape == content.shape and (after < before).all()
    assert torch.equal(rule(content, style), out)  # no hidden randomness


def test_pairs_are_round_robin_and_never_a_sample_with_itself():
    first, second = draw_pairs(4, 10, torch.Generator().manual_seed(1))
    assert sorted(first[:4].tolist()) == [0, 1, 2, 3] and sorted(first[4:8].tolist()) == [
        0,
        1,
        2,
        3,
    ]
    assert (first != second).all()


def test_pair_job_writes_same_class_rows_with_both_parents(ray_session):
    n = 8
    ids = 10 * np.arange(n, dtype=np.int64)
    x = np.arange(n, dtype=np.float32)[:, None] * np.ones((1, 4), np.float32)
    ds = from_columns({ID: ids, LABEL: np.arange(n) % 2, X: x}, rows_per_block=3)

    def average(a, b):
        return (a + b) / 2

    def pairs(**grouping):
        return pair_dataset(
            ds,
            average,
            per_class=5,
            num_classes=2,
            seed=1,
            ids=IdScheme(offset=1000, stride=1000),
            source="style",
            **grouping,
        ).take_all()

    rows = pairs(num_partitions=2)
    assert len(rows) == 10 and len({r[ID] for r in rows}) == 10
    for r in rows:
        a, b = list(r["parent_ids"])
        assert a != b and a % 20 == b % 20 == r[LABEL] * 10  # both parents of the row's class
        assert np.asarray(r[X]).tolist() == [(a + b) / 20] * 4
        assert r["source"] == "style" and (r[ID] - 1000) % 1000 == a
    again = pairs()
    assert sorted(r[ID] for r in rows) == sorted(r[ID] for r in again)
