"""Neural style transfer between samples of one class (Gatys et al. 2016), batched and bounded.

A new sample starts as the content sample and takes `steps` Adam steps on
    content_weight * content loss + style_weight * style loss + tv_weight * total variation,
where the content loss compares the features of the last layer of a feature extractor, the
style loss the Gram matrices of every layer, and the total variation penalises differences
between neighbouring pixels (or signal steps).

The feature extractor: no pretrained VGG can be downloaded here, so the default is a fixed,
seeded random CNN (`random_extractor`). Random convolutional features carry texture well enough
for Gram-matrix synthesis (Ustyuzhaninov et al. 2017, "What does it take to generate natural
textures?"; He et al. 2016 on random-weight representations), and they exist before any model
is trained, for signals and images alike. Any module list works too, e.g. the first stages of
a classifier raysift has trained.
"""

from __future__ import annotations

import torch
from torch import nn

from .augment import spatial_dims


def gram(f: torch.Tensor) -> torch.Tensor:
    """Per-sample Gram matrices (N, C, C) of features (N, C, positions...), divided by the
    number of positions."""
    flat = f.reshape(f.shape[0], f.shape[1], -1)
    return flat @ flat.transpose(1, 2) / flat.shape[2]


def style_loss(features: list[torch.Tensor], targets: list[torch.Tensor]) -> torch.Tensor:
    """Per sample: the sum over layers of the mean squared difference of Gram matrices."""
    return sum(((gram(f) - gram(t)) ** 2).flatten(1).mean(1) for f, t in zip(features, targets))


def content_loss(feature: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per sample: the mean squared difference of one layer's features."""
    return ((feature - target) ** 2).flatten(1).mean(1)


def tv_loss(x: torch.Tensor) -> torch.Tensor:
    """Per sample: the mean squared difference between neighbours along every spatial axis."""
    dims = spatial_dims(x)
    return sum((x.diff(dim=d) ** 2).flatten(1).mean(1) for d in range(x.dim() - dims, x.dim()))


class RandomExtractor(nn.Module):
    """Conv + ReLU layers with fixed random weights; forward returns every layer's features."""

    def __init__(self, in_channels: int, dims: int, widths=(32, 64), seed: int = 0):
        super().__init__()
        conv = nn.Conv1d if dims == 1 else nn.Conv2d
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            chans = [in_channels, *widths]
            self.layers = nn.ModuleList(
                nn.Sequential(conv(a, b, 3, padding=1), nn.ReLU()) for a, b in zip(chans, chans[1:])
            )
        self.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = x.unsqueeze(1) if x.dim() == 2 else x  # (N, L) signals have one channel
        out = []
        for layer in self.layers:
            x = layer(x)
            out.append(x)
        return out


def random_extractor(x_shape: tuple, seed: int = 0, widths=(32, 64)) -> RandomExtractor:
    """A fixed random CNN for samples of shape (L,), (C, L) or (C, H, W)."""
    dims = 1 if len(x_shape) <= 2 else 2
    in_channels = 1 if len(x_shape) == 1 else x_shape[0]
    return RandomExtractor(in_channels, dims, widths, seed)


class StyleTransfer:
    """`combine(content, style)`: each content sample restyled after its partner, by `steps`
    Adam steps of size lr * (the batch's feature std) from the content sample."""

    name = "style"

    def __init__(
        self,
        extractor: nn.Module,
        steps: int = 50,
        lr: float = 0.05,
        content_weight: float = 1.0,
        style_weight: float = 10.0,
        tv_weight: float = 0.1,
    ):
        if steps < 1:
            raise ValueError(f"steps: must be >= 1, got {steps}")
        for name, value in (
            ("lr", lr),
            ("content_weight", content_weight),
            ("style_weight", style_weight),
            ("tv_weight", tv_weight),
        ):
            if not value >= 0:
                raise ValueError(f"{name}: must be >= 0, got {value}")
        self.extractor, self.steps, self.lr = extractor, steps, lr
        self.weights = (content_weight, style_weight, tv_weight)

    def losses(self, x, content_features, style_features):
        """(total, content, style, tv) per sample at x."""
        feats = self.extractor(x)
        c = content_loss(feats[-1], content_features[-1])
        s = style_loss(feats, style_features)
        t = tv_loss(x)
        wc, ws, wt = self.weights
        return wc * c + ws * s + wt * t, c, s, t

    def __call__(self, content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            content_features = self.extractor(content)
            style_features = self.extractor(style)
        x = content.detach().clone().requires_grad_()
        scale = float(content.std()) or 1.0
        opt = torch.optim.Adam([x], lr=self.lr * scale)
        for _ in range(self.steps):
            total = self.losses(x, content_features, style_features)[0].sum()
            opt.zero_grad(set_to_none=True)
            total.backward()
            opt.step()
        return x.detach()
