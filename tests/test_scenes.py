"""The generated detection scenes: deterministic per seed and index, boxes that fit the ink."""

import dataclasses

import numpy as np
import pytest

from raysift.adapt.config import NewSceneConfig, SceneConfig, check_scene
from raysift.adapt.scenes import INK, TEST_GLYPHS, glyph_pool, make_images


def test_images_are_deterministic_for_a_seed_and_depend_on_the_index_only():
    scene = NewSceneConfig()
    a = make_images(scene, "train", [3, 7], seed=5)
    b = make_images(scene, "train", range(8), seed=5)
    np.testing.assert_array_equal(a.x, b.x[[3, 7]])
    for got, want in zip(a.boxes, [b.boxes[3], b.boxes[7]]):
        np.testing.assert_array_equal(got, want)
    for other in (
        make_images(scene, "train", [3], seed=6),
        make_images(scene, "test", [3], seed=5),
        make_images(SceneConfig(), "train", [3], seed=5),
    ):
        assert not np.array_equal(other.x[0], a.x[0])
    assert a.x.dtype == np.float32 and a.x.shape == (2, 1, 40, 40)
    assert 0.0 <= a.x.min() and a.x.max() <= 1.0


def test_boxes_are_tight_around_the_ink_and_never_overlap():
    # A black, noiseless canvas without strokes: every pixel is glyph ink.
    scene = dataclasses.replace(
        SceneConfig(),
        background=0.0,
        stripes=0.0,
        noise=0.0,
        strokes=[0, 0],
        brightness=[1.0, 1.0],
        targets=[2, 4],
    )
    images = make_images(scene, "train", range(20), seed=0)
    for image, boxes in zip(images.x[:, 0], images.boxes):
        assert 2 <= len(boxes) <= 4
        inked = np.zeros_like(image, bool)
        for x1, y1, x2, y2 in boxes.astype(int):
            region = image[y1:y2, x1:x2]
            # Tight: ink on all four edges of the box.
            assert (
                min(region[0].max(), region[-1].max(), region[:, 0].max(), region[:, -1].max())
                >= INK - 1e-6
            )
            assert not inked[y1:y2, x1:x2].any()  # no two boxes share a pixel
            inked[y1:y2, x1:x2] = True
        assert (image[~inked] < INK).all()  # no ink outside the boxes


def test_train_and_test_images_use_disjoint_glyphs():
    train, test = glyph_pool("train"), glyph_pool("test")
    assert len(test) == TEST_GLYPHS and len(train) + len(test) == 1797
    with pytest.raises(ValueError, match="split"):
        glyph_pool("val")


@pytest.mark.parametrize(
    "change, field",
    [
        ({"canvas": 8}, "canvas"),
        ({"size": [12, 8]}, "size"),
        ({"noise": 2.0}, "noise"),
        ({"targets": [0, 2]}, "targets"),
    ],
)
def test_a_bad_scene_names_the_field(change, field):
    with pytest.raises(ValueError, match=f"scene.{field}"):
        check_scene(dataclasses.replace(SceneConfig(), **change))
