"""The final phase's best weights, on a stub model whose weights are set by hand."""

import torch
from torch import nn

from raysift.training.best import BestWeights


def _model(value):
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(value)
    return model


def test_the_best_validation_is_kept_a_tie_keeps_the_earlier_and_the_copy_is_its_own():
    best, model = BestWeights(), _model(1.0)
    assert best.offer({"val_accuracy": 0.5}, model, "round 3")
    with torch.no_grad():
        model.weight.fill_(2.0)
    assert best.offer({"val_accuracy": 0.7, "val_loss": 0.3}, model, "final epoch 0")
    with torch.no_grad():
        model.weight.fill_(3.0)
    assert not best.offer({"val_accuracy": 0.7}, model, "final epoch 1")  # a tie
    assert not best.offer({"val_accuracy": 0.6}, model, "final epoch 2")
    assert best.label == "final epoch 0" and best.val == {"val_accuracy": 0.7, "val_loss": 0.3}
    best.restore(model)
    assert model.weight.item() == 2.0
    again = BestWeights()
    again.load_state_dict(best.state_dict())
    target = _model(0.0)
    again.restore(target)
    assert target.weight.item() == 2.0 and again.label == "final epoch 0"
