"""Class-conditional generators for 1-D signals and small images: a VAE and a GAN (M4).

Both are small MLPs on the flattened sample, conditioned on the one-hot label, and work in the
training split's standardised space (per-feature mean and std kept as buffers), so one model
suits signals, pixels in [0, 1] and standardised features alike. `sample(labels, generator)`
draws new samples of the given classes in the data's own scale; everything random comes from
explicit generators, so the same seed trains the same model and draws the same rows.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

KINDS = ("vae", "gan")


@dataclass
class GeneratorSpec:
    """What a generator is: enough to rebuild it from its saved weights."""

    kind: str  # vae | gan
    x_shape: tuple
    num_classes: int
    latent: int = 16
    hidden: int = 256


def _mlp(sizes: list[int], act: nn.Module) -> nn.Sequential:
    layers = []
    for a, b in zip(sizes, sizes[1:]):
        layers += [nn.Linear(a, b), act]
    return nn.Sequential(*layers[:-1])  # no activation after the last layer


class _Conditional(nn.Module):
    """Standardisation buffers and the one-hot condition that both generators share."""

    def __init__(self, spec: GeneratorSpec):
        super().__init__()
        self.spec = spec
        self.width = math.prod(spec.x_shape)
        self.register_buffer("mean", torch.zeros(self.width))
        self.register_buffer("std", torch.ones(self.width))

    def set_scale(self, x: torch.Tensor) -> None:
        flat = x.reshape(len(x), -1)
        self.mean.copy_(flat.mean(0))
        self.std.copy_(flat.std(0, unbiased=False).clamp_min(1e-3))

    def standardise(self, x: torch.Tensor) -> torch.Tensor:
        return (x.reshape(len(x), -1) - self.mean) / self.std

    def restore(self, flat: torch.Tensor) -> torch.Tensor:
        return (flat * self.std + self.mean).reshape(len(flat), *self.spec.x_shape)

    def condition(self, labels: torch.Tensor) -> torch.Tensor:
        return F.one_hot(labels.long(), self.spec.num_classes).float()

    def noise(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randn(n, self.spec.latent, generator=generator)


class ConditionalVAE(_Conditional):
    """Encoder q(z | x, y), decoder p(x | z, y) with a unit-variance Gaussian likelihood in the
    standardised space; loss = squared error + KL to N(0, I), per sample."""

    def __init__(self, spec: GeneratorSpec):
        super().__init__(spec)
        k, h, d = spec.num_classes, spec.hidden, spec.latent
        self.encoder = _mlp([self.width + k, h, h, 2 * d], nn.ReLU())
        self.decoder = _mlp([d + k, h, h, self.width], nn.ReLU())

    def loss(self, x: torch.Tensor, labels: torch.Tensor, generator: torch.Generator):
        c, flat = self.condition(labels), self.standardise(x)
        mu, logvar = self.encoder(torch.cat([flat, c], 1)).chunk(2, dim=1)
        z = mu + (0.5 * logvar).exp() * self.noise(len(x), generator)
        recon = self.decoder(torch.cat([z, c], 1))
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(1)
        return (0.5 * (recon - flat).pow(2).sum(1) + kl).mean()

    @torch.no_grad()
    def sample(self, labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        z = self.noise(len(labels), generator)
        return self.restore(self.decoder(torch.cat([z, self.condition(labels)], 1)))


class ConditionalGAN(_Conditional):
    """Generator G(z, y) and discriminator D(x, y), trained with the non-saturating loss."""

    def __init__(self, spec: GeneratorSpec):
        super().__init__(spec)
        k, h, d = spec.num_classes, spec.hidden, spec.latent
        self.generator = _mlp([d + k, h, h, self.width], nn.LeakyReLU(0.2))
        self.discriminator = _mlp([self.width + k, h, h, 1], nn.LeakyReLU(0.2))

    def fake(self, labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        z = self.noise(len(labels), generator)
        return self.generator(torch.cat([z, self.condition(labels)], 1))

    def critic(self, flat: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.discriminator(torch.cat([flat, self.condition(labels)], 1)).squeeze(1)

    @torch.no_grad()
    def sample(self, labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self.restore(self.fake(labels, generator))


def build(spec: GeneratorSpec) -> _Conditional:
    if spec.kind not in KINDS:
        raise ValueError(f"kind: expected one of {KINDS}, got {spec.kind!r}")
    return (ConditionalVAE if spec.kind == "vae" else ConditionalGAN)(spec)


def fit(
    spec: GeneratorSpec,
    x: torch.Tensor,
    labels: torch.Tensor,
    *,
    epochs: int = 200,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
) -> _Conditional:
    """Train a generator in this process on (x, labels): small data, a few seconds on a CPU.
    Weights, batch order and noise all come from `seed`."""
    if len(x) < 2:
        raise ValueError(f"x: a generator needs at least 2 samples, got {len(x)}")
    if epochs < 1:
        raise ValueError(f"epochs: must be >= 1, got {epochs}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build(spec)
    model.set_scale(x.float())
    g = torch.Generator().manual_seed(seed)
    x, labels = x.float(), labels.long()
    if spec.kind == "vae":
        opt = torch.optim.Adam(model.parameters(), lr=lr)
    else:
        opt_g = torch.optim.Adam(model.generator.parameters(), lr=lr, betas=(0.5, 0.999))
        opt_d = torch.optim.Adam(model.discriminator.parameters(), lr=lr, betas=(0.5, 0.999))
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=g)
        for start in range(0, len(x), batch_size):
            b = order[start : start + batch_size]
            if spec.kind == "vae":
                loss = model.loss(x[b], labels[b], g)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            else:
                _gan_step(model, model.standardise(x[b]), labels[b], g, opt_g, opt_d)
    return model.eval()


def _gan_step(
    model: ConditionalGAN,
    real: torch.Tensor,
    labels: torch.Tensor,
    g: torch.Generator,
    opt_g,
    opt_d,
) -> None:
    ones, zeros = torch.ones(len(real)), torch.zeros(len(real))
    fake = model.fake(labels, g)
    d_loss = F.binary_cross_entropy_with_logits(
        model.critic(real, labels), ones
    ) + F.binary_cross_entropy_with_logits(model.critic(fake.detach(), labels), zeros)
    opt_d.zero_grad(set_to_none=True)
    d_loss.backward()
    opt_d.step()
    g_loss = F.binary_cross_entropy_with_logits(model.critic(fake, labels), ones)
    opt_g.zero_grad(set_to_none=True)
    g_loss.backward()
    opt_g.step()


def save(model: _Conditional, path: str | Path) -> None:
    """The spec and the weights, written to a temporary file and renamed into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"spec": asdict(model.spec), "state": model.state_dict()}, tmp)
    tmp.replace(path)


def load(path: str | Path) -> _Conditional:
    saved = torch.load(path, map_location="cpu", weights_only=True)
    spec = saved["spec"]
    model = build(GeneratorSpec(**{**spec, "x_shape": tuple(spec["x_shape"])}))
    model.load_state_dict(saved["state"])
    return model.eval()
