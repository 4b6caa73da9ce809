"""Score a dataset with a trained model on a Ray Data actor pool (`raysift score`).

`Scorer` loads the model once per actor and adds `loss`, `correct`, `margin`, `pred` and,
optionally, `embedding`. `forward_scores` is the one forward pass behind it, which the training
workers also use to score their own pool rows (pipelines/selection/scan.py, M2 step 3).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import ray
import torch
import torch.nn.functional as F

from .contract import LABEL, X, features

SCORE_COLUMNS = ["loss", "correct", "margin", "pred"]


class Scorer:
    """map_batches callable: `model_factory()` builds the model once per actor.

    Returns the batch with the score columns added (the feature column only with
    `keep_features`); `x_shape` reshapes flat feature rows to the model's input. A batch without
    the label column is scored against the model's own prediction (see `score_logits`). The
    caller checks shapes and label ranges before it starts the pool (pipelines/batch/operator.py):
    an error raised here would surface only after the pool had started."""

    def __init__(
        self,
        model_factory: Callable[[], torch.nn.Module],
        with_embedding: bool = False,
        keep_features: bool = False,
        use_gpu: bool = False,
        threads: int = 1,
        column: str = X,
        label_column: str = LABEL,
        x_shape: tuple | None = None,
    ):
        torch.set_num_threads(threads)
        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        self.model = model_factory().to(self.device).eval()
        self.with_embedding = with_embedding
        self.keep_features = keep_features
        self.column, self.label_column = column, label_column
        self.x_shape = None if x_shape is None else tuple(x_shape)

    def __call__(self, batch: dict) -> dict:
        x = features(batch, self.column)
        if self.x_shape is not None:
            x = x.reshape(len(x), *self.x_shape)
        y = None
        if self.label_column in batch:
            y = torch.from_numpy(np.asarray(batch[self.label_column], dtype=np.int64))
            y = y.to(self.device)
        # torch wants arrays it may write to; Ray hands out read-only views.
        out = forward_scores(
            self.model, torch.from_numpy(np.array(x)).to(self.device), y, self.with_embedding
        )
        kept = {k: v for k, v in batch.items() if self.keep_features or k != self.column}
        return {**kept, **out}


def forward_scores(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor | None, with_embedding: bool = False
) -> dict:
    """`score_logits` of one batch as NumPy columns, and with `with_embedding` the input of
    the model's last stage (the logits for a model without `embed`)."""
    with torch.no_grad():
        if with_embedding and hasattr(model, "embed"):
            emb = model.embed(x)
            logits = model.stages[-1](emb)
        else:
            logits = emb = model(x)
        out = {k: v.cpu().numpy() for k, v in score_logits(logits, y).items()}
    if with_embedding:
        out["embedding"] = emb.flatten(1).float().cpu().numpy()
    return out


def score_logits(logits: torch.Tensor, labels: torch.Tensor | None) -> dict:
    """Per-sample loss, correctness, margin (p_label - best other p) and prediction.

    Without labels (an unlabelled pool) each row is scored against its prediction: `loss` is
    -log p(pred) and `margin` p(pred) - p(runner-up), the uncertainty an active-learning query
    ranks by, and there is no `correct`."""
    pred = logits.argmax(1)
    target = pred if labels is None else labels
    probs = logits.float().softmax(1)
    p_true = probs.gather(1, target[:, None])[:, 0]
    others = probs.scatter(1, target[:, None], -1.0)
    out = {
        "loss": F.cross_entropy(logits.float(), target, reduction="none"),
        "correct": pred == target,
        "margin": p_true - others.max(1).values,
        "pred": pred,
    }
    if labels is None:
        del out["correct"]
    return out


def score(
    ds: ray.data.Dataset,
    model_factory: Callable[[], torch.nn.Module],
    *,
    batch_size: int = 1024,
    num_actors: int = 1,
    use_gpu: bool = False,
    with_embedding: bool = False,
    keep_features: bool = False,
    column: str = X,
    label_column: str = LABEL,
    x_shape: tuple | None = None,
) -> ray.data.Dataset:
    """The lazy scored dataset (`Scorer`'s columns added); nothing runs until it is consumed."""
    return ds.map_batches(
        Scorer,
        fn_constructor_kwargs={
            "model_factory": model_factory,
            "with_embedding": with_embedding,
            "keep_features": keep_features,
            "use_gpu": use_gpu,
            "column": column,
            "label_column": label_column,
            "x_shape": x_shape,
        },
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=num_actors),
        num_gpus=1 if use_gpu else 0,
    )
