"""Accuracy counted one way: hits and rows per class and the summed loss, by hand."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from raysift.training.evaluate import accuracy, array_batches, hit_sums, metrics

# The model is the identity: each row of x is its own logits.
X = np.array([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 3.0], [1.0, 0.0, 0.0]], np.float32)
Y = np.array([0, 2, 2, 1])  # right, wrong, right, wrong


def test_hits_rows_and_loss_per_class():
    sums = hit_sums(nn.Identity(), array_batches(X, Y, "cpu", batch_size=3), 3)
    loss = -sum(torch.log_softmax(torch.tensor(X), 1)[i, y] for i, y in enumerate(Y))
    assert sums[0] == pytest.approx(float(loss))
    assert sums[1:4].tolist() == [1, 0, 1]  # hits: class 0 once, class 2 once
    assert sums[4:].tolist() == [1, 1, 2]  # rows per class
    got = metrics(sums, "test")
    assert got["test_accuracy"] == 0.5
    assert got["test_balanced_accuracy"] == pytest.approx((1 + 0 + 0.5) / 3)
    assert got["test_loss"] == pytest.approx(float(loss) / 4)
    assert got["test_samples"] == 4


def test_a_rank_without_rows_still_agrees_on_the_length():
    assert hit_sums(nn.Identity(), [], num_classes=3).tolist() == [0.0] * 7
    assert accuracy(hit_sums(nn.Identity(), [], 3)) == 0.0
    assert math.isclose(metrics(hit_sums(nn.Identity(), [], 3), "val")["val_loss"], 0.0)
