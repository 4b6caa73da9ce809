"""A person's check of a detector's boxes, turned into training annotations (M5 steps 1-2).

Input rows (Parquet), one per image:
    image_id     any scalar type, passed through
    pred_boxes   list<list<float>>  the model's boxes (x1, y1, x2, y2), *including* those under
                                    the confidence threshold
    pred_scores  list<float>        one score in [0, 1] per predicted box
    true_boxes   list<list<float>>  the boxes the person verified

A prediction is confident when its score >= `conf_threshold`; two boxes match when their IoU
is at least `iou_threshold` (one threshold for matching and for candidates, so a box that counts
as a match also counts as a candidate). Per person box:
    correct  a confident prediction matches it. Its label: among the predictions *under* the
             confidence threshold that match it, the most confident one, the model's own best
             guess at the box, which teaches it to trust that guess. When there is none the
             person's box is the label (the fallback).
    missed   no confident prediction matches it. Its label is the person's box.
and per confident prediction that matches no person box:
    false    the box becomes a negative: a region to train as background.
Matching is many-to-many: a duplicate detection of a real target is not called false, so no
region is ever both a label and a negative.

Output rows, one per image (no image is dropped): image_id; category, the image's worst finding
(`missed` > `false` > `correct`, and `empty` when the person has no box and nothing confident
was predicted); label_boxes, the positive annotations; negative, the false boxes; and the counts
n_correct, n_missed, n_false.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import ray

from .contract import DataError, require_columns

IMAGE_ID, PRED_BOXES, PRED_SCORES = "image_id", "pred_boxes", "pred_scores"
TRUE_BOXES = "true_boxes"
INPUT_COLUMNS = [IMAGE_ID, PRED_BOXES, PRED_SCORES, TRUE_BOXES]
BOXES = pa.list_(pa.list_(pa.float32()))
INPUT_SCHEMA = pa.schema(
    [
        (IMAGE_ID, pa.int64()),
        (PRED_BOXES, BOXES),
        (PRED_SCORES, pa.list_(pa.float32())),
        (TRUE_BOXES, BOXES),
    ]
)
OUTPUT_TYPES = {
    "category": pa.string(),
    "label_boxes": BOXES,
    "negative": BOXES,
    "n_correct": pa.int32(),
    "n_missed": pa.int32(),
    "n_false": pa.int32(),
}
CATEGORIES = ("correct", "missed", "false", "empty")


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in `a` (n, 4) with every box in `b` (m, 4), as (n, m).

    Boxes are (x1, y1, x2, y2); touching boxes share no area and score 0, and so do two boxes
    of zero area.
    """
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    lo = np.maximum(a[:, None, :2], b[None, :, :2])
    hi = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(hi - lo, 0.0, None).prod(-1)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


@dataclass
class ImageReview:
    """What the check of one image yields."""

    category: str
    label_boxes: np.ndarray  # (k, 4): one per person box, in their order
    negative: np.ndarray  # (j, 4): the confident predictions matching no person box
    n_correct: int
    n_missed: int
    n_false: int


def review(
    pred_boxes: np.ndarray,
    pred_scores: np.ndarray,
    true_boxes: np.ndarray,
    conf_threshold: float,
    iou_threshold: float,
) -> ImageReview:
    """Categories and annotations of one image (the rules in the module docstring)."""
    pred = np.asarray(pred_boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(pred_scores, dtype=np.float64)
    true = np.asarray(true_boxes, dtype=np.float64).reshape(-1, 4)
    confident = scores >= conf_threshold
    match = iou(true, pred) >= iou_threshold  # (person boxes, predictions)
    found = (match & confident).any(1)
    false = confident & ~match.any(0)

    labels = true.copy()
    candidates = match & ~confident & found[:, None]
    has = candidates.any(1)
    if has.any():
        best = np.where(candidates, scores, -np.inf).argmax(1)  # ties: the first prediction
        labels[has] = pred[best[has]]

    n_correct, n_missed, n_false = int(found.sum()), int((~found).sum()), int(false.sum())
    category = "missed" if n_missed else "false" if n_false else "correct" if n_correct else "empty"
    return ImageReview(category, labels, pred[false], n_correct, n_missed, n_false)


def _boxes(values, column: str, image_id) -> np.ndarray:
    if values is None or any(b is None or len(b) != 4 or None in b for b in values):
        raise DataError(
            f"column '{column}': image_id {image_id!r} has a null or a box without "
            f"exactly 4 coordinates (x1, y1, x2, y2)"
        )
    boxes = np.asarray(values, dtype=np.float64).reshape(-1, 4)
    if not np.isfinite(boxes).all():
        raise DataError(f"column '{column}': image_id {image_id!r} has a NaN or inf coordinate")
    bad = (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])
    if bad.any():
        raise DataError(
            f"column '{column}': image_id {image_id!r} has box "
            f"{boxes[int(np.argmax(bad))].tolist()} with x2 < x1 or y2 < y1"
        )
    return boxes


def _scores(values, n_boxes: int, image_id) -> np.ndarray:
    if values is None or None in values:
        raise DataError(f"column '{PRED_SCORES}': image_id {image_id!r} has a null score")
    scores = np.asarray(values, dtype=np.float64)
    if len(scores) != n_boxes:
        raise DataError(
            f"column '{PRED_SCORES}': image_id {image_id!r} has {len(scores)} "
            f"scores for {n_boxes} boxes in '{PRED_BOXES}'"
        )
    bad = ~((scores >= 0) & (scores <= 1))
    if bad.any():
        raise DataError(
            f"column '{PRED_SCORES}': image_id {image_id!r} has score "
            f"{scores[int(np.argmax(bad))]} outside [0, 1]"
        )
    return scores


def check_thresholds(conf_threshold: float, iou_threshold: float) -> None:
    """Raise a ValueError naming a threshold outside its range."""
    if not 0.0 <= conf_threshold <= 1.0:
        raise ValueError(f"conf_threshold: must be in [0, 1], got {conf_threshold}")
    if not 0.0 < iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold: must be in (0, 1], got {iou_threshold}")


def annotate(batch: pa.Table, conf_threshold: float = 0.5, iou_threshold: float = 0.5) -> pa.Table:
    """map_batches function (pyarrow batches): one output row per input image."""
    check_thresholds(conf_threshold, iou_threshold)
    require_columns(batch.column_names, INPUT_COLUMNS, where="feedback input")
    rows = zip(
        batch[IMAGE_ID].to_pylist(),
        batch[PRED_BOXES].to_pylist(),
        batch[PRED_SCORES].to_pylist(),
        batch[TRUE_BOXES].to_pylist(),
    )
    out = {name: [] for name in OUTPUT_TYPES}
    for image_id, pred, scores, true in rows:
        pred = _boxes(pred, PRED_BOXES, image_id)
        scores = _scores(scores, len(pred), image_id)
        result = review(
            pred, scores, _boxes(true, TRUE_BOXES, image_id), conf_threshold, iou_threshold
        )
        for name in OUTPUT_TYPES:
            value = getattr(result, name)
            out[name].append(value.tolist() if isinstance(value, np.ndarray) else value)
    columns = {IMAGE_ID: batch[IMAGE_ID]}
    columns.update({name: pa.array(out[name], type=t) for name, t in OUTPUT_TYPES.items()})
    return pa.table(columns)


def feedback(
    ds: ray.data.Dataset, conf_threshold: float = 0.5, iou_threshold: float = 0.5
) -> ray.data.Dataset:
    """The lazy dataset of categories and annotations, one row per image of `ds`."""
    check_thresholds(conf_threshold, iou_threshold)
    return ds.map_batches(
        annotate,
        fn_kwargs={"conf_threshold": conf_threshold, "iou_threshold": iou_threshold},
        batch_format="pyarrow",
    )
