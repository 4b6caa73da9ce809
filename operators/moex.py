"""MoEx, moment exchange (Li et al. 2021): a sample keeps its normalised features but wears the
mean and standard deviation of a partner, and its target leans towards the partner's label.

`exchange_moments` is the rule on a batch of feature maps, used at a hidden layer during training
(pipelines/training/moex.py) and on the inputs by `MomentMixer`, which operators.mixup.mix_dataset
runs as a Ray Data job that writes the exchanged rows with their provenance. Moments are taken per
sample and position over the channels (positional normalisation, the paper's choice) or per
sample and channel over the positions ('spatial', instance normalisation: for one-channel
inputs, where moments over one channel say nothing).
"""

from __future__ import annotations

import torch

from .mixup import cycle_partners

MOMENTS = ("channel", "spatial")
EPS = 1e-5


def moment_dims(h: torch.Tensor, over: str) -> tuple[int, ...]:
    """The dimensions the moments are taken over, for (N, C, *positions) or flat (N, F)."""
    if over not in MOMENTS:
        raise ValueError(f"moments: expected one of {MOMENTS}, got {over!r}")
    if over == "channel":
        if h.dim() > 2 and h.shape[1] < 2:
            raise ValueError(
                f"moments: 'channel' needs >= 2 channels, the features have shape "
                f"{tuple(h.shape)}; use 'spatial'"
            )
        return (1,)
    if h.dim() < 3:
        raise ValueError(
            f"moments: 'spatial' needs (N, C, positions...) features, got shape {tuple(h.shape)}"
        )
    return tuple(range(2, h.dim()))


def exchange_moments(
    h: torch.Tensor, partner: torch.Tensor, over: str = "channel", eps: float = EPS
) -> torch.Tensor:
    """(h - mean) / std * std[partner] + mean[partner], moments per sample over `over`
    (std = sqrt(biased variance + eps)): each sample's normalised features, the partner's
    moments."""
    dims = moment_dims(h, over)
    mean = h.mean(dim=dims, keepdim=True)
    std = (h.var(dim=dims, keepdim=True, unbiased=False) + eps).sqrt()
    partner = partner.to(h.device)
    return (h - mean) / std * std[partner] + mean[partner]


def moex_targets(y: torch.Tensor, partner: torch.Tensor, lam: float) -> torch.Tensor:
    """lam * y + (1 - lam) * y[partner]: the paper's loss lam * CE(y_a) + (1 - lam) * CE(y_b) is
    the cross-entropy against these soft targets."""
    return lam * y + (1 - lam) * y[partner.to(y.device)]


def check_lambda(lam: float) -> float:
    if not 0 <= lam <= 1:
        raise ValueError(f"lam: must be in [0, 1], got {lam}")
    return float(lam)


class MomentMixer:
    """MoEx on the inputs as an offline mixer for operators.mixup.mix_dataset: each sample takes
    the moments of its partner along a random cycle of the batch, its target is lam own label
    + (1 - lam) the partner's."""

    name = "moex"

    def __init__(self, lam: float = 0.9, over: str = "spatial"):
        if over not in MOMENTS:
            raise ValueError(f"over: expected one of {MOMENTS}, got {over!r}")
        self.lam, self.over = check_lambda(lam), over

    def apply(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator):
        """(exchanged x, soft targets, partner index)."""
        partner = cycle_partners(len(x), generator)
        return exchange_moments(x, partner, self.over), moex_targets(y, partner, self.lam), partner

    def __call__(self, x, y, generator):
        return self.apply(x, y, generator)[:2]
