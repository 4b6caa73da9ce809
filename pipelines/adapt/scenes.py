"""Detection scenes made offline: digit glyphs pasted onto canvases, with their true boxes (M5).

The glyphs are scikit-learn's 8x8 digits (1,797 images, shipped with the package), scaled to a
drawn side length and alpha-blended onto a canvas at a free place (no two targets overlap).
A scene is a recipe: the canvas's background (a level plus sinusoidal stripes of a drawn
orientation and phase), the glyphs' size and brightness, pixel noise, and distractors: short
random strokes that are not targets, so a detector can raise a false alarm on them.

The general scene (`SceneConfig`'s defaults) is large bright digits on a dark, nearly flat
canvas; the new scene (`NewSceneConfig`) is smaller, dimmer digits on fine, strong stripes with
more noise and more strokes: a meta-model trained on the first misses many of the second's
digits and takes some strokes for digits (benchmarks/RESULTS.md has the figures).

Seeding: image `i` of split `split` draws everything from
`default_rng([derive_seed(seed, "scene", scene.name, split), i])`, so an image depends only on
(seed, scene name, split, i): any subset or order of indices gives the same images. Train and
test images use disjoint glyphs (the first and the last `TEST_GLYPHS` of the 1,797).

Boxes are (x1, y1, x2, y2) in pixels, edges on pixel boundaries: the tight box of the glyph's
pixels above `INK` of its peak (a glyph spanning columns 3..9 has x1 = 3, x2 = 10).
"""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from raysift.adapt.config import SceneConfig, check_scene
from raysift.seeding import derive_seed

TEST_GLYPHS = 400  # the last glyphs of load_digits(), kept for test images
INK = 0.25  # a glyph pixel belongs to the box when it is at least this share of the peak
PLACEMENT_TRIES = 50  # a glyph that finds no free place after these draws is left out


class Images(NamedTuple):
    x: np.ndarray  # (n, 1, canvas, canvas) float32 in [0, 1]
    boxes: list[np.ndarray]  # per image, (k, 4) float32 true boxes


@lru_cache(maxsize=1)
def _glyphs() -> np.ndarray:
    from sklearn.datasets import load_digits

    return (load_digits().images / 16.0).astype(np.float32)


def glyph_pool(split: str) -> np.ndarray:
    """The 8x8 glyphs a split draws from: train and test never share one."""
    if split not in ("train", "test"):
        raise ValueError(f"split: expected 'train' or 'test', got {split!r}")
    glyphs = _glyphs()
    return glyphs[:-TEST_GLYPHS] if split == "train" else glyphs[-TEST_GLYPHS:]


def _scaled(glyph: np.ndarray, side: int) -> np.ndarray:
    """An 8x8 glyph resized to side x side (bilinear), peak 1."""
    out = F.interpolate(
        torch.from_numpy(glyph)[None, None], size=(side, side), mode="bilinear", align_corners=False
    )[0, 0].numpy()
    return out / max(float(out.max()), 1e-6)


def _background(scene: SceneConfig, rng: np.random.Generator) -> np.ndarray:
    n = scene.canvas
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
    angle, phase = rng.uniform(0, np.pi), rng.uniform(0, 2 * np.pi)
    period = rng.uniform(*scene.period)
    wave = np.sin(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period + phase)
    return scene.background + scene.stripes * wave


def _stroke(canvas: np.ndarray, rng: np.random.Generator, scene: SceneConfig) -> None:
    """A polyline of two or three segments of about a glyph's size, blended in place."""
    n = scene.canvas
    points = [rng.uniform(0, n - 1, 2)]
    for _ in range(int(rng.integers(2, 4))):
        step = rng.uniform(scene.size[0] / 2, scene.size[1])
        angle = rng.uniform(0, 2 * np.pi)
        points.append(
            np.clip(points[-1] + step * np.array([np.cos(angle), np.sin(angle)]), 0, n - 1)
        )
    level = rng.uniform(*scene.stroke_brightness)
    for a, b in zip(points, points[1:]):
        t = np.linspace(0.0, 1.0, int(np.abs(b - a).max() * 2) + 2)[:, None]
        xy = np.rint(a + t * (b - a)).astype(int)
        canvas[xy[:, 1], xy[:, 0]] = level


def _free(box: np.ndarray, placed: list[np.ndarray]) -> bool:
    """No overlap, and one pixel apart, with every box placed so far."""
    return all(box[0] > p[2] or box[2] < p[0] or box[1] > p[3] or box[3] < p[1] for p in placed)


def render(
    scene: SceneConfig, glyphs: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """One image (canvas, canvas) and its true boxes (k, 4), from `rng` alone."""
    n = scene.canvas
    canvas = _background(scene, rng)
    boxes = []
    for _ in range(int(rng.integers(scene.targets[0], scene.targets[1] + 1))):
        side = int(rng.integers(scene.size[0], scene.size[1] + 1))
        alpha = _scaled(glyphs[int(rng.integers(len(glyphs)))], side)
        level = rng.uniform(*scene.brightness)
        rows, cols = np.nonzero(alpha >= INK)
        for _ in range(PLACEMENT_TRIES):
            top, left = (int(v) for v in rng.integers(0, n - side + 1, 2))
            box = np.array(
                [left + cols.min(), top + rows.min(), left + cols.max() + 1, top + rows.max() + 1],
                np.float32,
            )
            if _free(box, boxes):
                window = canvas[top : top + side, left : left + side]
                window[:] = window * (1 - alpha) + level * alpha
                boxes.append(box)
                break
    for _ in range(int(rng.integers(scene.strokes[0], scene.strokes[1] + 1))):
        _stroke(canvas, rng, scene)
    canvas = canvas + rng.normal(0.0, scene.noise, canvas.shape) if scene.noise else canvas
    return (
        np.clip(canvas, 0.0, 1.0).astype(np.float32),
        np.asarray(boxes, np.float32).reshape(-1, 4),
    )


def make_images(scene: SceneConfig, split: str, indices, seed: int) -> Images:
    """Images `indices` of the scene's `split` for `seed` (see the module docstring)."""
    check_scene(scene)
    glyphs = glyph_pool(split)
    base = derive_seed(seed, "scene", scene.name, split)
    xs, boxes = [], []
    for i in indices:
        image, b = render(scene, glyphs, np.random.default_rng([base, int(i)]))
        xs.append(image[None])
        boxes.append(b)
    x = np.stack(xs) if xs else np.zeros((0, 1, scene.canvas, scene.canvas), np.float32)
    return Images(x, boxes)
