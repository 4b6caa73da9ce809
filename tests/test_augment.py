"""Single-sample transforms by hand on tiny tensors, and the offline augmentation operator."""

import numpy as np
import pytest
import torch

from raysift.operators.augment import (
    Brightness,
    Compose,
    Contrast,
    CropResize,
    Flip,
    GaussianNoise,
    Hue,
    IdScheme,
    RandomErasing,
    Rotate,
    Saturation,
    Shear,
    Translate,
    augment_dataset,
    one_hot,
    tag_real,
)
from raysift.operators.contract import ID, LABEL, DataError, X, from_columns


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


IMG = torch.arange(16.0).view(1, 1, 4, 4)


def test_flip_reverses_time_or_image_axes():
    sig = torch.tensor([[1.0, 2.0, 3.0]])
    assert Flip()(sig, gen()).tolist() == [[3.0, 2.0, 1.0]]
    assert Flip()(IMG, gen())[0, 0, 0].tolist() == [3.0, 2.0, 1.0, 0.0]
    assert Flip("vertical")(IMG, gen())[0, 0, :, 0].tolist() == [12.0, 8.0, 4.0, 0.0]
    with pytest.raises(ValueError, match="vertical"):
        Flip("vertical")(sig, gen())


def test_translation_by_whole_pixels_is_exact():
    right = Translate(x_fraction=(0.25, 0.25), y_fraction=(0.0, 0.0))(IMG, gen())
    expect = torch.tensor([[0, 0, 1, 2], [0, 4, 5, 6], [0, 8, 9, 10], [0, 12, 13, 14.0]])
    torch.testing.assert_close(right[0, 0], expect, atol=1e-6, rtol=0)
    up = Translate(x_fraction=(0.0, 0.0), y_fraction=(-0.5, -0.5))(IMG, gen())
    torch.testing.assert_close(up[0, 0, :2], IMG[0, 0, 2:], atol=1e-6, rtol=0)
    assert up[0, 0, 2:].abs().max() < 1e-6
    sig = torch.tensor([[[1.0, 2.0, 3.0, 4.0, 5.0]]])  # (N, C, L)
    later = Translate(x_fraction=(0.2, 0.2), padding="border")(sig, gen())
    torch.testing.assert_close(
        later, torch.tensor([[[1.0, 1.0, 2.0, 3.0, 4.0]]]), atol=1e-6, rtol=0
    )


def test_quarter_turn_and_identity_maps():
    turned = Rotate(degrees=(90, 90))(IMG, gen())
    torch.testing.assert_close(turned, torch.rot90(IMG, 1, dims=(-2, -1)), atol=1e-5, rtol=0)
    x = torch.rand(2, 3, 5, 6, generator=gen(1))
    torch.testing.assert_close(Shear(x_degrees=0, y_degrees=0)(x, gen()), x, atol=1e-6, rtol=0)
    torch.testing.assert_close(
        CropResize(scale=(1, 1), ratio=(1, 1))(x, gen()), x, atol=1e-6, rtol=0
    )
    with pytest.raises(ValueError, match="rotate: needs images"):
        Rotate()(torch.zeros(2, 1, 8), gen())


def test_crop_of_half_a_signal_stretches_it_twofold():
    sig = torch.tensor([[0.0, 2.0, 4.0, 6.0]])
    out = CropResize(scale=(0.5, 0.5))(sig, gen())
    # A window of two samples resampled to four: neighbouring outputs step by 2 * 0.5 = 1.
    assert torch.allclose(out[0, 2] - out[0, 1], torch.tensor(1.0), atol=1e-6)


def test_colour_transforms_by_hand():
    rgb = torch.eye(3).view(3, 3, 1, 1)  # pure red, green, blue pixels
    cycled = Hue(shift=(1 / 3, 1 / 3))(rgb, gen()).view(3, 3)
    torch.testing.assert_close(cycled, torch.eye(3).roll(1, dims=1), atol=1e-6, rtol=0)
    x = torch.tensor([[[1.0, 3.0]], [[0.5, 0.5]], [[2.0, 0.0]]]).permute(1, 0, 2)  # (1, 3, 2)
    grey = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    torch.testing.assert_close(Saturation(factor=(0, 0))(x, gen()), grey.unsqueeze(1).expand_as(x))
    sig = torch.tensor([[1.0, 3.0]])
    assert Brightness(factor=(2, 2))(sig, gen()).tolist() == [[2.0, 6.0]]
    assert Contrast(factor=(0.5, 0.5))(sig, gen()).tolist() == [[1.5, 2.5]]
    with pytest.raises(ValueError, match="hue: needs 3 channels"):
        Hue()(torch.zeros(2, 1, 4, 4), gen())


def test_random_erasing_blanks_one_box_of_the_asked_area():
    out = RandomErasing(scale=(0.25, 0.25), ratio=(1, 1))(torch.ones(8, 2, 4, 4), gen(3))
    for sample in out:
        assert torch.equal(sample[0], sample[1])  # every channel alike
        rows, cols = torch.nonzero(sample[0] == 0, as_tuple=True)
        assert len(rows) == 4 and rows.max() - rows.min() == 1 and cols.max() - cols.min() == 1
    sig = RandomErasing(scale=(0.4, 0.4))(torch.ones(8, 5), gen(3))
    for sample in sig:
        gap = torch.nonzero(sample == 0)[:, 0]
        assert len(gap) == 2 and gap[1] - gap[0] == 1


def test_noise_is_the_generators_normal_draws_scaled():
    x = torch.ones(3, 4)
    out = GaussianNoise(std=0.5)(x, gen(9))
    g = gen(9)
    torch.rand(3, generator=g)  # the per-sample std draw
    torch.testing.assert_close(out, x + 0.5 * torch.randn(3, 4, generator=g))


def test_compose_applies_each_step_to_a_seeded_subset():
    x = torch.arange(12.0).view(4, 3)
    assert torch.equal(Compose([(Flip(), 0.0)])(x, gen()), x)
    assert torch.equal(Compose([(Flip(), 1.0)])(x, gen()), x.flip(-1))
    out = Compose([(Flip(), 0.5)])(x, gen(2))
    flipped = [torch.equal(o, r.flip(-1)) for o, r in zip(out, x)]
    assert all(f or torch.equal(o, r) for f, o, r in zip(flipped, out, x))
    assert any(flipped) and not all(flipped)
    chain = Compose([(Flip(), 0.5), (Translate(0.2), 0.5), (GaussianNoise(0.1), 1.0)])
    imgs = torch.rand(6, 1, 4, 5, generator=gen(4))
    assert torch.equal(chain(imgs, gen(7)), chain(imgs, gen(7)))
    assert not torch.equal(chain(imgs, gen(7)), chain(imgs, gen(8)))
    with pytest.raises(ValueError, match=r"steps\[0\]: p must be in"):
        Compose([(Flip(), 1.5)])


def test_ranges_and_id_scheme_are_validated_by_name():
    with pytest.raises(ValueError, match="x_fraction"):
        Translate(x_fraction=(0.3, 0.1))
    with pytest.raises(ValueError, match="scale"):
        CropResize(scale=(0.0, 0.5))
    with pytest.raises(ValueError, match="offset"):
        IdScheme(offset=10, stride=100)
    assert IdScheme(offset=1000, stride=100).new_ids(np.array([3, 7]), 2).tolist() == [1203, 1207]
    with pytest.raises(DataError, match="id 100"):
        IdScheme(offset=1000, stride=100).new_ids(np.array([100]), 0)
    with pytest.raises(DataError, match="label 3 at id 12"):
        one_hot(np.array([0, 3]), 3, ids=np.array([10, 12]))


def test_offline_augmentation_rows_and_seeding(ray_session):
    n = 10
    ids = np.arange(n, dtype=np.int64) * 3  # not contiguous, to catch index/id mix-ups
    x = np.arange(n * 4, dtype=np.float32).reshape(n, 1, 4)
    ds = from_columns({ID: ids, LABEL: np.arange(n) % 3, X: x}, rows_per_block=4)
    scheme = IdScheme(offset=1000, stride=100)

    flipped = augment_dataset(ds, Flip(), seed=1, ids=scheme, copies=2, num_classes=3).take_all()
    assert len(flipped) == 2 * n
    by_id = {int(r[ID]): r for r in flipped}
    assert sorted(by_id) == sorted([1000 + c * 100 + i for c in range(2) for i in ids])
    for new_id, r in by_id.items():
        parent = (new_id - 1000) % 100
        assert list(r["parent_ids"]) == [parent] and r["source"] == "flip"
        k = parent // 3
        assert r[LABEL] == k % 3 and np.asarray(r["y_soft"]).tolist() == np.eye(3)[k % 3].tolist()
        assert np.asarray(r[X]).tolist() == x[k][:, ::-1].tolist()

    noisy = Compose([(GaussianNoise(0.1), 1.0), (Translate(0.2), 0.5)])
    first = augment_dataset(ds, noisy, seed=5, ids=scheme).take_all()
    again = augment_dataset(ds.repartition(1), noisy, seed=5, ids=scheme, batch_size=4).take_all()
    other = augment_dataset(ds, noisy, seed=6, ids=scheme).take_all()
    assert [r[ID] for r in first] == [r[ID] for r in again]
    assert all(np.array_equal(a[X], b[X]) for a, b in zip(first, again))
    assert not any(np.array_equal(a[X], b[X]) for a, b in zip(first, other))

    both = tag_real(ds, num_classes=3).union(
        augment_dataset(ds, Flip(), seed=1, ids=scheme, num_classes=3)
    )
    rows = both.take_all()
    assert len(rows) == 2 * n and len({int(r[ID]) for r in rows}) == 2 * n
    assert sorted(r["source"] for r in rows) == ["flip"] * n + ["real"] * n
    assert all(len(r["parent_ids"]) == 0 for r in rows if r["source"] == "real")
