"""The per-batch loss the training loop uses: plain by default, each section wired as written."""

import pytest
import torch
import torch.nn.functional as F

from raysift.config import ConfigError, from_dict
from raysift.job.rounds import check_names
from raysift.operators.mixup import CutMix, Mixup, SamplePairing, beta, cycle_partners
from raysift.training.advmix import AdversarialMixup, mixed_losses
from raysift.training.loss import batch_generator, batch_loss, build_mixer
from raysift.training.models import build_model
from raysift.training.moex import MomentExchange

SHAPE, K = (1, 12), 3


def setup(job=None, n=6):
    job = from_dict(
        {"model": {"name": "cnn1d", "kwargs": {"channels": 4, "hidden": 8}}, **(job or {})}
    )
    torch.manual_seed(0)
    model = build_model(job.model, SHAPE, K).double().eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, *SHAPE, generator=g, dtype=torch.float64)
    y = torch.arange(n) % K
    return job, model, x, y


def test_without_sections_the_loss_is_plain_cross_entropy_bit_for_bit():
    job, model, x, y = setup()
    loss = batch_loss(model, x, y, K, job, torch.Generator().manual_seed(0))
    assert torch.equal(loss, F.cross_entropy(model(x), y))


def test_smoothing_alone_is_label_smoothed_cross_entropy():
    job, model, x, y = setup({"mixup": {"smoothing": 0.2}})
    loss = batch_loss(model, x, y, K, job, torch.Generator().manual_seed(0))
    torch.testing.assert_close(loss, F.cross_entropy(model(x), y, label_smoothing=0.2))


def test_transforms_run_before_the_loss():
    job, model, x, y = setup({"augment": {"transforms": [{"name": "flip", "p": 1.0}]}})
    loss = batch_loss(model, x, y, K, job, torch.Generator().manual_seed(0))
    assert torch.equal(loss, F.cross_entropy(model(x.flip(-1)), y))


def test_input_mixup_with_one_lam_per_batch():
    job, model, x, y = setup({"mixup": {"kind": "mixup", "alpha": 0.4, "per_sample": False}})
    loss = batch_loss(model, x, y, K, job, torch.Generator().manual_seed(7))

    g = torch.Generator().manual_seed(7)
    partner = cycle_partners(len(x), g)
    lam = float(beta(0.4, 1, g)[0])
    onehot = F.one_hot(y, K).double()
    target = lam * onehot + (1 - lam) * onehot[partner]
    logits = model(lam * x + (1 - lam) * x[partner])
    expect = -(target * F.log_softmax(logits, 1)).sum(1).mean()
    torch.testing.assert_close(loss, expect)


def test_hidden_layer_mixup_mixes_the_input_of_that_stage_at_the_drawn_lam():
    job, model, x, y = setup({"mixup": {"kind": "mixup", "layer": 4, "n_steps": 3}})
    loss = batch_loss(model, x, y, K, job, torch.Generator().manual_seed(2))

    g = torch.Generator().manual_seed(2)
    partner = cycle_partners(len(x), g)
    lam = beta(1.0, len(x), g).double()
    onehot = F.one_hot(y, K).double()
    h = x
    for stage in model.stages[:4]:
        h = stage(h)
    w = lam[:, None, None]
    logits = model.stages[5](model.stages[4](w * h + (1 - w) * h[partner]))
    target = lam[:, None] * onehot + (1 - lam[:, None]) * onehot[partner]
    torch.testing.assert_close(loss, -(target * F.log_softmax(logits, 1)).sum(1).mean())


def test_adversarial_section_maps_onto_the_advmix_options():
    job, model, x, y = setup(
        {
            "mixup": {
                "kind": "adversarial",
                "layer": 2,
                "alpha": 0.5,
                "n_steps": 2,
                "gamma": 1e4,
                "bound": 0.05,
                "clip": False,
                "keep_rose": False,
                "target_ratio": "original",
                "smoothing": 0.1,
            }
        }
    )
    mixer = build_mixer(job.mixup)
    assert (
        mixer.layer,
        mixer.alpha,
        mixer.n_steps,
        mixer.gamma,
        mixer.max_change,
        mixer.clip,
        mixer.keep_rose,
        mixer.target_ratio,
        mixer.smoothing,
    ) == (2, 0.5, 2, 1e4, 0.05, False, False, "original", 0.1)

    loss = batch_loss(model, x, y, K, job, torch.Generator().manual_seed(4))
    out = mixer(model, x, F.one_hot(y, K).double(), torch.Generator().manual_seed(4))
    torch.testing.assert_close(loss, out.loss)
    assert (out.lam - out.lam0).abs().max().item() == pytest.approx(0.05)  # the bound bites
    # The trained loss is the one at the moved ratio, with targets at the drawn one.
    per, _ = mixed_losses(
        model,
        model.stages,
        x,
        F.one_hot(y, K).double(),
        out.partner,
        out.lam.double(),
        out.lam0.double(),
        2,
        0.1,
    )
    torch.testing.assert_close(loss, per.mean())


def test_kinds_build_their_mixers():
    assert build_mixer(from_dict({}).mixup) is None
    kinds = {
        "mixup": Mixup,
        "cutmix": CutMix,
        "pairing": SamplePairing,
        "adversarial": AdversarialMixup,
        "moex": MomentExchange,
    }
    for kind, cls in kinds.items():
        assert type(build_mixer(from_dict({"mixup": {"kind": kind}}).mixup)) is cls
    hidden = build_mixer(from_dict({"mixup": {"kind": "mixup", "layer": 1}}).mixup)
    assert type(hidden) is AdversarialMixup and hidden.n_steps == 0
    own = build_mixer(from_dict({"mixup": {"kind": "adversarial", "ascent": "sample"}}).mixup)
    assert own.ascent == "sample"
    moex = build_mixer(
        from_dict(
            {"mixup": {"kind": "moex", "layer": 2, "moex_lambda": 0.7, "moments": "spatial"}}
        ).mixup
    )
    assert (moex.layer, moex.lam, moex.over) == (2, 0.7, "spatial")


def test_same_step_same_loss_other_step_other_loss():
    job, model, x, y = setup({"mixup": {"kind": "cutmix"}})

    def loss_at(step):
        return batch_loss(model, x, y, K, job, batch_generator(5, 0, 1, step, 0))

    assert torch.equal(loss_at(3), loss_at(3))
    assert not torch.equal(loss_at(3), loss_at(4))
    assert (
        batch_generator(5, 0, 1, 3, 0).initial_seed()
        != batch_generator(5, 0, 1, 3, 1).initial_seed()
    )


def test_a_layer_beyond_the_model_is_named():
    job, model, x, y = setup({"mixup": {"kind": "adversarial", "layer": 6}})
    with pytest.raises(ConfigError, match="mixup.layer: got 6, but model 'cnn1d' has 6 stages"):
        batch_loss(model, x, y, K, job, torch.Generator())


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"mixup": {"kind": "manifold"}}, "mixup.kind"),
        ({"mixup": {"alpha": 0}}, "mixup.alpha"),
        ({"mixup": {"gamma": -1}}, "mixup.gamma"),
        ({"mixup": {"bound": -0.1}}, "mixup.bound"),
        ({"mixup": {"smoothing": 1.0}}, "mixup.smoothing"),
        ({"mixup": {"target_ratio": "mixed"}}, "mixup.target_ratio"),
        ({"mixup": {"ascent": "batch"}}, "mixup.ascent"),
        ({"mixup": {"moex_lambda": 1.5}}, "mixup.moex_lambda"),
        ({"mixup": {"moments": "layer"}}, "mixup.moments"),
        ({"mixup": {"kind": "cutmix", "layer": 2}}, "mixup.layer: got 2, expected 0"),
        ({"mixup": {"kind": "adversarial", "per_sample": False}}, "mixup.per_sample"),
        ({"mixup": {"kind": "mixup", "gama": 1}}, "mixup.gama"),
        ({"augment": {"transforms": [{"name": "spin"}]}}, r"augment.transforms\[0\].name"),
        ({"augment": {"transforms": [{"name": "flip", "p": 1.5}]}}, r"augment.transforms\[0\].p"),
        (
            {"augment": {"transforms": [{"name": "noise"}, {"name": "flip", "axis": "up"}]}},
            r"augment.transforms\[1\].axis",
        ),
        (
            {"augment": {"transforms": [{"name": "rotate", "angle": 3}]}},
            r"augment.transforms\[0\]: unknown option 'angle' for rotate "
            r"\(options: degrees, padding\)",
        ),
    ],
)
def test_section_mistakes_name_the_field(raw, message):
    """As a job is loaded: the config's own checks, then the transform catalogue's."""
    with pytest.raises(ConfigError, match=message):
        check_names(from_dict(raw))
