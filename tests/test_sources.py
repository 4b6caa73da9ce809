"""Each source format round-trips a tiny dataset exactly, through ingest and read_split."""

import gzip

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from ray.data.extensions import ArrowTensorArray

from raysift.config import SourceConfig
from raysift.data.ingest import ingest, load_info, read_split
from raysift.operators.contract import DataError, features


def read_all(out_dir, split):
    """(ids, labels, x) of one split, in the order read_split gives them."""
    batches = list(read_split(out_dir, split).iter_batches(batch_size=None, batch_format="numpy"))
    return tuple(np.concatenate([b[k] for b in batches]) for k in ("id", "label", "x"))


def shards(folder):
    """(ids, labels, x) of a split's shards in name order, read with pyarrow alone (no Ray)."""
    t = pq.read_table(sorted(str(p) for p in folder.iterdir()))
    x = np.concatenate([c.to_numpy() for c in t.column("x").chunks])
    return t.column("id").to_numpy(), t.column("label").to_numpy(), x


def shard_x(folder):
    return shards(folder)[2]


def all_train(**kw):
    return SourceConfig(val_fraction=0.0, test_fraction=0.0, **kw)


def test_a_folder_reads_in_name_order_and_the_callers_settings_stay(ray_session, tmp_path):
    from ray.data import DataContext

    from raysift.data.parquet import read_parquet

    for name, ids in (("b.parquet", [5, 6]), ("a.parquet", [9, 1]), ("c.parquet", [0])):
        pq.write_table(pa.table({"id": ids}), tmp_path / name)
    ctx = DataContext.get_current()
    session = ctx.use_datasource_v2
    try:
        for flag in (False, True):
            ctx.use_datasource_v2 = flag
            assert read_parquet(str(tmp_path)).to_pandas()["id"].tolist() == [9, 1, 5, 6, 0]
            assert ctx.use_datasource_v2 is flag
    finally:
        ctx.use_datasource_v2 = session


def test_parquet_list_column_reshaped_and_ids_assigned_over_sorted_files(ray_session, tmp_path):
    x = np.arange(40, dtype=np.float32).reshape(10, 4) / 7
    labels = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    # b.parquet is written first: ids still follow the sorted file names
    for name, rows in (("b.parquet", slice(6, 10)), ("a.parquet", slice(0, 6))):
        pq.write_table(
            pa.table(
                {"y": labels[rows], "feat": pa.array(x[rows].tolist(), pa.list_(pa.float32()))}
            ),
            tmp_path / name,
        )
    cfg = all_train(
        kind="parquet", path=str(tmp_path), label_column="y", feature_column="feat", shape=[1, 2, 2]
    )
    info = ingest(cfg, 0, tmp_path / "out", chunk_rows=3, shard_rows=4)

    ids, got_labels, got_x = read_all(tmp_path / "out", "train")
    assert ids.tolist() == list(range(10))
    assert got_labels.tolist() == labels.tolist()
    np.testing.assert_array_equal(got_x, x.reshape(10, 1, 2, 2))
    assert sorted(p.name for p in (tmp_path / "out" / "train").iterdir()) == [
        "part-00000.parquet",
        "part-00001.parquet",
        "part-00002.parquet",
    ]
    assert len(shards(tmp_path / "out" / "test")[0]) == 0
    assert info.counts == {"train": 10, "val": 0, "test": 0}
    assert info.class_counts["train"] == [4, 3, 3]
    assert load_info(tmp_path / "out") == info


def test_parquet_tensor_column_keeps_ids_and_the_given_split(tmp_path):
    x = np.arange(6 * 2 * 3, dtype=np.float64).reshape(6, 2, 3)
    split = ["train", "test", "train", "val", "test", "train"]
    pq.write_table(
        pa.table(
            {
                "id": [50, 10, 40, 30, 20, 60],
                "label": [1, 0, 1, 0, 1, 0],
                "x": ArrowTensorArray.from_numpy(x),
                "split": split,
            }
        ),
        tmp_path / "data.parquet",
    )
    cfg = SourceConfig(
        kind="parquet", path=str(tmp_path / "data.parquet"), val_fraction=0.5, test_fraction=0.5
    )
    info = ingest(cfg, 3, tmp_path / "out")

    ids, labels, got = shards(tmp_path / "out" / "test")
    assert ids.tolist() == [10, 20] and labels.tolist() == [0, 1]
    np.testing.assert_array_equal(got, x[[1, 4]].astype(np.float32))
    assert shards(tmp_path / "out" / "val")[0].tolist() == [30]
    assert shards(tmp_path / "out" / "train")[0].tolist() == [50, 40, 60]
    assert info.counts == {"train": 3, "val": 1, "test": 2}


def test_parquet_nested_lists_glob_and_fsspec_uri(tmp_path):
    import fsspec

    rows = [[[1.0, 2.0], [3.0, 4.0]], [[5.0, 6.0], [7.0, 8.0]]]
    table = pa.table({"label": [0, 1], "x": rows})
    for name in ("part-1.parquet", "part-2.parquet", "other.parquet"):
        pq.write_table(table, tmp_path / name)
    info = ingest(
        all_train(kind="parquet", path=str(tmp_path / "part-*.parquet")), 0, tmp_path / "glob"
    )
    assert info.counts["train"] == 4 and info.x_shape == (2, 2)
    assert "2 files" in info.source

    mem = fsspec.filesystem("memory")
    with mem.open("/raysift-test/one.parquet", "wb") as f:
        pq.write_table(table, f)
    info = ingest(all_train(kind="parquet", path="memory://raysift-test"), 0, tmp_path / "mem")
    assert info.counts["train"] == 2
    got = shard_x(tmp_path / "mem" / "train")
    np.testing.assert_array_equal(got, np.array(rows, np.float32))


def test_npz_given_test_arrays_and_ids(ray_session, tmp_path):
    x = np.linspace(0, 1, 5 * 3, dtype=np.float32).reshape(5, 3)
    np.savez(
        tmp_path / "d.npz",
        x=x,
        label=[0, 1, 0, 1, 2],
        id=[9, 8, 7, 6, 5],
        x_test=x[:2] + 1,
        label_test=[2, 2],
        id_test=[1, 2],
    )
    info = ingest(all_train(kind="npz", path=str(tmp_path / "d.npz")), 0, tmp_path / "out")

    ids, labels, got = read_all(tmp_path / "out", "test")
    assert ids.tolist() == [1, 2] and labels.tolist() == [2, 2]
    np.testing.assert_array_equal(got, x[:2] + 1)
    assert shards(tmp_path / "out" / "train")[0].tolist() == [9, 8, 7, 6, 5]
    assert info.counts == {"train": 5, "val": 0, "test": 2} and info.num_classes == 3


def write_idx(path, array, code):
    header = bytes([0, 0, code, array.ndim]) + np.array(array.shape, ">u4").tobytes()
    data = header + array.astype({0x08: ">u1", 0x0D: ">f4"}[code]).tobytes()
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)


def test_idx_train_and_t10k_files(ray_session, tmp_path):
    rng = np.random.default_rng(0)
    train, test = rng.integers(0, 256, (6, 3, 2)), rng.integers(0, 256, (2, 3, 2))
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", train, 0x08)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.array([0, 1, 2, 3, 4, 5]), 0x08)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", test, 0x08)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.array([7, 8]), 0x08)
    info = ingest(all_train(kind="idx", path=str(tmp_path)), 0, tmp_path / "out", chunk_rows=4)

    ids, labels, got = shards(tmp_path / "out" / "test")
    assert ids.tolist() == [0, 1] and labels.tolist() == [7, 8]  # t10k sorts first
    assert got.dtype == np.uint8  # 8-bit pixels stay 8-bit on disk
    np.testing.assert_array_equal(got, test[:, None])
    ids, labels, got = read_all(tmp_path / "out", "train")
    assert ids.tolist() == [2, 3, 4, 5, 6, 7] and labels.tolist() == [0, 1, 2, 3, 4, 5]
    np.testing.assert_array_equal(features({"x": got}), (train / 255.0).astype(np.float32)[:, None])
    assert info.x_shape == (1, 3, 2) and info.num_classes == 9 and info.x_dtype == "uint8"


def test_imagefolder_grey_images_and_class_names(ray_session, tmp_path):
    from PIL import Image

    rng = np.random.default_rng(1)
    images = {
        ("cat", "a.png"): rng.integers(0, 256, (3, 4), dtype=np.uint8),
        ("cat", "b.png"): rng.integers(0, 256, (3, 4), dtype=np.uint8),
        ("ant", "z.png"): rng.integers(0, 256, (3, 4), dtype=np.uint8),
    }
    for (cls, name), a in images.items():
        (tmp_path / "imgs" / cls).mkdir(parents=True, exist_ok=True)
        Image.fromarray(a, mode="L").save(tmp_path / "imgs" / cls / name)
    (tmp_path / "imgs" / "cat" / "notes.txt").write_text("not an image")
    info = ingest(all_train(kind="imagefolder", path=str(tmp_path / "imgs")), 0, tmp_path / "out")

    ids, labels, got = read_all(tmp_path / "out", "train")
    assert labels.tolist() == [0, 1, 1] and info.class_names == ["ant", "cat"]
    expected = [images[k] for k in (("ant", "z.png"), ("cat", "a.png"), ("cat", "b.png"))]
    np.testing.assert_array_equal(got, np.stack(expected)[:, None])
    assert info.x_shape == (1, 3, 4) and info.x_dtype == "uint8"


def test_imagefolder_rgb_resized_to_image_size(ray_session, tmp_path):
    from PIL import Image

    for cls, size in (("a", (5, 7)), ("b", (9, 4))):
        (tmp_path / cls).mkdir()
        Image.new("RGB", size, (255, 0, 51)).save(tmp_path / cls / "img.png")
    info = ingest(
        all_train(kind="imagefolder", path=str(tmp_path), image_size=[6, 8]), 0, tmp_path / "out"
    )
    x = shard_x(tmp_path / "out" / "train")
    assert x.shape == (2, 3, 6, 8) and info.x_shape == (3, 6, 8)
    assert x[:, :, 2, 3].tolist() == [[255, 0, 51]] * 2


def test_imagefolder_decoded_in_parallel_keeps_path_order_over_chunks(ray_session, tmp_path):
    from PIL import Image

    grey = {f"g{i}.png": np.full((2, 3), 10 * i, np.uint8) for i in range(5)}
    for name, a in grey.items():
        (tmp_path / "b").mkdir(exist_ok=True)
        Image.fromarray(a, mode="L").save(tmp_path / "b" / name)
    (tmp_path / "a").mkdir()
    Image.new("RGB", (3, 2), (1, 2, 3)).save(tmp_path / "a" / "c.png")  # one colour image: RGB
    info = ingest(
        all_train(kind="imagefolder", path=str(tmp_path)), 0, tmp_path / "out", chunk_rows=2
    )
    ids, labels, x = read_all(tmp_path / "out", "train")
    order = np.argsort(ids)  # ids follow the rows' order: a/c.png, then b/g0..g4.png
    assert labels[order].tolist() == [0, 1, 1, 1, 1, 1] and info.x_shape == (3, 2, 3)
    assert x[order][0, :, 0, 0].tolist() == [1, 2, 3]
    assert [int(v) for v in x[order][1:, :, 1, 2].max(axis=1)] == [0, 10, 20, 30, 40]
    assert (x[order][1:].min(axis=1) == x[order][1:].max(axis=1)).all()  # grey in 3 channels


def test_imagefolder_names_the_first_image_of_another_size(ray_session, tmp_path):
    from PIL import Image

    for cls, size in (("a", (4, 3)), ("b", (4, 3)), ("c", (5, 3))):
        (tmp_path / cls).mkdir()
        Image.new("L", size).save(tmp_path / cls / "img.png")
    with pytest.raises(
        DataError,
        match=r"c/img\.png: image size 3x5 differs from .*a/img\.png "
        r"\(3x4\); set source\.image_size to resize all",
    ):
        ingest(all_train(kind="imagefolder", path=str(tmp_path)), 0, tmp_path / "out")


def test_mnist1d_given_split_and_cache(ray_session, tmp_path, monkeypatch):
    import mnist1d.data

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    cfg = SourceConfig(kind="mnist1d", num_samples=200, val_fraction=0.25)
    info = ingest(cfg, 0, tmp_path / "a")
    assert info.counts["test"] == 40 and info.counts["train"] + info.counts["val"] == 160
    assert info.x_shape == (1, 40) and info.num_classes == 10
    cached = np.load(tmp_path / "cache" / "raysift" / "mnist1d-n200-seed42.npz")
    ids, labels, x = read_all(tmp_path / "a", "test")
    assert ids.tolist() == list(range(160, 200))
    np.testing.assert_array_equal(x[:, 0], cached["x_test"].astype(np.float32))
    assert labels.tolist() == cached["y_test"].tolist()

    def fail(*a, **k):
        raise AssertionError("the cached arrays should have been used")

    monkeypatch.setattr(mnist1d.data, "make_dataset", fail)
    assert ingest(cfg, 0, tmp_path / "b") == info


def test_mnist1d_past_one_part_is_parts_with_the_next_seeds(tmp_path, monkeypatch):
    from raysift.data import sources

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(sources, "MNIST1D_PART", 100)
    cfg = all_train(kind="mnist1d", num_samples=250)
    info = ingest(cfg, 0, tmp_path / "a")
    cache = tmp_path / "cache" / "raysift"
    parts = [
        np.load(cache / f"mnist1d-n{n}-seed{seed}.npz")
        for n, seed in ((100, 42), (100, 43), (50, 44))
    ]
    assert info.counts == {"train": 200, "val": 0, "test": 50}
    train = shard_x(tmp_path / "a" / "train")[:, 0]
    np.testing.assert_array_equal(train, np.concatenate([p["x"] for p in parts]).astype(np.float32))
    assert not np.array_equal(parts[0]["x"][:50], parts[2]["x"])  # new seeds, new samples


def test_digits_scaled_to_unit_range(tmp_path):
    info = ingest(
        SourceConfig(kind="digits", test_fraction=0.2, val_fraction=0.1), 0, tmp_path / "out"
    )
    assert sum(info.counts.values()) == 1797 and info.x_shape == (1, 8, 8)
    assert 300 < info.counts["test"] < 420
    x = shard_x(tmp_path / "out" / "test")
    assert x.min() == 0.0 and x.max() == 1.0


@pytest.mark.parametrize("kind", ["parquet", "npz", "idx", "imagefolder"])
def test_user_kinds_need_a_path(kind, tmp_path):
    from raysift.config import ConfigError

    with pytest.raises(ConfigError, match="source.path: required"):
        ingest(SourceConfig(kind=kind), 0, tmp_path / "out")


def test_uint8_arrays_stay_8_bit_and_other_numbers_become_float32(tmp_path):
    pixels = np.array([[0, 128, 255], [7, 8, 9]], np.uint8)
    np.savez(tmp_path / "p.npz", x=pixels, label=[0, 1])
    info = ingest(all_train(kind="npz", path=str(tmp_path / "p.npz")), 0, tmp_path / "p")
    assert info.x_dtype == "uint8" and shard_x(tmp_path / "p" / "train").tolist() == pixels.tolist()
    np.savez(tmp_path / "f.npz", x=pixels.astype(np.int16), label=[0, 1])
    info = ingest(all_train(kind="npz", path=str(tmp_path / "f.npz")), 0, tmp_path / "f")
    got = shard_x(tmp_path / "f" / "train")
    assert info.x_dtype == "float32" and got.dtype == np.float32
    assert got.tolist() == pixels.astype(np.float32).tolist()  # not pixels: values as given


def test_8_bit_in_one_file_and_not_in_another_is_refused_by_name(tmp_path):
    np.savez(tmp_path / "a.npz", x=np.zeros((2, 3), np.uint8), label=[0, 1])
    np.savez(tmp_path / "b.npz", x=np.zeros((2, 3), np.float32), label=[0, 1])
    with pytest.raises(DataError, match=r"b\.npz.*float32.*a\.npz.*8-bit"):
        ingest(all_train(kind="npz", path=str(tmp_path)), 0, tmp_path / "out")
    assert not (tmp_path / "out").exists()
