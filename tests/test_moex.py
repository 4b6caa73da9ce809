"""MoEx: moments swapped exactly on hand-made feature maps, the paper's target, the training hook
and the offline job's rows."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from raysift.operators.augment import IdScheme
from raysift.operators.contract import ID, LABEL, X, from_columns
from raysift.operators.mixup import mix_dataset
from raysift.operators.moex import MomentMixer, exchange_moments, moex_targets
from raysift.training.models import Staged
from raysift.training.moex import MomentExchange


def test_channel_moments_are_swapped_exactly_at_every_position():
    # Two samples, 2 channels, 2 positions. Sample 0 at position p: (1, 3) -> mean 2, std 1
    # and (0, 4) -> mean 2, std 2; sample 1: (10, 14) -> mean 12, std 2; (5, 5) -> mean 5, std 0.
    h = torch.tensor([[[1.0, 0.0], [3.0, 4.0]], [[10.0, 5.0], [14.0, 5.0]]], dtype=torch.float64)
    out = exchange_moments(h, torch.tensor([1, 0]), "channel", eps=1e-30)
    # sample 0 keeps its normalised values (-1, +1) and takes mean 12 / std 2 and mean 5 / std 0
    assert torch.allclose(out[0], torch.tensor([[10.0, 5.0], [14.0, 5.0]], dtype=h.dtype))
    # sample 1, normalised (-1, +1) at position 0, takes mean 2, std 1 -> (1, 3);
    # at position 1 its std is 0 (values 0 after normalising) -> the donor's mean 2
    assert torch.allclose(out[1], torch.tensor([[1.0, 2.0], [3.0, 2.0]], dtype=h.dtype))


def test_spatial_moments_and_eps_follow_the_formula():
    h = torch.tensor([[[0.0, 2.0, 4.0]], [[1.0, 1.0, 7.0]]], dtype=torch.float64)
    out = exchange_moments(h, torch.tensor([1, 0]), "spatial", eps=1e-5)
    m0, v0 = 2.0, 8 / 3
    m1, v1 = 3.0, 8.0
    expect0 = [(v - m0) / np.sqrt(v0 + 1e-5) * np.sqrt(v1 + 1e-5) + m1 for v in (0, 2, 4)]
    assert out[0, 0].tolist() == pytest.approx(expect0)
    with pytest.raises(ValueError, match="'channel' needs >= 2 channels"):
        exchange_moments(h, torch.tensor([1, 0]), "channel")


def test_targets_weigh_the_own_label_by_lam():
    y = torch.eye(3)
    assert torch.allclose(
        moex_targets(y, torch.tensor([2, 0, 1]), 0.9),
        torch.tensor([[0.9, 0, 0.1], [0.1, 0.9, 0], [0, 0.1, 0.9]]),
    )


def test_training_loss_is_the_models_pass_on_exchanged_features():
    torch.manual_seed(0)
    model = Staged([nn.Linear(4, 6), nn.Linear(6, 3)]).double()
    x = torch.randn(5, 4, dtype=torch.float64)
    y = F.one_hot(torch.arange(5) % 3, 3).double()
    loss = MomentExchange(layer=1, lam=0.8)(model, x, y, torch.Generator().manual_seed(2))
    # the same draws by hand: the partner cycle, then the exchange of the flat features
    from raysift.operators.mixup import cycle_partners

    partner = cycle_partners(5, torch.Generator().manual_seed(2))
    logits = model.stages[1](exchange_moments(model.stages[0](x), partner, "channel"))
    target = 0.8 * y + 0.2 * y[partner]
    expect = -(target * F.log_softmax(logits, 1)).sum(1).mean()
    assert loss.item() == pytest.approx(expect.item(), rel=1e-12)
    assert not model.stages[1]._forward_pre_hooks  # the hook is gone after the pass


def test_offline_rows_carry_provenance_and_repeat_with_the_seed(ray_session):
    n = 8
    ids = 100 + np.arange(n, dtype=np.int64)
    x = np.random.default_rng(0).normal(size=(n, 1, 5)).astype(np.float32)
    ds = from_columns({ID: ids, LABEL: np.arange(n) % 2, X: x}, rows_per_block=4)
    scheme = IdScheme(offset=1000, stride=1000)
    rows = mix_dataset(ds, MomentMixer(0.9), num_classes=2, seed=1, ids=scheme).take_all()
    assert len(rows) == n
    by_id = dict(zip(ids.tolist(), x))
    for r in rows:
        own, donor = list(r["parent_ids"])
        assert r["source"] == "moex" and r[ID] == 1000 + own and own != donor
        got = np.asarray(r[X])
        # the row has the donor's mean and std over positions, and its own shape
        assert got.mean() == pytest.approx(by_id[donor].mean(), abs=1e-5)
        assert got.std() == pytest.approx(np.sqrt(by_id[donor].var() + 1e-5), rel=1e-3)
        assert np.corrcoef(got.ravel(), by_id[own].ravel())[0, 1] == pytest.approx(1, abs=1e-5)
        y = np.asarray(r["y_soft"])
        same = (own - donor) % 2 == 0
        assert y[(own - 100) % 2] == pytest.approx(1.0 if same else 0.9)
        assert r[LABEL] == (own - 100) % 2
    again = mix_dataset(ds, MomentMixer(0.9), num_classes=2, seed=1, ids=scheme).take_all()
    assert [np.asarray(r[X]).tolist() for r in rows] == [np.asarray(r[X]).tolist() for r in again]
