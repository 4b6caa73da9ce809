"""Single-sample augmentations: one batched, seeded torch implementation per transform.

Each transform is a callable `t(x, generator) -> x` vectorised over the batch: every sample gets
its own random parameters, drawn from the `torch.Generator` on the generator's device and then
moved to the data's, so one seed gives the same batch on CPU and GPU. Inputs are 1-D signals
(N, L) or (N, C, L) and images (N, C, H, W). The geometric transforms resample through
affine_grid/grid_sample, a signal being an image one pixel high. Values are never clipped:
features may be standardised rather than in [0, 1].

`augment_dataset` runs the same transforms as a Ray Data job that writes augmented rows;
`IdScheme`, `block_generator`, `rows_table` and `tag_real` are the provenance pieces it shares
with the mixing operators in mixup.py.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F

from .contract import ID, LABEL, DataError, X, check_finite, features, require_columns

PADDING_MODES = ("zeros", "border", "reflection")
LUMA = (0.299, 0.587, 0.114)


def spatial_dims(x: torch.Tensor) -> int:
    """1 for signals (N, L) or (N, C, L), 2 for images (N, C, H, W)."""
    if not x.is_floating_point():
        raise ValueError(f"x: augmentations need floating point features, got {x.dtype}")
    if x.dim() in (2, 3):
        return 1
    if x.dim() == 4:
        return 2
    raise ValueError(f"x: expected (N, L), (N, C, L) or (N, C, H, W), got shape {tuple(x.shape)}")


def span(value, name: str, centre: float = 0.0) -> tuple[float, float]:
    """A (low, high) range: a half-width around `centre`, or an explicit pair."""
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError(f"{name}: a half-width must be >= 0, got {value}")
        return centre - float(value), centre + float(value)
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(
            f"{name}: expected a number or a (low, high) pair, got {value!r}"
        ) from None
    if low > high:
        raise ValueError(f"{name}: low {low} is above high {high}")
    return low, high


def uniform(
    n: int, bounds: tuple[float, float], generator: torch.Generator, like: torch.Tensor
) -> torch.Tensor:
    """n draws from U[low, high) made on the generator's device, returned on `like`'s."""
    low, high = bounds
    u = torch.rand(n, generator=generator, device=generator.device)
    return (low + (high - low) * u).to(device=like.device, dtype=like.dtype)


def per_sample(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Shape (N,) values so that they broadcast over the rest of x."""
    return v.view(-1, *([1] * (x.dim() - 1)))


def channels(x: torch.Tensor) -> int:
    """Channel count; a (N, L) signal has one implicit channel."""
    return 1 if x.dim() == 2 else x.shape[1]


def affine(x: torch.Tensor, theta: torch.Tensor, padding: str = "zeros") -> torch.Tensor:
    """Resample each sample through its (2, 3) map from output to input coordinates.

    Coordinates are normalised to [-1, 1] with align_corners=False, so a shift of 2/W is one
    pixel. Signals are resampled as images of height one; their theta's second row is [0, 1, 0].
    """
    dims = spatial_dims(x)
    img = x.reshape(len(x), channels(x), 1, x.shape[-1]) if dims == 1 else x
    grid = F.affine_grid(theta.to(img.dtype), list(img.shape), align_corners=False)
    out = F.grid_sample(img, grid, mode="bilinear", padding_mode=padding, align_corners=False)
    return out.reshape(x.shape)


def theta_from(a, b, c, d, e, f) -> torch.Tensor:
    """(N, 2, 3) maps [[a, b, c], [d, e, f]] from per-sample (N,) entries."""
    return torch.stack([a, b, c, d, e, f], dim=1).view(-1, 2, 3)


def box_mask(shape: tuple[int, ...], start: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
    """(N, *shape) bool masks, True inside each sample's box [start, start + size) per axis."""
    n, d = start.shape
    mask = torch.ones((n, *shape), dtype=torch.bool, device=start.device)
    for j, length in enumerate(shape):
        pos = torch.arange(length, device=start.device)
        inside = (pos >= start[:, j : j + 1]) & (pos < (start[:, j] + size[:, j])[:, None])
        view = [n] + [1] * d
        view[1 + j] = length
        mask = mask & inside.view(view)
    return mask


def masked_fill_boxes(x: torch.Tensor, mask: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """x with `values` (broadcastable to x) wherever the spatial `mask` is True, in all channels."""
    m = mask.unsqueeze(1) if x.dim() == mask.dim() + 1 else mask
    return torch.where(m, values, x)


class Flip:
    """Mirror every sample: 'horizontal' reverses the last axis (time for signals), 'vertical'
    the image rows. Deterministic: Compose's probability decides which samples flip."""

    name = "flip"

    def __init__(self, axis: str = "horizontal"):
        if axis not in ("horizontal", "vertical"):
            raise ValueError(f"axis: expected 'horizontal' or 'vertical', got {axis!r}")
        self.axis = axis

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        dims = spatial_dims(x)
        if self.axis == "vertical":
            if dims != 2:
                raise ValueError(
                    f"flip: axis 'vertical' needs images (N, C, H, W), got {tuple(x.shape)}"
                )
            return x.flip(-2)
        return x.flip(-1)


class _Geometric:
    """A transform that is one affine resampling per sample; subclasses give `theta`."""

    name = "geometric"
    images_only = False

    def __init__(self, padding: str):
        if padding not in PADDING_MODES:
            raise ValueError(f"padding: expected one of {PADDING_MODES}, got {padding!r}")
        self.padding = padding

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        dims = spatial_dims(x)
        if self.images_only and dims != 2:
            raise ValueError(f"{self.name}: needs images (N, C, H, W), got shape {tuple(x.shape)}")
        return affine(x, self.theta(x, dims, generator), self.padding)


class Rotate(_Geometric):
    """Rotate images by an angle in degrees drawn per sample, counter-clockwise as displayed;
    the rotation is in pixel space, so non-square images are not distorted."""

    name = "rotate"
    images_only = True

    def __init__(self, degrees=15.0, padding: str = "zeros"):
        super().__init__(padding)
        self.degrees = span(degrees, "degrees")

    def theta(self, x, dims, generator):
        h, w = x.shape[-2:]
        a = uniform(len(x), self.degrees, generator, x) * (math.pi / 180)
        zero = torch.zeros_like(a)
        return theta_from(a.cos(), -a.sin() * h / w, zero, a.sin() * w / h, a.cos(), zero)


class Shear(_Geometric):
    """Shear images along x and y by angles in degrees drawn per sample."""

    name = "shear"
    images_only = True

    def __init__(self, x_degrees=10.0, y_degrees=0.0, padding: str = "zeros"):
        super().__init__(padding)
        self.x_degrees = span(x_degrees, "x_degrees")
        self.y_degrees = span(y_degrees, "y_degrees")

    def theta(self, x, dims, generator):
        h, w = x.shape[-2:]
        sx = torch.tan(uniform(len(x), self.x_degrees, generator, x) * (math.pi / 180))
        sy = torch.tan(uniform(len(x), self.y_degrees, generator, x) * (math.pi / 180))
        one, zero = torch.ones_like(sx), torch.zeros_like(sx)
        return theta_from(one, sx * h / w, zero, sy * w / h, one, zero)


class Translate(_Geometric):
    """Shift content by a fraction of the width (x) and height (y) drawn per sample; a positive
    x moves it right (later in time), a positive y down. Signals use x only."""

    name = "translate"

    def __init__(self, x_fraction=0.1, y_fraction=0.1, padding: str = "zeros"):
        super().__init__(padding)
        self.x_fraction = span(x_fraction, "x_fraction")
        self.y_fraction = span(y_fraction, "y_fraction")

    def theta(self, x, dims, generator):
        tx = uniform(len(x), self.x_fraction, generator, x)
        ty = uniform(len(x), self.y_fraction, generator, x) if dims == 2 else torch.zeros_like(tx)
        one, zero = torch.ones_like(tx), torch.zeros_like(tx)
        return theta_from(one, zero, -2 * tx, zero, one, -2 * ty)


def box_spans(scale, ratio) -> tuple:
    """Validated (scale, ratio) ranges of a random box: area share in (0, 1], aspect > 0."""
    scale, ratio = span(scale, "scale"), span(ratio, "ratio")
    if not 0 < scale[0] <= scale[1] <= 1:
        raise ValueError(f"scale: expected 0 < low <= high <= 1, got {scale}")
    if ratio[0] <= 0:
        raise ValueError(f"ratio: must be > 0, got {ratio}")
    return scale, ratio


class CropResize(_Geometric):
    """Crop a random region holding `scale` of the area (of the length, for signals) with aspect
    ratio in `ratio` (images), and resize it back to the full size."""

    name = "crop_resize"

    def __init__(self, scale=(0.5, 1.0), ratio=(3 / 4, 4 / 3), padding: str = "zeros"):
        super().__init__(padding)
        self.scale, self.ratio = box_spans(scale, ratio)

    def theta(self, x, dims, generator):
        n = len(x)
        s = uniform(n, self.scale, generator, x)
        if dims == 2:
            log_r = uniform(n, (math.log(self.ratio[0]), math.log(self.ratio[1])), generator, x)
            cw = (s * log_r.exp()).sqrt().clamp(max=1)
            ch = (s / log_r.exp()).sqrt().clamp(max=1)
        else:
            cw, ch = s, torch.ones_like(s)
        cx = uniform(n, (-1.0, 1.0), generator, x) * (1 - cw)
        cy = uniform(n, (-1.0, 1.0), generator, x) * (1 - ch) if dims == 2 else torch.zeros_like(s)
        zero = torch.zeros_like(s)
        return theta_from(cw, zero, cx, zero, ch, cy)


def grey(x: torch.Tensor) -> torch.Tensor:
    """Per-pixel luminance (N, 1, ...) of 3-channel data."""
    w = torch.tensor(LUMA, dtype=x.dtype, device=x.device).view(1, 3, *([1] * (x.dim() - 2)))
    return (x * w).sum(1, keepdim=True)


def _need_rgb(x: torch.Tensor, name: str) -> None:
    spatial_dims(x)
    if x.dim() < 3 or x.shape[1] != 3:
        raise ValueError(f"{name}: needs 3 channels (N, 3, ...), got shape {tuple(x.shape)}")


class Brightness:
    """Scale every value by a factor drawn per sample."""

    name = "brightness"

    def __init__(self, factor=(0.8, 1.2)):
        self.factor = span(factor, "factor")

    def __call__(self, x, generator):
        spatial_dims(x)
        return x * per_sample(uniform(len(x), self.factor, generator, x), x)


class Contrast:
    """Stretch values away from the sample's mean (of the luminance, for 3 channels) by a
    factor drawn per sample."""

    name = "contrast"

    def __init__(self, factor=(0.8, 1.2)):
        self.factor = span(factor, "factor")

    def __call__(self, x, generator):
        spatial_dims(x)
        ref = grey(x) if channels(x) == 3 else x
        mean = per_sample(ref.reshape(len(x), -1).mean(1), x)
        return mean + per_sample(uniform(len(x), self.factor, generator, x), x) * (x - mean)


class Saturation:
    """Move each pixel away from its own grey value by a factor drawn per sample (3 channels)."""

    name = "saturation"

    def __init__(self, factor=(0.8, 1.2)):
        self.factor = span(factor, "factor")

    def __call__(self, x, generator):
        _need_rgb(x, self.name)
        g = grey(x)
        return g + per_sample(uniform(len(x), self.factor, generator, x), x) * (x - g)


class Hue:
    """Rotate colours about the grey axis (1, 1, 1) by a fraction of a turn drawn per sample
    (3 channels). The channel mean is kept; a third of a turn cycles R -> G -> B."""

    name = "hue"

    def __init__(self, shift=0.05):
        self.shift = span(shift, "shift")

    def __call__(self, x, generator):
        _need_rgb(x, self.name)
        a = uniform(len(x), self.shift, generator, x) * (2 * math.pi)
        cos, sin = a.cos()[:, None, None], a.sin()[:, None, None]
        eye = torch.eye(3, dtype=x.dtype, device=x.device)
        k = torch.full((3, 3), 1 / 3, dtype=x.dtype, device=x.device)  # projection on the grey axis
        cross = torch.tensor(
            [[0, -1, 1], [1, 0, -1], [-1, 1, 0]], dtype=x.dtype, device=x.device
        ) / math.sqrt(3)
        rot = cos * eye + sin * cross + (1 - cos) * k  # Rodrigues' formula, (N, 3, 3)
        return torch.einsum("nij,nj...->ni...", rot, x)


class RandomErasing:
    """Overwrite one box per sample with `value`: `scale` of the area (of the length, for
    signals), aspect ratio in `ratio` (images), placed wholly inside the sample."""

    name = "erase"

    def __init__(self, scale=(0.02, 0.33), ratio=(0.3, 3.3), value: float = 0.0):
        self.scale, self.ratio = box_spans(scale, ratio)
        self.value = float(value)

    def __call__(self, x, generator):
        dims = spatial_dims(x)
        shape = tuple(x.shape[-dims:])
        f32 = torch.empty(0, device=x.device)
        s = uniform(len(x), self.scale, generator, f32) * math.prod(shape)
        if dims == 2:
            log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
            r = uniform(len(x), log_ratio, generator, f32).exp()
            sizes = [(s * r).sqrt(), (s / r).sqrt()]
        else:
            sizes = [s]
        size = torch.stack([v.round().long().clamp(1, n) for v, n in zip(sizes, shape)], 1)
        room = torch.tensor(shape, device=x.device) - size + 1
        start = (
            (torch.stack([uniform(len(x), (0.0, 1.0), generator, f32) for _ in shape], 1) * room)
            .long()
            .clamp(max=room - 1)
        )
        fill = torch.tensor(self.value, dtype=x.dtype, device=x.device)
        return masked_fill_boxes(x, box_mask(shape, start, size), fill)


class GaussianNoise:
    """Add N(0, std^2) noise, with std drawn per sample from `std` (a number fixes it)."""

    name = "noise"

    def __init__(self, std=0.1):
        self.std = (float(std), float(std)) if isinstance(std, (int, float)) else span(std, "std")
        if self.std[0] < 0:
            raise ValueError(f"std: must be >= 0, got {std}")

    def __call__(self, x, generator):
        spatial_dims(x)
        std = uniform(len(x), self.std, generator, x)
        noise = torch.randn(x.shape, generator=generator, device=generator.device)
        return x + per_sample(std, x) * noise.to(device=x.device, dtype=x.dtype)


class Compose:
    """Apply (transform, p) steps in order; each sample gets each step with probability p.

    Every step runs on the whole batch and its random draws are made whatever the coin says, so
    a sample's result depends only on the seed, not on which other samples were chosen.
    """

    name = "augment"

    def __init__(self, steps):
        steps = list(steps)
        if not steps:
            raise ValueError("steps: need at least one (transform, p) pair")
        for i, step in enumerate(steps):
            if not (isinstance(step, tuple) and len(step) == 2 and callable(step[0])):
                raise ValueError(f"steps[{i}]: expected a (transform, p) pair, got {step!r}")
            if not 0 <= step[1] <= 1:
                raise ValueError(f"steps[{i}]: p must be in [0, 1], got {step[1]}")
        self.steps = steps

    def __call__(self, x, generator):
        for transform, p in self.steps:
            chosen = torch.rand(len(x), generator=generator, device=generator.device) < p
            out = transform(x, generator)
            x = torch.where(per_sample(chosen.to(x.device), x), out, x)
        return x


@dataclass(frozen=True)
class IdScheme:
    """Ids for generated rows: offset + copy * stride + anchor id (the row it was made from).

    Real ids must lie in [0, stride); offset >= stride keeps generated ids clear of them. Two
    operators writing into one dataset need offsets at least copies * stride apart.
    """

    offset: int
    stride: int = 2**32

    def __post_init__(self):
        if self.stride < 1:
            raise ValueError(f"stride: must be >= 1, got {self.stride}")
        if self.offset < self.stride:
            raise ValueError(
                f"offset: must be >= stride ({self.stride}) so that generated ids "
                f"never collide with real ones, got {self.offset}"
            )

    def new_ids(self, anchor_ids: np.ndarray, copy) -> np.ndarray:
        anchor_ids = np.asarray(anchor_ids, dtype=np.int64)
        copy = np.asarray(copy, dtype=np.int64)
        bad = (anchor_ids < 0) | (anchor_ids >= self.stride)
        if bad.any():
            raise DataError(
                f"id {int(anchor_ids[bad][0])}: outside [0, stride={self.stride}) "
                "of the id scheme; choose a larger stride"
            )
        if self.offset + (int(copy.max(initial=0)) + 1) * self.stride > np.iinfo(np.int64).max:
            raise ValueError(f"offset/stride: ids for copy {int(copy.max())} overflow int64")
        return self.offset + copy * self.stride + anchor_ids


def block_generator(seed: int, first_id: int, *salt) -> torch.Generator:
    """A CPU generator for one block, seeded by (seed, the block's first id, salt): the same
    block gets the same stream whichever task runs it, and whenever."""
    words = [int(seed) % 2**64, int(first_id) % 2**64, *(zlib.crc32(str(s).encode()) for s in salt)]
    hi, lo = np.random.SeedSequence(words).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(hi) << 32 | int(lo))


def one_hot(labels: np.ndarray, num_classes: int, ids: np.ndarray | None = None) -> np.ndarray:
    """float32 (n, num_classes) one-hot targets; a label out of range is a DataError."""
    labels = np.asarray(labels, dtype=np.int64)
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        i = int(np.argmax(bad))
        row = f"id {int(ids[i])}" if ids is not None else f"row {i}"
        raise DataError(
            f"column '{LABEL}': label {int(labels[i])} at {row} is outside "
            f"[0, num_classes={num_classes})"
        )
    out = np.zeros((len(labels), num_classes), dtype=np.float32)
    out[np.arange(len(labels)), labels] = 1.0
    return out


def _tensor_column(values: np.ndarray):
    from ray.data.extensions import ArrowTensorArray

    return ArrowTensorArray.from_numpy(np.ascontiguousarray(values))


def rows_table(
    ids, labels, x, source: str, parent_ids: np.ndarray, y_soft: np.ndarray | None = None
) -> pa.Table:
    """Generated rows in the contract's columns plus `source`, `parent_ids` and maybe `y_soft`."""
    n, width = parent_ids.shape
    parents = pa.ListArray.from_arrays(
        pa.array(np.arange(n + 1, dtype=np.int32) * width),
        pa.array(parent_ids.reshape(-1).astype(np.int64)),
    )
    columns = {
        ID: pa.array(np.asarray(ids, dtype=np.int64)),
        LABEL: pa.array(np.asarray(labels, dtype=np.int64)),
        X: _tensor_column(np.asarray(x, dtype=np.float32)),
        "source": pa.array([source] * n, type=pa.string()),
        "parent_ids": parents,
    }
    if y_soft is not None:
        columns["y_soft"] = _tensor_column(np.asarray(y_soft, dtype=np.float32))
    return pa.table(columns)


def class_rows(batch: dict, where: str) -> tuple[np.ndarray, np.ndarray, int]:
    """One class's group (groupby(label).map_groups) as (ids, features) in id order and the
    label: the same rows in the same order however the group's task received them."""
    require_columns(batch, [ID, LABEL, X], where)
    order = np.argsort(np.asarray(batch[ID], dtype=np.int64), kind="stable")
    row_ids = np.asarray(batch[ID], dtype=np.int64)[order]
    x = features(batch)[order]
    check_finite(x, row_ids)
    return row_ids, x, int(batch[LABEL][0])


def targets(batch: dict, ids: np.ndarray, num_classes: int | None) -> np.ndarray | None:
    """The rows' `y_soft` as they carry it (the output of a mixing job), else one-hot labels
    when `num_classes` is given, else None; a `y_soft` width other than num_classes is a
    DataError."""
    if "y_soft" not in batch:
        return one_hot(batch[LABEL], num_classes, ids) if num_classes else None
    if not len(ids):
        return np.zeros((0, num_classes or 0), np.float32)
    given = np.stack(list(batch["y_soft"])).astype(np.float32)
    if num_classes and given.shape[1] != num_classes:
        raise DataError(
            f"column 'y_soft': rows of {given.shape[1]} classes, num_classes is {num_classes}"
        )
    return given


def _tag_real_block(batch: dict, num_classes: int | None) -> pa.Table:
    require_columns(batch, [ID, LABEL, X], "tag_real")
    ids = np.asarray(batch[ID], dtype=np.int64)
    y = targets(batch, ids, num_classes)
    table = rows_table(
        ids, batch[LABEL], features(batch), "real", np.zeros((len(ids), 0), np.int64), y
    )
    if "source" in batch and "parent_ids" in batch:  # rows a job generated earlier stay so
        parents = pa.array(
            [np.asarray(p, np.int64) for p in batch["parent_ids"]], pa.list_(pa.int64())
        )
        table = table.set_column(
            table.schema.get_field_index("source"),
            "source",
            pa.array(np.asarray(batch["source"]).astype(str)),
        )
        table = table.set_column(table.schema.get_field_index("parent_ids"), "parent_ids", parents)
    return table


def tag_real(ds, num_classes: int | None = None):
    """Real rows with source 'real', no parents and (with num_classes) one-hot `y_soft`, so that
    they union with generated rows. Rows that already carry `source` and `parent_ids` (the
    output of an earlier job) keep them, and their `y_soft` when they have one."""
    if num_classes is not None and num_classes < 1:
        raise ValueError(f"num_classes: must be >= 1, got {num_classes}")
    return ds.map_batches(
        _tag_real_block,
        fn_kwargs={"num_classes": num_classes},
        batch_size=None,
        batch_format="numpy",
    )


def _augment_block(
    batch: dict,
    transform,
    seed: int,
    ids: IdScheme,
    copies: int,
    num_classes: int | None,
    source: str,
) -> pa.Table:
    require_columns(batch, [ID, LABEL, X], "augment_dataset")
    row_ids = np.asarray(batch[ID], dtype=np.int64)
    x = features(batch)
    check_finite(x, row_ids)
    labels = np.asarray(batch[LABEL], dtype=np.int64)
    y = targets(batch, row_ids, num_classes)  # a copy keeps its parent's (soft) targets
    first = int(row_ids[0]) if len(row_ids) else 0
    tables = []
    for c in range(copies):
        g = block_generator(seed, first, c, source)
        out = transform(torch.from_numpy(x), g).numpy() if len(x) else x
        tables.append(rows_table(ids.new_ids(row_ids, c), labels, out, source, row_ids[:, None], y))
    return pa.concat_tables(tables)


def augment_dataset(
    ds,
    transform,
    *,
    seed: int,
    ids: IdScheme,
    copies: int = 1,
    num_classes: int | None = None,
    source: str | None = None,
    batch_size: int | None = None,
):
    """`copies` augmented rows per input row (only the new rows; union with `tag_real(ds)`).

    Each row keeps its label, gets an id from `ids`, its parent's id in `parent_ids` and the
    transform's name (or `source`) as its tag, and its parent's `y_soft` (a transformed mixed
    row is as mixed as its parent), or one-hot targets when num_classes is given. The stream of
    a block depends on (seed, its first id, copy), so the same input gives the same rows however
    Ray schedules it.
    """
    if not callable(transform):
        raise ValueError(f"transform: expected a callable t(x, generator), got {transform!r}")
    if copies < 1:
        raise ValueError(f"copies: must be >= 1, got {copies}")
    if num_classes is not None and num_classes < 1:
        raise ValueError(f"num_classes: must be >= 1, got {num_classes}")
    source = source or getattr(transform, "name", None)
    if not source:
        raise ValueError("source: the transform has no `name`; pass source='...'")
    return ds.map_batches(
        _augment_block,
        fn_kwargs={
            "transform": transform,
            "seed": seed,
            "ids": ids,
            "copies": copies,
            "num_classes": num_classes,
            "source": source,
        },
        batch_size=batch_size,
        batch_format="numpy",
    )
