"""Adversarial mixup: the lam gradient, the ascent step, the rose rule, and DDP gradient sync."""

import os

import pytest
import torch
import torch.nn.functional as F
from gloo_group import run_gloo
from torch import nn

from raysift.training.advmix import AdversarialMixup, mixed_losses


class Staged(nn.Module):
    """The model interface advmix relies on: `stages` applied in order."""

    def __init__(self, stages):
        super().__init__()
        self.stages = nn.ModuleList(stages)

    def forward(self, x):
        for stage in self.stages:
            x = stage(x)
        return x


def tanh_mlp(dtype=torch.float64, extra=()):
    torch.manual_seed(0)
    return Staged(
        [
            nn.Sequential(nn.Linear(4, 8), nn.Tanh(), *extra),
            nn.Sequential(nn.Linear(8, 8), nn.Tanh()),
            nn.Linear(8, 3),
        ]
    ).to(dtype)


def batch(n=6, dtype=torch.float64, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g, dtype=dtype)
    y = F.one_hot(torch.arange(n) % 3, 3).to(dtype)
    return x, y


def losses_at(model, x, y, partner, lam, layer=1, target_lam=None):
    with torch.no_grad():
        return mixed_losses(
            model,
            model.stages,
            x,
            y,
            partner,
            lam,
            lam if target_lam is None else target_lam,
            layer,
        )[0]


def test_lam_gradient_matches_finite_differences_and_the_step_raises_the_loss():
    model, (x, y) = tanh_mlp(), batch()
    adv = AdversarialMixup(layer=1, gamma=0.5, keep_rose=False, clip=False)
    out = adv(model, x, y, torch.Generator().manual_seed(3))

    lam0 = out.lam0.double().requires_grad_()
    per, _ = mixed_losses(model, model.stages, x, y, out.partner, lam0, lam0, 1)
    (grad,) = torch.autograd.grad(per.mean(), lam0)
    eps = 1e-6
    for i in range(len(x)):
        e = torch.zeros(len(x), dtype=torch.float64)
        e[i] = eps
        up = losses_at(model, x, y, out.partner, lam0.detach() + e).mean()
        down = losses_at(model, x, y, out.partner, lam0.detach() - e).mean()
        assert abs((up - down).item() / (2 * eps) - grad[i].item()) < 1e-7

    torch.testing.assert_close(out.lam, (lam0.detach() + 0.5 * grad).float())
    before = losses_at(model, x, y, out.partner, lam0.detach()).mean()
    assert out.loss.item() > before.item()
    assert out.stats()["lam_change"] == pytest.approx((0.5 * grad).abs().mean().item(), rel=1e-6)


def test_perturbed_ratio_is_kept_only_where_the_loss_rose():
    model, (x, y) = tanh_mlp(), batch(n=16)
    adv = AdversarialMixup(layer=1, gamma=40.0, clip=False)
    out = adv(model, x, y, torch.Generator().manual_seed(5))
    no_keep = AdversarialMixup(layer=1, gamma=40.0, clip=False, keep_rose=False)
    stepped = no_keep(model, x, y, torch.Generator().manual_seed(5)).lam

    before = losses_at(model, x, y, out.partner, out.lam0.double())
    after = losses_at(model, x, y, out.partner, stepped.double())
    rose = after > before
    assert rose.any() and not rose.all()  # the big step overshoots for some samples
    assert out.rose.tolist() == rose.tolist()
    torch.testing.assert_close(out.lam, torch.where(rose, stepped, out.lam0))
    torch.testing.assert_close(out.losses.detach(), torch.maximum(before, after))
    assert out.stats()["rose_frac"] == pytest.approx(rose.double().mean().item())


def test_original_target_ratio_mixes_the_target_with_the_drawn_lam():
    model, (x, y) = tanh_mlp(), batch()
    out = AdversarialMixup(layer=1, gamma=5.0, keep_rose=False, target_ratio="original")(
        model, x, y, torch.Generator().manual_seed(2)
    )
    assert not torch.equal(out.lam, out.lam0)
    torch.testing.assert_close(
        out.losses.detach(),
        losses_at(model, x, y, out.partner, out.lam.double(), target_lam=out.lam0.double()),
    )


def test_no_steps_is_input_mixup_at_layer_zero():
    model, (x, y) = tanh_mlp(), batch(n=5)
    out = AdversarialMixup(layer=0, n_steps=0)(model, x, y, torch.Generator().manual_seed(4))
    assert torch.equal(out.lam, out.lam0) and out.rose is None
    lam = out.lam0.double()[:, None]
    mixed_x = lam * x + (1 - lam) * x[out.partner]
    target = lam * y + (1 - lam) * y[out.partner]
    expect = -(target * F.log_softmax(model(mixed_x), 1)).sum(1)
    torch.testing.assert_close(out.losses.detach(), expect.detach())


def test_change_bound_and_clipping():
    model, (x, y) = tanh_mlp(), batch(n=16)
    out = AdversarialMixup(layer=1, gamma=1e4, max_change=0.01, clip=False, keep_rose=False)(
        model, x, y, torch.Generator().manual_seed(6)
    )
    change = (out.lam - out.lam0).abs()
    assert change.max().item() == pytest.approx(0.01, rel=1e-5)
    clipped = AdversarialMixup(layer=1, gamma=1e4, keep_rose=False)(
        model, x, y, torch.Generator().manual_seed(6)
    )
    assert set(clipped.lam.tolist()) <= {0.0, 1.0}


def test_probe_passes_leave_no_trace_and_share_dropout_masks():
    # Dropout: the probes replay the training pass's masks, so the max rule holds exactly.
    model, (x, y) = tanh_mlp(extra=(nn.Dropout(0.5),)), batch(n=16)
    torch.manual_seed(11)
    out = AdversarialMixup(layer=1, gamma=40.0, clip=False)(
        model, x, y, torch.Generator().manual_seed(5)
    )
    torch.manual_seed(11)
    stepped = AdversarialMixup(layer=1, gamma=40.0, clip=False, keep_rose=False)(
        model, x, y, torch.Generator().manual_seed(5)
    ).lam
    torch.manual_seed(11)
    before = losses_at(model, x, y, out.partner, out.lam0.double())
    torch.manual_seed(11)
    after = losses_at(model, x, y, out.partner, stepped.double())
    torch.testing.assert_close(out.losses.detach(), torch.maximum(before, after))

    # BatchNorm: running statistics move once, as after the training pass alone.
    bn = Staged(
        [nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Tanh()), nn.Linear(8, 3)]
    ).double()
    reference = Staged(
        [nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Tanh()), nn.Linear(8, 3)]
    ).double()
    reference.load_state_dict(bn.state_dict())
    out = AdversarialMixup(layer=1, gamma=1.0)(bn, x, y, torch.Generator().manual_seed(5))
    mixed_losses(
        reference, reference.stages, x, y, out.partner, out.lam.double(), out.lam.double(), 1
    )
    norm, ref_norm = bn.stages[0][1], reference.stages[0][1]
    torch.testing.assert_close(norm.running_mean, ref_norm.running_mean)
    torch.testing.assert_close(norm.running_var, ref_norm.running_var)
    assert int(norm.num_batches_tracked) == 1


def test_parameters_are_validated_by_name():
    model, (x, y) = tanh_mlp(), batch()
    with pytest.raises(ValueError, match="target_ratio"):
        AdversarialMixup(target_ratio="mixed")
    with pytest.raises(ValueError, match="gamma"):
        AdversarialMixup(gamma=-1.0)
    with pytest.raises(ValueError, match="ascent"):
        AdversarialMixup(ascent="batch")
    with pytest.raises(ValueError, match="layer"):
        AdversarialMixup(layer=3)(model, x, y, torch.Generator())
    with pytest.raises(ValueError, match="stages"):
        AdversarialMixup()(nn.Linear(4, 3).double(), x, y, torch.Generator())
    with pytest.raises(ValueError, match="layer: 0"):
        AdversarialMixup(layer=0)(model, torch.zeros(6, 4, dtype=torch.long), y, torch.Generator())


def _ddp_rank_batches(rank):
    return [batch(n=8, seed=10 * rank + step) for step in range(2)]


def _ddp_worker(rank, out_dir):
    ddp = nn.parallel.DistributedDataParallel(tanh_mlp())
    grads = []
    for step, (x, y) in enumerate(_ddp_rank_batches(rank)):
        ddp.zero_grad()
        out = AdversarialMixup(layer=1, gamma=5.0)(
            ddp, x, y, torch.Generator().manual_seed(100 * rank + step)
        )
        out.loss.backward()
        grads.append([p.grad.clone() for p in ddp.parameters()])
    torch.save(grads, os.path.join(out_dir, f"{rank}.pt"))


def test_under_ddp_only_the_trained_pass_is_synced_and_gradients_average(tmp_path):
    run_gloo(_ddp_worker, tmp_path)

    expected = []
    for step in range(2):
        per_rank = []
        for rank in range(2):
            model = tanh_mlp()
            x, y = _ddp_rank_batches(rank)[step]
            AdversarialMixup(layer=1, gamma=5.0)(
                model, x, y, torch.Generator().manual_seed(100 * rank + step)
            ).loss.backward()
            per_rank.append([p.grad for p in model.parameters()])
        expected.append([(a + b) / 2 for a, b in zip(*per_rank)])
    for rank in range(2):
        got = torch.load(tmp_path / f"{rank}.pt")
        for step in range(2):
            for g, e in zip(got[step], expected[step]):
                torch.testing.assert_close(g, e)


def test_per_sample_step_is_each_samples_own_lam_gradient_whatever_the_batch_size():
    model = tanh_mlp()
    x, y = batch(n=8, seed=5)
    lam0 = torch.tensor([0.3, 0.6, 0.5, 0.8, 0.2, 0.7, 0.4, 0.9], dtype=torch.float64)
    partner = torch.tensor([1, 2, 3, 0, 5, 6, 7, 4])  # two cycles of four: 0-3 and 4-7
    gamma, eps = 0.1, 1e-6
    steps = {}
    for ascent in ("sample", "mean"):
        adv = AdversarialMixup(layer=1, gamma=gamma, keep_rose=False, clip=False, ascent=ascent)
        whole, _ = adv.perturb(model, x, y, partner, lam0)
        half, _ = adv.perturb(model, x[:4], y[:4], partner[:4], lam0[:4])
        steps[ascent] = (whole - lam0, half - lam0[:4])
    whole, half = steps["sample"]
    for i in range(8):  # a finite difference of sample i's own loss in its own ratio
        e = torch.zeros(8, dtype=torch.float64)
        e[i] = eps
        up = losses_at(model, x, y, partner, lam0 + e)[i]
        down = losses_at(model, x, y, partner, lam0 - e)[i]
        assert whole[i].item() == pytest.approx(gamma * (up - down).item() / (2 * eps), abs=1e-8)
    assert torch.allclose(whole[:4], half, atol=1e-12)  # the batch of 4 steps as the batch of 8
    mean_whole, mean_half = steps["mean"]  # AMP's step: the same direction, 1/N the size
    assert torch.allclose(mean_whole, whole / 8, atol=1e-12)
    assert torch.allclose(mean_half, half / 4, atol=1e-12)
