"""MoEx during training: exchange feature moments at the input of model stage k.

Like adversarial mixup (pipelines/training/advmix.py) it needs a model with `stages`; a forward
pre-hook on stage k swaps each sample's moments for its partner's, so the pass is the model's own
forward (DDP included) and the loss is the cross-entropy against lam * y + (1 - lam) * y[partner].
"""

from __future__ import annotations

import torch
from torch import nn

from raysift.operators.mixup import (
    check_smoothing,
    cycle_partners,
    smooth_labels,
    soft_cross_entropy,
)
from raysift.operators.moex import MOMENTS, check_lambda, exchange_moments, moex_targets
from raysift.training.models import unwrap


class MomentExchange:
    """MoEx at layer `layer` with target weight `lam` on the sample's own label (the paper's
    0.9) and moments over `over` ('channel': positional normalisation)."""

    def __init__(
        self, layer: int = 1, lam: float = 0.9, over: str = "channel", smoothing: float = 0.0
    ):
        if layer < 0:
            raise ValueError(f"layer: must be >= 0, got {layer}")
        if over not in MOMENTS:
            raise ValueError(f"over: expected one of {MOMENTS}, got {over!r}")
        self.layer, self.lam, self.over = layer, check_lambda(lam), over
        self.smoothing = check_smoothing(smoothing)

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        """The batch-mean loss on (x, y), y one-hot or soft (N, K); the generator draws the
        partners."""
        stages = getattr(unwrap(model), "stages", None)
        if not isinstance(stages, nn.ModuleList) or self.layer >= len(stages):
            raise ValueError(f"layer: the model needs more than {self.layer} `stages`")
        partner = cycle_partners(len(x), generator).to(x.device)

        def hook(module, args):
            return (exchange_moments(args[0], partner, self.over), *args[1:])

        handle = stages[self.layer].register_forward_pre_hook(hook)
        try:
            logits = model(x)
        finally:
            handle.remove()
        target = smooth_labels(moex_targets(y, partner, self.lam), self.smoothing)
        return soft_cross_entropy(logits, target)
