"""Class-conditional generators for 1-D signals and small images: a VAE and a GAN (M4).

Both are small MLPs on the flattened sample, conditioned on the one-hot label, and work in the
training split's standardised space (per-feature mean and std kept as buffers), so one model
suits signals, pixels in [0, 1] and standardised features alike. `sample(labels, generator)`
draws new samples of the given classes in the data's own scale; everything random comes from
explicit generators, so the same seed trains the same model and draws the same rows.

`fit_share` trains on a `Share` (pipelines/data/share.py): the rows of this process, held
under a memory budget, or under Ray Train each worker's rows, the networks wrapped in torch's
DDP and the standardisation summed over the workers, so no process needs the whole split.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from raysift.data.share import Share
from raysift.seeding import derive_seed
from raysift.training.collective import all_sum_np, gather, grouped, rank_and_world

KINDS = ("vae", "gan")
_SCALE_ROWS = 4096  # rows read at a time while the standardisation is summed


@dataclass
class GeneratorSpec:
    """What a generator is: enough to rebuild it from its saved weights."""

    kind: str  # vae | gan
    x_shape: tuple
    num_classes: int
    latent: int = 16
    hidden: int = 256

    @classmethod
    def from_dict(cls, d: dict) -> "GeneratorSpec":
        """Back from `asdict` (a saved file, a Ray Train config): x_shape a tuple again."""
        return cls(**{**d, "x_shape": tuple(d["x_shape"])})


def _mlp(sizes: list[int], act: nn.Module) -> nn.Sequential:
    layers = []
    for a, b in zip(sizes, sizes[1:]):
        layers += [nn.Linear(a, b), act]
    return nn.Sequential(*layers[:-1])  # no activation after the last layer


class _Conditional(nn.Module):
    """Standardisation buffers and the one-hot condition that both generators share."""

    NETWORKS: tuple[str, ...] = ()  # the trained submodules, each its own DDP under Ray Train

    def __init__(self, spec: GeneratorSpec):
        super().__init__()
        self.spec = spec
        self.width = math.prod(spec.x_shape)
        self.register_buffer("mean", torch.zeros(self.width))
        self.register_buffer("std", torch.ones(self.width))

    def set_scale(self, sums: np.ndarray) -> None:
        """From [count, sum of each feature..., sum of its square...] (float64, `moments`)."""
        n, total, squares = sums[0], sums[1 : 1 + self.width], sums[1 + self.width :]
        mean = total / n
        std = np.sqrt(np.maximum(squares / n - mean**2, 0.0))
        self.mean.copy_(torch.from_numpy(mean))
        self.std.copy_(torch.from_numpy(std).clamp_min(1e-3))

    def standardise(self, x: torch.Tensor) -> torch.Tensor:
        return (x.reshape(len(x), -1) - self.mean) / self.std

    def restore(self, flat: torch.Tensor) -> torch.Tensor:
        return (flat * self.std + self.mean).reshape(len(flat), *self.spec.x_shape)

    def condition(self, labels: torch.Tensor) -> torch.Tensor:
        return F.one_hot(labels.long(), self.spec.num_classes).float()

    def noise(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randn(n, self.spec.latent, generator=generator).to(self.mean.device)


class ConditionalVAE(_Conditional):
    """Encoder q(z | x, y), decoder p(x | z, y) with a unit-variance Gaussian likelihood in the
    standardised space; loss = squared error + KL to N(0, I), per sample."""

    NETWORKS = ("encoder", "decoder")

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

    def optimizers(self, lr: float) -> list:
        return [torch.optim.Adam(self.parameters(), lr=lr)]

    def train_step(self, x, labels, g: torch.Generator, opts: list) -> None:
        loss = self.loss(x, labels, g)
        opts[0].zero_grad(set_to_none=True)
        loss.backward()
        opts[0].step()

    @torch.no_grad()
    def sample(self, labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        z = self.noise(len(labels), generator)
        return self.restore(self.decoder(torch.cat([z, self.condition(labels)], 1)))


class ConditionalGAN(_Conditional):
    """Generator G(z, y) and discriminator D(x, y), trained with the non-saturating loss."""

    NETWORKS = ("generator", "discriminator")

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

    def optimizers(self, lr: float) -> list:
        """The generator's and the discriminator's Adam, with the GAN betas."""
        return [
            torch.optim.Adam(getattr(self, name).parameters(), lr=lr, betas=(0.5, 0.999))
            for name in self.NETWORKS
        ]

    def train_step(self, x, labels, g: torch.Generator, opts: list) -> None:
        """One discriminator and one generator step. The critic sees the real and the fake
        rows in one pass (one DDP forward per backward): twice the mean over both halves is
        the sum of the two halves' means."""
        opt_g, opt_d = opts
        real = self.standardise(x)
        ones = torch.ones_like(labels, dtype=real.dtype)
        zeros = torch.zeros_like(labels, dtype=real.dtype)
        fake = self.fake(labels, g)
        both = self.critic(torch.cat([real, fake.detach()]), torch.cat([labels, labels]))
        d_loss = 2 * F.binary_cross_entropy_with_logits(both, torch.cat([ones, zeros]))
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()
        g_loss = F.binary_cross_entropy_with_logits(self.critic(fake, labels), ones)
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()


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
    """Train a generator in this process on (x, labels) held in memory (tests, benchmarks)."""
    share = Share.from_arrays(np.arange(len(x)), labels.numpy(), x.float().numpy())
    return fit_share(spec, share, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed)


def fit_share(
    spec: GeneratorSpec,
    share: Share,
    *,
    epochs: int = 200,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> _Conditional:
    """Train a generator on `share`: this process's rows, or in a process group (Ray Train)
    this rank's, each step `batch_size` rows over all ranks and the gradients averaged by DDP.
    Ranks take equal steps: each walks a seeded permutation of its rows, wrapped around to the
    longest rank's length. Weights, batch order and noise all come from `seed`."""
    rank, world = rank_and_world()
    sizes = gather(len(share))
    if sum(sizes) < 2 or not min(sizes):
        raise ValueError(
            f"x: a generator needs at least 2 samples, and one on every worker; got {sizes} "
            f"on {world} worker(s)"
        )
    if epochs < 1:
        raise ValueError(f"epochs: must be >= 1, got {epochs}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build(spec)
    model.set_scale(all_sum_np(moments(share, model.width)))
    model.to(device).train()
    g = torch.Generator().manual_seed(derive_seed(seed, "noise", rank))
    b = max(1, batch_size // world)
    length = max(sizes)
    opts = model.optimizers(lr)
    with _data_parallel(model):
        for epoch in range(epochs):
            order = np.random.default_rng(derive_seed(seed, "order", epoch, rank))
            perm = order.permutation(len(share))
            for start in range(0, length, b):
                at = perm[np.arange(start, min(start + b, length)) % len(perm)]
                x = torch.from_numpy(share.features(at)).to(device)
                y = torch.from_numpy(share.labels[at]).to(device)
                model.train_step(x, y, g, opts)
    return model.eval()


def moments(share: Share, width: int) -> np.ndarray:
    """[count, per-feature sum..., per-feature sum of squares...] of a share's rows of `width`
    features, float64: the standardisation's statistics, summed over ranks as they are."""
    total, squares = np.zeros(width), np.zeros(width)
    for start in range(0, len(share), _SCALE_ROWS):
        flat = share.features(np.arange(start, min(start + _SCALE_ROWS, len(share))))
        flat = flat.reshape(len(flat), width).astype(np.float64)
        total += flat.sum(0)
        squares += (flat**2).sum(0)
    return np.concatenate([[len(share)], total, squares])


@contextmanager
def _data_parallel(model: _Conditional):
    """Within the block, each of the model's networks is a DDP module when a process group is
    up (Ray Train); after it, the plain networks again, so the saved weights keep their names."""
    if not grouped():
        yield
        return
    plain = {name: getattr(model, name) for name in model.NETWORKS}
    for name, net in plain.items():
        setattr(model, name, DistributedDataParallel(net))
    try:
        yield
    finally:
        for name, net in plain.items():
            setattr(model, name, net)


def save(model: _Conditional, path: str | Path) -> None:
    """The spec and the weights, written to a temporary file and renamed into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"spec": asdict(model.spec), "state": model.state_dict()}, tmp)
    tmp.replace(path)


def load(path: str | Path) -> _Conditional:
    saved = torch.load(path, map_location="cpu", weights_only=True)
    model = build(GeneratorSpec.from_dict(saved["spec"]))
    model.load_state_dict(saved["state"])
    return model.eval()
