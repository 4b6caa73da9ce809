"""A small one-stage detector for one target class, in plain torch (M5's detector).

FCOS-like and anchor-free: a fully convolutional net maps a (1, H, W) image to a grid of cells
at stride 4; each cell predicts an objectness logit and its box as signed distances from the
cell's centre to the four sides (l, t, r, b), in strides. No anchors, no RoI stage, no
torchvision: it trains on two CPU cores in minutes on 40x40 canvases.

Training targets are dense, so an image and its target are two fixed-shape tensors that travel
through Ray Data, Parquet and the history library like a classifier's (x, label):
`encode_targets` turns boxes into a (TARGET_CHANNELS, G, G) map:
    0     objectness: 1 on the cells that own a box, else 0
    1..4  the owned box as (l, t, r, b) from the cell's centre, in strides (0 elsewhere)
    5     the weight of the cell's objectness loss: 1, or `negative_weight` on background cells
          whose centre lies in a negative box (a false alarm a person rejected)
A cell owns a box when its centre lies inside the box and within one stride of the box's
centre on each axis (about 3x3 cells for a 12-pixel glyph); the cell holding the box's centre
always owns it, so a box thinner than a stride still has a cell; where boxes compete, the
smaller box wins.

The loss of an image is (the focal loss of every cell's objectness, weighted + the L1 error of
the owning cells' boxes) / max(1, owning cells), and a batch's loss is the *sum* over images:
`transfer_step` scales it to the global batch's mean. `distillation` is the LwF-style term
against a teacher's outputs: the Bernoulli KL of the objectness plus the teacher-weighted L1 of
the boxes, zero when student and teacher agree.

`decode` gives every box scoring at least `min_score`, best first, before non-maximum
suppression unless `nms_iou` is given: the boxes under the confidence threshold are M5 step
2's candidates, so they must survive decoding.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from raysift.adapt.config import STRIDE
from raysift.operators.feedback import iou
from raysift.transfer.step import Task

TARGET_CHANNELS = 6
FOCAL_ALPHA, FOCAL_GAMMA = 0.25, 2.0  # RetinaNet's
PRIOR = 0.01  # the objectness a fresh head starts from (RetinaNet's bias init)
DETECTOR_FILE = "detector.pt"


def _block(c_in: int, c_out: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(),
    )


class TinyDetector(nn.Module):
    """Five 3x3 conv blocks (two of stride 2, the last dilated: a 33-pixel receptive field),
    then a 1x1 head of 5 channels: objectness and (l, t, r, b)."""

    def __init__(self, width: int = 32):
        super().__init__()
        if not isinstance(width, int) or width < 4:
            raise ValueError(f"width: must be an integer >= 4, got {width!r}")
        self.width = width
        w = width
        self.features = nn.Sequential(
            _block(1, w // 2),
            _block(w // 2, w, 2),
            _block(w, w, 2),
            _block(w, 3 * w // 2),
            _block(3 * w // 2, 3 * w // 2, dilation=2),
        )
        self.head = nn.Conv2d(3 * w // 2, 5, 1)
        nn.init.normal_(self.head.weight, std=0.01)
        nn.init.zeros_(self.head.bias)
        with torch.no_grad():
            self.head.bias[0] = float(np.log(PRIOR / (1 - PRIOR)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, H, W) -> (N, 5, H / 4, W / 4): objectness logit, then l, t, r, b."""
        return self.head(self.features(x))


def grid_size(canvas: int) -> int:
    if canvas % STRIDE:
        raise ValueError(f"canvas: {canvas} pixels is not a multiple of the stride {STRIDE}")
    return canvas // STRIDE


def _centres(g: int) -> np.ndarray:
    return (np.arange(g) + 0.5) * STRIDE


def encode_targets(
    boxes: np.ndarray,
    canvas: int,
    negatives: np.ndarray | None = None,
    negative_weight: float = 1.0,
) -> np.ndarray:
    """The dense training target (TARGET_CHANNELS, G, G) of one image (module docstring)."""
    g = grid_size(canvas)
    c = _centres(g)
    target = np.zeros((TARGET_CHANNELS, g, g), np.float32)
    target[5] = 1.0
    if negatives is not None and len(negatives):
        for x1, y1, x2, y2 in np.asarray(negatives, np.float64).reshape(-1, 4):
            inside = ((c[:, None] > y1) & (c[:, None] < y2)) & (
                (c[None, :] > x1) & (c[None, :] < x2)
            )
            target[5][inside] = negative_weight
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    for x1, y1, x2, y2 in boxes[np.argsort(-area, kind="stable")]:  # the smaller box wins
        bx, by = (x1 + x2) / 2, (y1 + y2) / 2
        own_x = (c > x1) & (c < x2) & (np.abs(c - bx) <= STRIDE)
        own_y = (c > y1) & (c < y2) & (np.abs(c - by) <= STRIDE)
        own_x[min(int(bx // STRIDE), g - 1)] = own_y[min(int(by // STRIDE), g - 1)] = True
        rows, cols = np.nonzero(own_y[:, None] & own_x[None, :])
        cx, cy = c[cols], c[rows]
        target[0, rows, cols] = 1.0
        target[1:5, rows, cols] = np.stack([cx - x1, cy - y1, x2 - cx, y2 - cy]) / STRIDE
        target[5, rows, cols] = 1.0
    return target


def focal_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Sigmoid focal loss per element (RetinaNet), for 0/1 targets."""
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p = torch.sigmoid(logits)
    p_t = p * targets + (1 - p) * (1 - targets)
    alpha = FOCAL_ALPHA * targets + (1 - FOCAL_ALPHA) * (1 - targets)
    return alpha * (1 - p_t) ** FOCAL_GAMMA * ce


def detection_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The summed loss of a batch: per image, (weighted focal + box L1) / max(1, owning cells)."""
    owned = targets[:, 0]
    cls = (focal_loss(outputs[:, 0], owned) * targets[:, 5]).flatten(1).sum(1)
    box = ((outputs[:, 1:5] - targets[:, 1:5]).abs().sum(1) * owned).flatten(1).sum(1)
    return ((cls + box) / owned.flatten(1).sum(1).clamp(min=1.0)).sum()


def distillation(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """The summed LwF term of a batch: per image, (objectness KL(teacher || student) + box L1
    weighted by the teacher's objectness) / max(1, the teacher's summed objectness)."""
    p_t = torch.sigmoid(teacher[:, 0])
    kl = F.binary_cross_entropy_with_logits(
        student[:, 0], p_t, reduction="none"
    ) - F.binary_cross_entropy_with_logits(teacher[:, 0], p_t, reduction="none")
    box = (student[:, 1:5] - teacher[:, 1:5]).abs().sum(1) * p_t
    return ((kl + box).flatten(1).sum(1) / p_t.flatten(1).sum(1).clamp(min=1.0)).sum()


DETECTOR = Task(detection_loss, distillation)  # what `transfer_step` trains for a detector


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy non-maximum suppression: indices kept, best score first."""
    order = np.argsort(-scores, kind="stable")
    keep = []
    while len(order):
        keep.append(int(order[0]))
        rest = order[1:]
        order = rest[iou(boxes[order[:1]], boxes[rest])[0] < iou_threshold]
    return np.asarray(keep, np.int64)


def decode(
    outputs: torch.Tensor, min_score: float = 0.05, top_k: int = 100, nms_iou: float | None = None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per image, (boxes (k, 4), scores (k,)): every cell scoring >= min_score, best first,
    at most top_k; with `nms_iou`, after non-maximum suppression at that IoU."""
    out = outputs.detach().float().cpu()
    g = out.shape[-1]
    c = torch.from_numpy(_centres(g)).float()
    cy, cx = torch.meshgrid(c, c, indexing="ij")
    d = out[:, 1:5] * STRIDE
    boxes = torch.stack([cx - d[:, 0], cy - d[:, 1], cx + d[:, 2], cy + d[:, 3]], 1)
    boxes = boxes.flatten(2).transpose(1, 2).numpy()  # (N, G*G, 4)
    scores = torch.sigmoid(out[:, 0]).flatten(1).numpy()
    result = []
    for b, s in zip(boxes, scores):
        keep = np.flatnonzero(s >= min_score)
        keep = keep[np.argsort(-s[keep], kind="stable")][:top_k]
        b, s = b[keep], s[keep]
        if nms_iou is not None:
            kept = nms(b, s, nms_iou)
            b, s = b[kept], s[kept]
        result.append((b.astype(np.float32), s.astype(np.float32)))
    return result


def head_gradients(model: TinyDetector, x: torch.Tensor, targets: torch.Tensor) -> np.ndarray:
    """Per image, the gradient of its loss w.r.t. the 1x1 head's weight and bias, flattened.

    The head is linear in the features h of every cell, so an image's gradient is
    sum over cells of dL/dz (outer) [h, 1]: one backward to the head's output for the whole
    batch (an image's loss depends on its own outputs only), no per-image backward.
    """
    with torch.no_grad():
        h = model.features(x)
    z = model.head(h).detach().requires_grad_(True)
    (dz,) = torch.autograd.grad(detection_loss(z, targets), z)
    h1 = torch.cat([h, torch.ones_like(h[:, :1])], 1)
    return torch.einsum("nkyx,nfyx->nkf", dz, h1).flatten(1).numpy()


def detector_gradient_fn(model: TinyDetector, batch_size: int = 512):
    """A `grad_fn(x, targets)` for `HistoryLibrary.update`: `head_gradients` in eval mode."""

    def grad_fn(x: np.ndarray, targets: np.ndarray) -> np.ndarray:
        model.eval()
        out = [
            head_gradients(
                model,
                torch.as_tensor(x[s : s + batch_size]),
                torch.as_tensor(targets[s : s + batch_size]),
            )
            for s in range(0, len(x), batch_size)
        ]
        return np.concatenate(out)

    return grad_fn


def save_detector(model: TinyDetector, folder: str | Path) -> Path:
    path = Path(folder) / DETECTOR_FILE
    torch.save({"model": model.state_dict(), "width": model.width}, path)
    return path


def load_detector(folder: str | Path) -> TinyDetector:
    """The detector `save_detector` wrote into `folder`, in eval mode."""
    state = torch.load(Path(folder) / DETECTOR_FILE, weights_only=True)
    model = TinyDetector(state["width"])
    model.load_state_dict(state["model"])
    return model.eval()
