"""The `synthesize:` job section: rows of every kind join the train split with their provenance,
and `raysift generate` samples a run's saved generator."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from gloo_group import run_gloo

from raysift.batch.synthesize import SYNTHETIC, TRAIN_SHARD, add_synthetic, like_train
from raysift.cli import main
from raysift.config import ConfigError, from_dict
from raysift.data.ingest import ingest, load_info
from raysift.training import generative


@pytest.fixture
def small_run(tmp_path):
    """A run folder with 40 two-class signals of shape (1, 8) ingested: 32 train rows."""
    g = np.random.default_rng(0)
    labels = np.arange(40) % 2
    x = (labels[:, None, None] * 2.0 - 1 + 0.3 * g.normal(size=(40, 1, 8))).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x, label=labels)
    run = tmp_path / "run"

    def make(kind, **options):
        job = from_dict(
            {
                "run_dir": str(run),
                "model": {"name": "cnn1d"},
                "source": {
                    "kind": "npz",
                    "path": str(tmp_path / "d.npz"),
                    "val_fraction": 0.1,
                    "test_fraction": 0.1,
                },
                "synthesize": {
                    "kind": kind,
                    "per_class": 3,
                    "epochs": 2,
                    "steps": 2,
                    "hidden": 16,
                    **options,
                },
            }
        )
        data = run / "data"
        ingest(job.source, 0, data)
        return job, data

    return make


@pytest.mark.parametrize("kind", ["vae", "gan", "style", "neural", "moex"])
def test_rows_of_every_kind_join_the_train_split(kind, small_run, ray_session):
    job, data = small_run(kind)
    before = load_info(data)
    info = add_synthetic(job, data, data.parent)
    added = pq.read_table(data / SYNTHETIC)
    n = added.num_rows
    assert set(added.column("source").to_pylist()) == {kind}
    assert info.counts["train"] == before.counts["train"] + n
    assert json.loads((data / "info.json").read_text())["counts"]["train"] == info.counts["train"]
    labels = added.column("label").to_numpy()
    if kind == "moex":  # one exchanged row per real row (3 a class asked, 16 a class there)
        assert n == before.counts["train"]
        assert all(len(p) == 2 for p in added.column("parent_ids").to_pylist())
    else:
        assert np.bincount(labels).tolist() == [3, 3]
    train_ids = pq.read_table(data / "train" / TRAIN_SHARD).column("id").to_pylist()
    assert train_ids == added.column("id").to_pylist() and min(train_ids) >= 2**40
    if kind in ("style", "neural"):  # both parents real rows of the row's class
        real = pq.read_table(data / "train" / "part-00000.parquet").to_pydict()
        label_of = dict(zip(real["id"], real["label"]))
        for parents, label in zip(added.column("parent_ids").to_pylist(), labels):
            assert [label_of[p] for p in parents] == [label, label]
    if kind in ("vae", "gan", "neural"):
        assert (data.parent / "generators" / f"{kind}.pt").exists()


def _fit_like_ray_train(rank, out_dir):
    """Rank r of a plain two-process DDP group: the Ray Train workers' rows and settings."""
    from raysift.batch.synthesize import train_share
    from raysift.seeding import derive_seed

    saved = json.loads((Path(out_dir) / "job.json").read_text())
    job, data = from_dict(saved["job"]), Path(saved["data"])
    cfg = job.synthesize
    spec = generative.GeneratorSpec.from_dict(saved["spec"])
    model = generative.fit_share(
        spec,
        train_share(job, data, rank, 2),
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        seed=derive_seed(job.seed, "synthesize", cfg.kind),
    )
    torch.save(model.state_dict(), Path(out_dir) / f"rank{rank}.pt")


def test_past_in_process_rows_a_gan_trains_in_a_ray_train_run_as_plain_ddp_would(
    small_run, ray_session, tmp_path
):
    job, data = small_run("gan", in_process_rows=10)  # 32 train rows: two workers train it
    assert job.train.num_workers == 2
    # First the same rows, seeds and steps in a plain two-process gloo group.
    plain = tmp_path / "plain"
    plain.mkdir()
    spec = generative.GeneratorSpec("gan", (1, 8), 2, job.synthesize.latent, job.synthesize.hidden)
    (plain / "job.json").write_text(
        json.dumps({"job": job.to_dict(), "data": str(data), "spec": dataclasses.asdict(spec)})
    )
    run_gloo(_fit_like_ray_train, plain)
    add_synthetic(job, data, data.parent)
    saved = data.parent / "generators"
    assert sorted(p.name for p in saved.iterdir()) == ["gan.pt"]  # Ray Train's files removed
    by_ray = torch.load(saved / "gan.pt", weights_only=True)
    assert generative.GeneratorSpec.from_dict(by_ray["spec"]) == spec
    ddp = torch.load(plain / "rank0.pt")
    assert by_ray["state"].keys() == ddp.keys()
    for name, value in ddp.items():  # the Ray Train run ended at the same generator
        torch.testing.assert_close(by_ray["state"][name], value, msg=name)
    rows = pq.read_table(data / SYNTHETIC)
    assert np.bincount(rows.column("label").to_numpy()).tolist() == [3, 3]


def test_generate_samples_a_saved_generator_and_names_what_is_missing(
    small_run, ray_session, tmp_path, capsys
):
    job, data = small_run("vae")
    add_synthetic(job, data, data.parent)
    out = tmp_path / "gen"
    assert main(["generate", str(data.parent), str(out), "--n", "5", "--seed", "3"]) == 0
    rows = pq.read_table(out)
    assert sorted(rows.column("label").to_pylist()) == [0, 0, 0, 1, 1]
    assert main(["generate", str(tmp_path), str(tmp_path / "x"), "--n", "5"]) == 2
    assert "no saved generator" in capsys.readouterr().err
    assert main(["generate", str(data.parent), str(out), "--n", "5"]) == 2  # OUT exists


def test_a_text_source_cannot_synthesize():
    with pytest.raises(ConfigError, match="synthesize.kind"):
        from_dict(
            {
                "source": {"kind": "text", "path": "r.csv"},
                "model": {"name": "textcnn"},
                "synthesize": {"kind": "vae"},
            }
        )


def test_rows_added_to_8_bit_shards_are_bytes_that_read_back_as_the_values(tmp_path):
    import pyarrow as pa
    from ray.data.extensions import ArrowTensorArray

    from raysift.operators.contract import features

    pixels = np.array([[[0, 128, 255]]], dtype=np.uint8)
    pq.write_table(
        pa.table({"x": ArrowTensorArray.from_numpy(pixels)}), tmp_path / "part-00000.parquet"
    )
    column = like_train(np.array([[[0.5, 1.2, -0.1]]], np.float32), tmp_path)
    stored = column.to_numpy()
    assert stored.dtype == np.uint8 and stored.tolist() == [[[128, 255, 0]]]
    assert np.allclose(features({"x": stored}), [[[128 / 255, 1.0, 0.0]]])
