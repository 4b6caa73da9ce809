"""mAP@0.5 of a detector: the PASCAL VOC average precision over a set of images.

One target class, so the mean over classes is the class's AP. Each image's detections are
taken best first; a detection is a true positive when its best-overlapping true box (IoU >=
`iou_threshold`) is not yet taken by a better one, else a false positive (a duplicate counts
as false). Over all images sorted by score, AP is the area under the precision-recall curve
with precision made non-increasing (VOC 2010's all-point rule).
"""

from __future__ import annotations

import numpy as np
import torch

from raysift.adapt.detector import decode
from raysift.operators.feedback import iou

EVAL_MIN_SCORE, EVAL_TOP_K, EVAL_NMS_IOU = 0.05, 100, 0.5


def average_precision(
    detections: list[tuple[np.ndarray, np.ndarray]],
    truths: list[np.ndarray],
    iou_threshold: float = 0.5,
) -> float:
    """AP of `detections` (per image: boxes (k, 4), scores (k,)) against `truths` (per image)."""
    if len(detections) != len(truths):
        raise ValueError(f"detections: {len(detections)} images, truths: {len(truths)}")
    n_true = sum(len(t) for t in truths)
    if n_true == 0:
        raise ValueError("truths: no true boxes, so precision and recall are undefined")
    scores, hits = [], []
    for (boxes, s), true in zip(detections, truths):
        order = np.argsort(-np.asarray(s), kind="stable")
        overlaps = iou(np.asarray(boxes)[order], true)
        taken = np.zeros(len(true), bool)
        for k, i in enumerate(order):
            j = int(np.argmax(overlaps[k])) if len(true) else -1
            hit = j >= 0 and overlaps[k, j] >= iou_threshold and not taken[j]
            if hit:
                taken[j] = True
            scores.append(s[i])
            hits.append(hit)
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    tp = np.cumsum(np.asarray(hits, np.float64)[order])
    precision = tp / np.arange(1, len(tp) + 1)
    recall = tp / n_true
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    return float(np.sum(np.diff(np.concatenate([[0.0], recall])) * envelope))


def predict(
    model: torch.nn.Module, x: np.ndarray, batch_size: int = 256, **decode_options
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The model's (boxes, scores) per image of `x`, in eval mode; `decode`'s options."""
    model.eval()
    out = []
    with torch.no_grad():
        for s in range(0, len(x), batch_size):
            out.extend(decode(model(torch.as_tensor(x[s : s + batch_size])), **decode_options))
    return out


def mean_ap(model: torch.nn.Module, x: np.ndarray, truths: list[np.ndarray]) -> float:
    """mAP@0.5 of `model` on images `x` with true boxes `truths` (NMS'd detections)."""
    detections = predict(model, x, min_score=EVAL_MIN_SCORE, top_k=EVAL_TOP_K, nms_iou=EVAL_NMS_IOU)
    return average_precision(detections, truths, 0.5)
