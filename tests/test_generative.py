"""VAE and GAN generators: training, saving, and the Ray Data job that samples labelled rows."""

from pathlib import Path

import numpy as np
import pytest
import torch
from gloo_group import run_gloo

from raysift.data.share import Share
from raysift.operators.augment import IdScheme
from raysift.operators.contract import ID, LABEL, X
from raysift.operators.generate import class_slots, sample_dataset
from raysift.training import generative
from raysift.training.generative import GeneratorSpec


def two_class_signals(n=24):
    """Class 0 around -2, class 1 around +2: a generator that learned the condition keeps them
    apart."""
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(n) % 2
    x = (labels.float() * 4 - 2)[:, None, None] + 0.3 * torch.randn(n, 1, 6, generator=g)
    return x, labels


@pytest.mark.parametrize("kind", generative.KINDS)
def test_a_fitted_generator_follows_its_condition_and_reloads(kind, tmp_path):
    x, labels = two_class_signals()
    spec = GeneratorSpec(kind, (1, 6), 2, latent=4, hidden=16)
    model = generative.fit(spec, x, labels, epochs=60, batch_size=24, lr=1e-2, seed=1)
    wanted = torch.tensor([0] * 50 + [1] * 50)
    drawn = model.sample(wanted, torch.Generator().manual_seed(2))
    assert drawn.shape == (100, 1, 6)
    means = drawn.mean(dim=(1, 2))
    assert means[:50].mean() < -1 and means[50:].mean() > 1
    generative.save(model, tmp_path / f"{kind}.pt")
    again = generative.load(tmp_path / f"{kind}.pt")
    assert torch.equal(again.sample(wanted, torch.Generator().manual_seed(2)), drawn)
    same = generative.fit(spec, x, labels, epochs=60, batch_size=24, lr=1e-2, seed=1)
    assert torch.equal(same.sample(wanted, torch.Generator().manual_seed(2)), drawn)


def _fit_rank_rows(rank, out_dir):
    """Rank r holds rows r, r + 2, ...: half the data each, trained together under DDP."""
    kind = (Path(out_dir) / "kind").read_text()
    x, labels = two_class_signals()
    share = Share.from_arrays(np.arange(rank, 24, 2), labels[rank::2].numpy(), x[rank::2].numpy())
    spec = GeneratorSpec(kind, (1, 6), 2, latent=4, hidden=16)
    model = generative.fit_share(spec, share, epochs=3, batch_size=8, lr=1e-2, seed=1)
    torch.save(model.state_dict(), Path(out_dir) / f"rank{rank}.pt")


@pytest.mark.parametrize("kind", generative.KINDS)
def test_two_ranks_train_one_generator_on_their_own_rows(kind, tmp_path):
    (tmp_path / "kind").write_text(kind)
    run_gloo(_fit_rank_rows, tmp_path)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    # The scale is the whole data's, summed over the ranks, not each rank's own.
    x, labels = two_class_signals()
    flat = x.reshape(24, -1)
    torch.testing.assert_close(ranks[0]["mean"], flat.mean(0))
    torch.testing.assert_close(ranks[0]["std"], flat.std(0, unbiased=False))
    # Different rows on each rank, the same weights after every step: DDP averaged them.
    assert ranks[0].keys() == ranks[1].keys()
    for name in ranks[0]:
        assert torch.equal(ranks[0][name], ranks[1][name]), name
    alone = generative.fit_share(
        GeneratorSpec(kind, (1, 6), 2, latent=4, hidden=16),
        Share.from_arrays(np.arange(0, 24, 2), labels[0::2].numpy(), x[0::2].numpy()),
        epochs=3,
        batch_size=8,
        lr=1e-2,
        seed=1,
    ).state_dict()
    assert any(not torch.equal(alone[n], ranks[0][n]) for n in alone if n not in ("mean", "std"))


def test_a_generator_needs_two_rows():
    x, labels = two_class_signals(1)
    with pytest.raises(ValueError, match=r"at least 2 samples.*got \[1\] on 1 worker"):
        generative.fit(GeneratorSpec("vae", (1, 6), 2), x, labels, epochs=1)


def test_class_slots_are_class_by_class():
    assert class_slots({2: 1, 0: 2, 1: 0}).tolist() == [0, 0, 2]
    with pytest.raises(ValueError, match="per_class"):
        class_slots({0: -1})


@pytest.mark.parametrize("kind", generative.KINDS)
def test_sampled_rows_carry_labels_tags_and_repeat_with_the_seed(kind, ray_session):
    x, labels = two_class_signals()
    model = generative.fit(
        GeneratorSpec(kind, (1, 6), 2, latent=4, hidden=16), x, labels, epochs=5, seed=0
    )
    scheme = IdScheme(offset=1000, stride=1000)

    def rows(seed):
        ds = sample_dataset(
            model.sample,
            {0: 3, 1: 4},
            num_classes=2,
            seed=seed,
            ids=scheme,
            source=kind,
            rows_per_block=2,
        )
        return sorted(ds.take_all(), key=lambda r: r[ID])

    first = rows(5)
    assert [r[ID] for r in first] == list(range(1000, 1007))
    assert [r[LABEL] for r in first] == [0, 0, 0, 1, 1, 1, 1]
    for r in first:
        assert r["source"] == kind and list(r["parent_ids"]) == []
        assert np.asarray(r["y_soft"]).tolist() == np.eye(2)[r[LABEL]].tolist()
        assert np.asarray(r[X]).shape == (1, 6)
    again, other = rows(5), rows(6)
    assert [np.asarray(r[X]).tolist() for r in first] == [np.asarray(r[X]).tolist() for r in again]
    assert [np.asarray(r[X]).tolist() for r in first] != [np.asarray(r[X]).tolist() for r in other]
