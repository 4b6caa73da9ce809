"""Adversarial mixup (M3, the AMP rule): mix at hidden layer k, push the ratio uphill, train on it.

A model exposes `stages` (an nn.ModuleList) that its forward applies in order; the
representation at layer k is the input of stage k (k = 0: the model's input). The mix is done by
a forward pre-hook on stage k, so every pass runs the model's own forward. One training step
makes these passes over the batch:

1. probe, n_steps times: the unwrapped module with lam a leaf that requires grad;
   `torch.autograd.grad(loss, lam)` computes lam's gradient only. No parameter's AccumulateGrad
   node runs, so DDP's reducer hooks never fire, and DDP's forward is never entered, so its
   reducer never expects a backward for this pass.
2. check (with `keep_rose`): a no-grad pass at the perturbed ratio; a sample keeps the
   perturbed ratio only where its loss rose, else goes back to its original one.
3. train: the model as given (DDP's forward when wrapped, which prepares the reducer) at the
   final ratio. Its loss is the one returned and backpropagated, so gradients sync as in any
   DDP step.

Probe and check passes run on a forked RNG and restore the module's buffers afterwards: they
see the same dropout masks as the training pass, and BatchNorm statistics move once per step.
For independent samples (no batch statistics) the trained per-sample loss is therefore exactly
max(loss at the original ratio, loss at the perturbed ratio), the published rule, while only the
last forward is backpropagated.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from raysift.operators.mixup import (
    beta,
    check_smoothing,
    cycle_partners,
    smooth_labels,
    soft_cross_entropy,
)
from raysift.training.models import unwrap

TARGET_RATIOS = ("perturbed", "original")
ASCENTS = ("mean", "sample")


@dataclass
class AdvMixOutput:
    """What one adversarial-mixup step produced."""

    loss: torch.Tensor  # scalar mean of `losses`: call .backward() on it
    losses: torch.Tensor  # per-sample soft cross-entropy of the trained pass
    logits: torch.Tensor
    lam0: torch.Tensor  # the Beta(alpha, alpha) draws
    lam: torch.Tensor  # the ratio trained on
    partner: torch.Tensor  # the index each sample was mixed with
    rose: torch.Tensor | None  # where the perturbed loss rose; None without the check

    def stats(self) -> dict:
        """Mean |lam - lam0| and the share of samples whose loss rose (floats, for logs)."""
        out = {"lam_change": float((self.lam - self.lam0).abs().mean())}
        if self.rose is not None:
            out["rose_frac"] = float(self.rose.float().mean())
        return out


def _mixing_hook(lam: torch.Tensor, partner: torch.Tensor):
    def hook(module, args):
        h = args[0]
        w = lam.to(h.dtype).view(-1, *([1] * (h.dim() - 1)))
        return (w * h + (1 - w) * h[partner], *args[1:])

    return hook


def mixed_losses(
    model: nn.Module,
    stages: nn.ModuleList,
    x: torch.Tensor,
    y: torch.Tensor,
    partner: torch.Tensor,
    lam: torch.Tensor,
    target_lam: torch.Tensor,
    layer: int,
    smoothing: float = 0.0,
):
    """Per-sample soft cross-entropy and logits of `model(x)` with the input of stages[layer]
    mixed as lam * h + (1 - lam) * h[partner], against targets mixed with `target_lam`."""
    handle = stages[layer].register_forward_pre_hook(_mixing_hook(lam, partner))
    try:
        logits = model(x)
    finally:
        handle.remove()
    w = target_lam.to(y.dtype)[:, None]
    target = smooth_labels(w * y + (1 - w) * y[partner], smoothing)
    return soft_cross_entropy(logits, target, reduction="none"), logits


def _same_rng(device: torch.device):
    """A forked RNG: the pass inside sees the state the training pass will see."""
    if device.type == "cpu":
        return torch.random.fork_rng(devices=[])
    return torch.random.fork_rng(devices=[device], device_type=device.type)


@contextmanager
def _restored_buffers(module: nn.Module):
    saved = [b.detach().clone() for b in module.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, s in zip(module.buffers(), saved):
                b.copy_(s)


class AdversarialMixup:
    """Mixup at hidden layer `layer` whose ratio takes `n_steps` gradient-ascent steps of size
    `gamma` before the model trains on it (n_steps=0: plain mixup at that layer).

    `ascent='mean'` follows the published AMP code: the step is the gradient of the batch-mean
    loss, so each sample's step is its own loss's gradient divided by the batch size and shrinks
    as batches grow. `ascent='sample'` steps each ratio on its own sample's loss (the gradient
    of the summed loss): the step does not depend on the batch size. Exact when no layer after
    `layer` mixes samples (BatchNorm in training mode does, a little).

    The other defaults follow AMP too: one step, gamma=0.002, alpha=1, keep the perturbed
    ratio only where the loss rose, and mix the target with the perturbed ratio
    (`target_ratio='original'` keeps the drawn one). `max_change` bounds |lam - lam0| (the
    source's "controllable strength"); `clip` keeps lam in [0, 1] (our choice: on by default).
    """

    def __init__(
        self,
        layer: int = 0,
        alpha: float = 1.0,
        n_steps: int = 1,
        gamma: float = 0.002,
        max_change: float | None = None,
        clip: bool = True,
        keep_rose: bool = True,
        target_ratio: str = "perturbed",
        smoothing: float = 0.0,
        ascent: str = "mean",
    ):
        if layer < 0:
            raise ValueError(f"layer: must be >= 0, got {layer}")
        if not alpha > 0:
            raise ValueError(f"alpha: must be > 0, got {alpha}")
        if n_steps < 0:
            raise ValueError(f"n_steps: must be >= 0, got {n_steps}")
        if not gamma >= 0:
            raise ValueError(f"gamma: must be >= 0, got {gamma}")
        if max_change is not None and not max_change >= 0:
            raise ValueError(f"max_change: must be >= 0 or None, got {max_change}")
        if target_ratio not in TARGET_RATIOS:
            raise ValueError(f"target_ratio: expected one of {TARGET_RATIOS}, got {target_ratio!r}")
        if ascent not in ASCENTS:
            raise ValueError(f"ascent: expected one of {ASCENTS}, got {ascent!r}")
        check_smoothing(smoothing)
        self.layer, self.alpha, self.n_steps, self.gamma = layer, float(alpha), n_steps, gamma
        self.max_change, self.clip, self.keep_rose = max_change, clip, keep_rose
        self.target_ratio, self.smoothing, self.ascent = target_ratio, smoothing, ascent

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
    ) -> AdvMixOutput:
        """One step's loss on batch (x, y), y one-hot or soft (N, K); the generator draws the
        partners and lam0."""
        inner = unwrap(model)
        stages = getattr(inner, "stages", None)
        if not isinstance(stages, nn.ModuleList):
            raise ValueError("model: must expose `stages` (an nn.ModuleList applied in order)")
        if self.layer >= len(stages):
            raise ValueError(f"layer: must be < the model's {len(stages)} stages, got {self.layer}")
        if self.layer == 0 and not x.is_floating_point():
            raise ValueError(
                f"layer: 0 mixes the input, which is {x.dtype}; pick a layer after the embedding"
            )
        if not (y.dim() == 2 and y.is_floating_point() and len(y) == len(x)):
            raise ValueError(
                f"y: expected float one-hot or soft targets ({len(x)}, K), got "
                f"{y.dtype} of shape {tuple(y.shape)}"
            )
        partner = cycle_partners(len(x), generator).to(x.device)
        lam0 = beta(self.alpha, len(x), generator).to(x.device)
        lam, rose = self.perturb(inner, x, y, partner, lam0)
        losses, logits = mixed_losses(
            model, stages, x, y, partner, lam, self._target(lam, lam0), self.layer, self.smoothing
        )
        return AdvMixOutput(losses.mean(), losses, logits, lam0, lam, partner, rose)

    def _target(self, lam: torch.Tensor, lam0: torch.Tensor) -> torch.Tensor:
        return lam if self.target_ratio == "perturbed" else lam0

    def _bound(self, lam: torch.Tensor, lam0: torch.Tensor) -> torch.Tensor:
        if self.max_change is not None:
            lam = lam0 + (lam - lam0).clamp(-self.max_change, self.max_change)
        return lam.clamp(0, 1) if self.clip else lam

    def perturb(self, inner: nn.Module, x, y, partner, lam0):
        """(the ratio to train on, where the loss rose or None), from passes of the unwrapped
        module that leave no trace on it and make no parameter gradients."""
        if self.n_steps == 0:
            return lam0, None

        def losses_at(lam):
            with _same_rng(x.device):
                losses, _ = mixed_losses(
                    inner,
                    inner.stages,
                    x,
                    y,
                    partner,
                    lam,
                    self._target(lam, lam0),
                    self.layer,
                    self.smoothing,
                )
            return losses

        lam = lam0
        with _restored_buffers(inner):
            for step in range(self.n_steps):
                leaf = lam.detach().requires_grad_()
                losses = losses_at(leaf)
                if step == 0:
                    before = losses.detach()
                objective = losses.mean() if self.ascent == "mean" else losses.sum()
                (grad,) = torch.autograd.grad(objective, leaf)
                lam = self._bound(leaf.detach() + self.gamma * grad, lam0)
            if not self.keep_rose:
                return lam, None
            with torch.no_grad():
                after = losses_at(lam)
        rose = after > before
        return torch.where(rose, lam, lam0), rose
