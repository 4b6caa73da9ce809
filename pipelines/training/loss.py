"""The training loss of one batch: the job's `augment:` and `mixup:` sections in one place.

Every strategy's training loop (full, M2, M1, random) calls `batch_loss`, and so does the
low-resource benchmark, so a setting means the same thing wherever it is used; InfoBatch, which
scores and weights samples one by one, calls its per-sample twin `sample_losses`. The pieces are
the colleague-built operators: single-sample transforms (operators/augment.py), input mixers
(operators/mixup.py) and adversarial mixup at a hidden layer (pipelines/training/advmix.py). Without
either section the loss is plain cross-entropy, bit for bit what training used before.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from torch import nn

from raysift.config import AugmentConfig, ConfigError, JobConfig, MixupConfig
from raysift.operators.augment import (
    Brightness,
    Compose,
    Contrast,
    CropResize,
    Flip,
    GaussianNoise,
    Hue,
    RandomErasing,
    Rotate,
    Saturation,
    Shear,
    Translate,
)
from raysift.operators.mixup import CutMix, Mixup, SamplePairing, smooth_labels, soft_cross_entropy
from raysift.seeding import derive_seed
from raysift.training.advmix import AdversarialMixup
from raysift.training.models import unwrap
from raysift.training.moex import MomentExchange

TRANSFORMS = {
    "flip": Flip,
    "rotate": Rotate,
    "crop_resize": CropResize,
    "shear": Shear,
    "translate": Translate,
    "brightness": Brightness,
    "contrast": Contrast,
    "saturation": Saturation,
    "hue": Hue,
    "erase": RandomErasing,
    "noise": GaussianNoise,
}


def build_transforms(augment: AugmentConfig) -> Compose | None:
    """The transforms as one Compose (None when there are none); a bad entry is a ConfigError
    naming `augment.transforms[i]` and the option."""
    steps = []
    for i, spec in enumerate(augment.transforms):
        where = f"augment.transforms[{i}]"
        if spec.get("name") not in TRANSFORMS:
            raise ConfigError(
                f"{where}.name: got {spec.get('name')!r}, expected one of {', '.join(TRANSFORMS)}"
            )
        options = {k: v for k, v in spec.items() if k not in ("name", "p")}
        cls = TRANSFORMS[spec["name"]]
        known = list(inspect.signature(cls).parameters)
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise ConfigError(
                f"{where}: unknown option '{unknown[0]}' for {spec['name']} "
                f"(options: {', '.join(known) or 'none'})"
            )
        p = spec.get("p", 1.0)
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
            raise ConfigError(f"{where}.p: got {p!r}, expected a number in [0, 1]")
        try:
            steps.append((cls(**options), float(p)))
        except ValueError as err:  # the operators' messages start with the option's name
            raise ConfigError(f"{where}.{err}") from err
    return Compose(steps) if steps else None


def build_mixer(mixup: MixupConfig):
    """The mixing rule of the `mixup:` section, or None for kind 'none'.

    Mixup at a hidden layer is adversarial mixup with no ascent step (the same draws as input
    mixup); input mixup keeps operators.mixup.Mixup for its per-batch lam option.
    """
    m = mixup
    if m.kind == "none":
        return None
    if m.kind == "cutmix":
        return CutMix(m.alpha, m.per_sample, m.smoothing)
    if m.kind == "pairing":
        return SamplePairing(m.smoothing)
    if m.kind == "mixup" and m.layer == 0:
        return Mixup(m.alpha, m.per_sample, m.smoothing)
    if m.kind == "moex":
        return MomentExchange(m.layer, m.moex_lambda, m.moments, m.smoothing)
    steps = m.n_steps if m.kind == "adversarial" else 0
    return AdversarialMixup(
        layer=m.layer,
        alpha=m.alpha,
        n_steps=steps,
        gamma=m.gamma,
        max_change=m.bound,
        clip=m.clip,
        keep_rose=m.keep_rose,
        target_ratio=m.target_ratio,
        smoothing=m.smoothing,
        ascent=m.ascent,
    )


def batch_generator(
    seed: int,
    round_index: int,
    epoch: int,
    step: int,
    rank: int,
    device: torch.device | str = "cpu",
) -> torch.Generator:
    """The random stream of one training step of one worker: the same job draws the same
    transforms, partners and ratios in every run (on CPU; GPU kernels may still differ)."""
    g = torch.Generator(device=device)
    return g.manual_seed(derive_seed(seed, "batch", round_index, epoch, step, rank))


def batch_loss(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    job: JobConfig,
    generator: torch.Generator,
    targets: torch.Tensor | None = None,
) -> torch.Tensor:
    """The scalar loss to backpropagate for batch (x, y) with integer labels y.

    Order: single-sample transforms, then mixing (input, hidden layer, adversarial or moment
    exchange) against soft targets; with neither, cross-entropy with `mixup.smoothing` label
    smoothing. `targets` (n, K), when the batch holds generated rows with `y_soft` (Share.
    targets): their soft targets beside the real rows' one-hot labels, and the loss is the
    soft-label cross-entropy, which for a one-hot row is the plain one; smoothing applies to
    every row alike.
    """
    x = _transformed(x, job.augment, generator)
    mixer = build_mixer(job.mixup)
    if mixer is None and targets is None:
        return F.cross_entropy(model(x), y, label_smoothing=job.mixup.smoothing)
    if mixer is None:
        return soft_cross_entropy(model(x), smooth_labels(targets, job.mixup.smoothing))
    target = (F.one_hot(y, num_classes) if targets is None else targets).to(
        x.dtype if x.is_floating_point() else torch.float32
    )
    if isinstance(mixer, (AdversarialMixup, MomentExchange)):
        stages = getattr(unwrap(model), "stages", None)
        if not isinstance(stages, nn.ModuleList) or job.mixup.layer >= len(stages):
            have = f"{len(stages)} stages" if isinstance(stages, nn.ModuleList) else "no stages"
            raise ConfigError(
                f"mixup.layer: got {job.mixup.layer}, but model "
                f"{job.model.name!r} has {have} (mixing at layer k needs k < the "
                f"number of stages)"
            )
        out = mixer(model, x, target, generator)
        return out if isinstance(mixer, MomentExchange) else out.loss
    mixed_x, mixed_target = mixer(x, target, generator)
    return soft_cross_entropy(model(mixed_x), mixed_target)


def sample_losses(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    job: JobConfig,
    generator: torch.Generator,
    targets: torch.Tensor | None = None,
) -> torch.Tensor:
    """The plain path's loss of each sample (transforms, then cross-entropy with
    `mixup.smoothing`), for rules that score and weight samples one by one (InfoBatch).

    Mixing is not applied: a mixed row's loss belongs to two samples, so JobConfig.validate
    refuses mixup together with such a rule.
    """
    x = _transformed(x, job.augment, generator)
    if targets is not None:
        return soft_cross_entropy(
            model(x), smooth_labels(targets, job.mixup.smoothing), reduction="none"
        )
    return F.cross_entropy(model(x), y, label_smoothing=job.mixup.smoothing, reduction="none")


def _transformed(
    x: torch.Tensor, augment: AugmentConfig, generator: torch.Generator
) -> torch.Tensor:
    transforms = build_transforms(augment)
    return x if transforms is None else transforms(x, generator)
