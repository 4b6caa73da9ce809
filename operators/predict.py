"""Score a pool with a trained model on a Ray Data actor pool (M2 step 3).

`Scorer` loads the model once per actor and adds `loss`, `correct`, `margin`, `pred` and,
optionally, `embedding`. `forward_scores` is the one forward pass behind it, which the training
workers also use to score their own pool rows (pipelines/scan.py).
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import ray
import torch
import torch.nn.functional as F

from .contract import ID, LABEL, X, features

SCORE_COLUMNS = ["loss", "correct", "margin", "pred"]


class Scorer:
    """map_batches callable: `model_factory()` builds the model once per actor."""

    def __init__(self, model_factory: Callable[[], torch.nn.Module], with_embedding: bool = False,
                 keep_features: bool = False, use_gpu: bool = False, threads: int = 1):
        torch.set_num_threads(threads)
        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        self.model = model_factory().to(self.device).eval()
        self.with_embedding = with_embedding
        self.keep_features = keep_features

    def __call__(self, batch: dict) -> dict:
        # Ray hands out read-only views; torch wants arrays it may write to.
        x = torch.from_numpy(np.array(features(batch))).to(self.device)
        y = torch.from_numpy(np.array(batch[LABEL], dtype=np.int64)).to(self.device)
        out = forward_scores(self.model, x, y, self.with_embedding)
        out[ID] = batch[ID]
        out[LABEL] = batch[LABEL]
        if self.keep_features:
            out[X] = batch[X]
        return out


def forward_scores(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                   with_embedding: bool = False) -> dict:
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


def score_logits(logits: torch.Tensor, labels: torch.Tensor) -> dict:
    """Per-sample loss, correctness, margin (p_label - best other p) and prediction."""
    probs = logits.float().softmax(1)
    p_true = probs.gather(1, labels[:, None])[:, 0]
    others = probs.scatter(1, labels[:, None], -1.0)
    pred = logits.argmax(1)
    return {
        "loss": F.cross_entropy(logits.float(), labels, reduction="none"),
        "correct": pred == labels,
        "margin": p_true - others.max(1).values,
        "pred": pred,
    }


def score(ds: ray.data.Dataset, model_factory: Callable[[], torch.nn.Module], *,
          batch_size: int = 1024, num_actors: int = 1, use_gpu: bool = False,
          with_embedding: bool = False, keep_features: bool = False) -> ray.data.Dataset:
    """The lazy scored dataset; nothing runs until it is consumed."""
    return ds.map_batches(
        Scorer,
        fn_constructor_kwargs={"model_factory": model_factory, "with_embedding": with_embedding,
                               "keep_features": keep_features, "use_gpu": use_gpu},
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=num_actors),
        num_gpus=1 if use_gpu else 0,
    )
