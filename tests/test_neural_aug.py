"""Neural augmentation: partners of the same class, and one joint step lowering both losses."""

import torch
from torch import nn

from raysift.training.neural_aug import Augmenter, joint_losses, joint_step, same_class_partners


def test_partners_share_the_class_and_a_lone_sample_keeps_itself():
    labels = torch.tensor([0, 1, 0, 1, 1, 2])
    partner = same_class_partners(labels, torch.Generator().manual_seed(0))
    assert (labels[partner] == labels).all()
    assert (partner[:5] != torch.arange(5)).all() and partner[5] == 5


def test_one_joint_step_lowers_the_content_and_the_classification_loss():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    labels = torch.arange(8) % 2
    x = labels.float()[:, None, None] + 0.5 * torch.randn(8, 1, 6, generator=g)
    augmenter = Augmenter((1, 6), width=8)
    classifier = nn.Sequential(nn.Flatten(), nn.Linear(6, 2))
    params = [*augmenter.parameters(), *classifier.parameters()]
    optimizer = torch.optim.SGD(params, lr=0.05)
    before = joint_step(
        augmenter, classifier, optimizer, x, labels, torch.Generator().manual_seed(2)
    )
    partner = same_class_partners(labels, torch.Generator().manual_seed(2))
    with torch.no_grad():
        after = joint_losses(augmenter, classifier, x, x[partner], labels)
    assert after.content < before.content
    assert after.classification < before.classification
    assert Augmenter((6,))(x[:, 0], x[:, 0]).shape == (8, 6)  # (N, L) signals keep their shape
