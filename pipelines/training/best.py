"""The final phase's best validation: keep the weights that validated best, ship those.

On the demo the final phase moved validation accuracy down (0.9906 after the last round to
0.9893 after ten more epochs on the final subset). With `train.final_keep_best` the model of
the last round and the model after every final epoch are candidates, and the one with the
highest validation accuracy (the earliest on a tie) is the one tested and shipped.
"""

from __future__ import annotations

import torch


class BestWeights:
    """A CPU copy of the weights with the highest validation accuracy offered so far."""

    def __init__(self):
        self.val: dict | None = None  # the best's validation metrics (val_accuracy, ...)
        self.label: str | None = None  # where it came from, e.g. "round 3" or "final epoch 2"
        self.weights: dict | None = None

    def offer(self, val: dict, model: torch.nn.Module, label: str) -> bool:
        """Keep `model`'s weights if `val["val_accuracy"]` beats the best so far."""
        if self.val is not None and val["val_accuracy"] <= self.val["val_accuracy"]:
            return False
        self.val, self.label = dict(val), label
        self.weights = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        return True

    def restore(self, model: torch.nn.Module) -> None:
        model.load_state_dict(self.weights)

    def state_dict(self) -> dict:
        return {"val": self.val, "label": self.label, "weights": self.weights}

    def load_state_dict(self, state: dict) -> None:
        self.val, self.label, self.weights = state["val"], state["label"], state["weights"]
