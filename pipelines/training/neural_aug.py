"""Neural augmentation (Perez and Wang 2017): a network that merges two samples of one class
into a new one, trained together with the classifier.

The augmenter sees the two samples stacked along the channels and outputs one sample of the
same shape. Each joint step minimises
    content_weight * mean squared distance of the new sample to the first one
  + class_weight * cross-entropy of the classifier on the new samples and the real ones,
so the augmenter learns samples that stay close to the data and help the classifier, and the
classifier trains on real and merged samples at once. The trained augmenter then serves as a
pair rule (`combine(first, second)`) for operators/pairs.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


class Augmenter(nn.Module):
    """Three convolutions (1-D for signals, 2-D for images) from 2C channels to C."""

    def __init__(self, x_shape: tuple, width: int = 16):
        super().__init__()
        self.x_shape = tuple(x_shape)
        if len(self.x_shape) not in (1, 2, 3):
            raise ValueError(f"x_shape: expected (L,), (C, L) or (C, H, W), got {self.x_shape}")
        conv = nn.Conv2d if len(self.x_shape) == 3 else nn.Conv1d
        c = 1 if len(self.x_shape) == 1 else self.x_shape[0]
        self.net = nn.Sequential(
            conv(2 * c, width, 3, padding=1),
            nn.ReLU(),
            conv(width, width, 3, padding=1),
            nn.ReLU(),
            conv(width, c, 3, padding=1),
        )

    def forward(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        flat = len(self.x_shape) == 1  # (N, L) signals get a channel axis and lose it again
        a, b = (first.unsqueeze(1), second.unsqueeze(1)) if flat else (first, second)
        out = self.net(torch.cat([a, b], dim=1))
        return out.squeeze(1) if flat else out


@dataclass
class JointLosses:
    content: torch.Tensor  # scalar
    classification: torch.Tensor  # scalar
    total: torch.Tensor  # the weighted sum that is backpropagated


def same_class_partners(labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """For each sample another sample of its class in the batch, drawn at random (itself when
    it is the only one)."""
    n = len(labels)
    scores = torch.rand(n, n, generator=generator)
    same = labels[:, None] == labels[None, :]
    same.fill_diagonal_(False)
    scores = torch.where(same, scores, torch.full_like(scores, -1.0))
    best = scores.argmax(1)
    return torch.where(same.any(1), best, torch.arange(n))


def joint_losses(
    augmenter: nn.Module,
    classifier: nn.Module,
    first: torch.Tensor,
    second: torch.Tensor,
    labels: torch.Tensor,
    content_weight: float = 1.0,
    class_weight: float = 1.0,
) -> JointLosses:
    new = augmenter(first, second)
    content = F.mse_loss(new, first)
    logits = classifier(torch.cat([new, first]))
    classification = F.cross_entropy(logits, torch.cat([labels, labels]))
    return JointLosses(
        content, classification, content_weight * content + class_weight * classification
    )


def joint_step(
    augmenter: nn.Module,
    classifier: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    labels: torch.Tensor,
    generator: torch.Generator,
    content_weight: float = 1.0,
    class_weight: float = 1.0,
) -> JointLosses:
    """One step of both networks on a batch, each sample paired with another of its class;
    `optimizer` holds the parameters of both. Returns the losses before the step."""
    partner = same_class_partners(labels, generator)
    losses = joint_losses(
        augmenter, classifier, x, x[partner], labels, content_weight, class_weight
    )
    optimizer.zero_grad(set_to_none=True)
    losses.total.backward()
    optimizer.step()
    return losses


class TrainedAugmenter:
    """A trained augmenter as a pair rule for operators/pairs.pair_dataset."""

    name = "neural"

    def __init__(self, augmenter: nn.Module):
        self.augmenter = augmenter.eval()

    def __call__(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.augmenter(first, second)
