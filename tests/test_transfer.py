"""Transfer (M5): the step per rule by hand, the epoch walk, the job file, and one Ray run."""

import copy
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from raysift.cli import main
from raysift.config import ConfigError
from raysift.operators.contract import ID, LABEL, X
from raysift.transfer.config import TransferTrainConfig, transfer_from_dict
from raysift.transfer.history import HistoryLibrary
from raysift.transfer.step import Batch, epoch_walk, interpolate, run_epochs, transfer_step

R2 = math.sqrt(2.0)


# --- one step on a 2x2 linear model, zero weights: logits 0, softmax (1/2, 1/2) ------------
# new (x (1, 0), label 0): g_t = (p - onehot) x^T = [[-1/2, 0], [1/2, 0]] -> (-.5, 0, .5, 0)
# history (x (1, 1), label 1): g_h = [[1/2, 1/2], [-1/2, -1/2]] -> (.5, .5, -.5, -.5)
# g_t . g_h = -1/2, |g_t|^2 = 1/2, |g_h|^2 = 1, cosine -1/sqrt(2): they conflict.
G_T = [-0.5, 0.0, 0.5, 0.0]
G_H = [0.5, 0.5, -0.5, -0.5]
EXPECTED = {
    "finetune": G_T,
    "sum": [0.0, 0.5, 0.0, -0.5],
    # g_t - (g_t.g_h / |g_h|^2) g_h = g_t + g_h / 2
    "agem": [-0.25, 0.25, 0.25, -0.25],
    # (g_t + g_h / 2) + (g_h + g_t)
    "pcgrad": [-0.25, 0.75, 0.25, -0.75],
    # w_t = 1 + cos = 1 - 1/sqrt(2), w_h = 1 - cos = 1 + 1/sqrt(2)
    "similarity": [1 / R2, (1 + 1 / R2) / 2, -1 / R2, -(1 + 1 / R2) / 2],
}


@pytest.mark.parametrize("rule", list(EXPECTED))
def test_one_step_applies_the_rule_s_mixed_gradient(rule):
    model = torch.nn.Linear(2, 2, bias=False)
    torch.nn.init.zeros_(model.weight)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    new = Batch(torch.tensor([[1.0, 0.0]]), torch.tensor([0]), 1)
    hist = Batch(torch.tensor([[1.0, 1.0]]), torch.tensor([1]), 1)
    info = transfer_step(
        model, opt, new, None if rule == "finetune" else hist, TransferTrainConfig(rule=rule)
    )
    want = -torch.tensor(EXPECTED[rule]).view(2, 2)  # w <- 0 - lr * g
    torch.testing.assert_close(model.weight.detach(), want, atol=1e-6, rtol=0)
    if rule != "finetune":
        assert info["cosine"] == pytest.approx(-1 / R2) and info["conflict"]


def test_a_batch_loss_is_the_mean_over_the_global_batch():
    # Two rows whose gradients are G_T and G_H: one step of lr 1 moves by their mean.
    model = torch.nn.Linear(2, 2, bias=False)
    torch.nn.init.zeros_(model.weight)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    both = Batch(torch.tensor([[1.0, 0.0], [1.0, 1.0]]), torch.tensor([0, 1]), 2)
    transfer_step(model, opt, both, None, TransferTrainConfig(rule="finetune"))
    want = -(torch.tensor(G_T) + torch.tensor(G_H)).view(2, 2) / 2
    torch.testing.assert_close(model.weight.detach(), want, atol=1e-6, rtol=0)


def test_softmax_distillation_by_hand_and_zero_at_the_meta_model():
    from raysift.transfer.step import softmax_distillation

    # T = 2: teacher logits (0, 0) -> (1/2, 1/2); student (2 ln 3, 0) -> (3/4, 1/4) at T.
    # KL = 1/2 ln(2/3) + 1/2 ln 2 = 1/2 ln(4/3), times T^2 = 4.
    got = softmax_distillation(torch.tensor([[2 * math.log(3), 0.0]]), torch.zeros(1, 2))
    assert float(got) == pytest.approx(2 * math.log(4 / 3))
    logits = torch.randn(5, 3)
    assert float(softmax_distillation(logits, logits)) == pytest.approx(0.0, abs=1e-6)


def test_distillation_on_history_only_and_not_at_the_meta_model():
    from raysift.training.models import cnn1d

    torch.manual_seed(0)
    model = cnn1d((1, 8), 3, channels=4, hidden=8)  # BatchNorm: the teacher shares its mode
    x_t, x_h = torch.randn(6, 1, 8), torch.randn(6, 1, 8)
    new, hist = Batch(x_t, torch.tensor([0, 1, 2] * 2), 6), Batch(x_h, torch.tensor([2, 1] * 3), 6)

    def step(distill, teacher):
        m = copy.deepcopy(model)
        opt = torch.optim.SGD(m.parameters(), lr=0.1)
        transfer_step(
            m, opt, new, hist, TransferTrainConfig(rule="sum", distill=distill), teacher=teacher
        )
        return torch.cat([p.detach().flatten() for p in m.parameters()])

    plain = step(0.0, None)
    torch.testing.assert_close(step(3.0, copy.deepcopy(model)), plain)
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.stages[-1].bias += torch.tensor([1.0, 0.0, -1.0])  # not a shift of all
    assert (step(3.0, other) - plain).abs().max() > 1e-4
    with pytest.raises(ValueError, match="teacher"):
        step(3.0, None)


def test_a_joint_forward_normalises_new_and_history_rows_together():
    from raysift.training.models import cnn1d
    from raysift.transfer.step import step_gradients

    torch.manual_seed(0)
    model = cnn1d((1, 8), 3, channels=4, hidden=8).train()
    params = list(model.parameters())
    x_t, x_h = torch.randn(6, 1, 8), torch.randn(4, 1, 8) + 2.0
    y_t, y_h = torch.tensor([0, 1, 2] * 2), torch.tensor([2, 1] * 2)
    g_t, g_h = step_gradients(model, params, Batch(x_t, y_t, 6), Batch(x_h, y_h, 4), joint=True)
    out = model(torch.cat([x_t, x_h]))  # one forward: BatchNorm over all ten rows
    want_t = torch.autograd.grad(F.cross_entropy(out[:6], y_t), params, retain_graph=True)
    want_h = torch.autograd.grad(F.cross_entropy(out[6:], y_h), params)
    torch.testing.assert_close(g_t, torch.cat([g.flatten() for g in want_t]))
    torch.testing.assert_close(g_h, torch.cat([g.flatten() for g in want_h]))
    apart_t, _ = step_gradients(model, params, Batch(x_t, y_t, 6), Batch(x_h, y_h, 4))
    assert (apart_t - g_t).abs().max() > 1e-4  # apart, the new rows have their own statistics


def test_step_arguments_are_checked():
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    new = Batch(torch.ones(1, 2), torch.tensor([0]), 1)
    with pytest.raises(ValueError, match="rule"):
        transfer_step(model, opt, new, None, TransferTrainConfig(rule="replay"))
    with pytest.raises(ValueError, match="history"):
        transfer_step(model, opt, new, None, TransferTrainConfig(rule="agem"))


def test_head_gradient_fn_gives_each_sample_s_last_layer_gradient_in_chunks():
    from raysift.training.models import mlp
    from raysift.transfer.history import head_gradient_fn

    torch.manual_seed(0)
    model = mlp((1, 4), 3, hidden=(5,))
    x, y = torch.randn(5, 1, 4), torch.tensor([0, 1, 2, 1, 0])
    got = head_gradient_fn(model, batch_size=2)(x.numpy(), y.numpy())
    head = model.stages[-1]
    for i in range(5):
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
        # last_layer_gradients lays out each class's row as [dW_c | db_c]
        want = torch.cat([head.weight.grad, head.bias.grad[:, None]], 1).flatten()
        np.testing.assert_allclose(got[i], want.numpy(), atol=1e-6)


# --- the epoch walk ---------------------------------------------------------------------------


def library(n=6, classes=2, per_class=3):
    lib = HistoryLibrary(per_class=per_class, num_classes=classes, rule="reservoir", seed=0)
    lib.update(
        {
            ID: np.arange(100, 100 + n),
            LABEL: np.arange(n) % classes,
            X: np.zeros((n, 1), np.float32),
        }
    )
    return lib


def test_an_epoch_uses_every_new_sample_once_with_history_batches_in_step():
    lib = library()
    history = lib.iter_batches(4, seed=1)
    walk = list(epoch_walk(10, 4, seed=3, epoch=0, history=history))
    assert [n for _, n, _ in walk] == [4, 4, 2]
    assert sorted(np.concatenate([rows for rows, _, _ in walk]).tolist()) == list(range(10))
    hist_ids = [h[ID].tolist() for _, _, h in walk]
    assert all(len(ids) == 4 and set(ids) <= set(range(100, 106)) for ids in hist_ids)
    # The history stream runs on across steps: the first six rows are one pass of the library.
    assert sorted(sum(hist_ids, [])[:6]) == list(range(100, 106))
    again = [rows.tolist() for rows, _, _ in epoch_walk(10, 4, seed=3, epoch=0)]
    assert again == [rows.tolist() for rows, _, _ in walk]
    assert again != [rows.tolist() for rows, _, _ in epoch_walk(10, 4, seed=3, epoch=1)]


def test_ranks_share_each_global_batch():
    whole = [rows.tolist() for rows, _, _ in epoch_walk(7, 3, seed=0, epoch=2)]
    parts = [list(epoch_walk(7, 3, seed=0, epoch=2, rank=r, world=2)) for r in range(2)]
    for i, batch in enumerate(whole):
        assert sorted(parts[0][i][0].tolist() + parts[1][i][0].tolist()) == sorted(batch)
        assert parts[0][i][1] == parts[1][i][1] == len(batch)
    assert parts[1][-1][0].tolist() == []  # the last batch has one row: rank 1 gets none


def test_run_epochs_counts_steps_and_passes():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(1, 2))
    x, y = np.random.default_rng(0).normal(size=(10, 1, 1)).astype(np.float32), np.arange(10) % 2
    train = TransferTrainConfig(rule="pcgrad", epochs=2, batch_size=4, lr=0.1)
    stats = run_epochs(model, x, y, library(), train, history_batch_size=2, seed=0)
    counts = stats["steps"], stats["new_sample_passes"], stats["history_sample_passes"]
    assert counts == (6, 20, 12)
    assert 0 <= stats["conflict_steps"] <= 6 and -1 <= stats["mean_cosine"] <= 1
    fine = run_epochs(
        model, x, y, None, TransferTrainConfig(rule="finetune", epochs=1, batch_size=4), 2, seed=0
    )
    assert (fine["steps"], fine["history_sample_passes"], fine["mean_cosine"]) == (3, 0, None)


def test_interpolate_blends_floating_entries_and_keeps_the_counter():
    start = {"w": torch.tensor([0.0, 4.0]), "n": torch.tensor(3)}
    end = {"w": torch.tensor([2.0, 0.0]), "n": torch.tensor(7)}
    out = interpolate(start, end, 0.25)
    assert out["w"].tolist() == [0.5, 3.0] and out["n"].item() == 7


def test_run_epochs_keeps_the_point_on_the_line_from_the_meta_model():
    x, y = np.random.default_rng(0).normal(size=(8, 1, 1)).astype(np.float32), np.arange(8) % 2

    def trained(alpha):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(1, 2))
        meta = copy.deepcopy(model.state_dict())
        train = TransferTrainConfig(rule="finetune", epochs=2, batch_size=4, interpolate=alpha)
        run_epochs(model, x, y, None, train, 4, seed=0)
        return meta, model.state_dict()

    meta, full = trained(1.0)
    _, blended = trained(0.3)
    for k in meta:
        torch.testing.assert_close(blended[k], meta[k] + 0.3 * (full[k] - meta[k]))
    assert not torch.equal(full["1.weight"], meta["1.weight"])


# --- the job file -----------------------------------------------------------------------------

BASE = {
    "meta": {"checkpoint": "m", "x_shape": [1, 6], "num_classes": 3},
    "new_source": {"kind": "npz", "path": "new.npz"},
    "old_source": {"kind": "npz", "path": "old.npz"},
}


def raw(**sections):
    out = json.loads(json.dumps(BASE))
    for name, value in sections.items():
        if value is None:
            out.pop(name)
        elif isinstance(value, dict) and name in out:
            out[name].update(value)
        else:
            out[name] = value
    return out


def test_defaults_and_the_history_batch_size():
    cfg = transfer_from_dict(raw())
    assert (cfg.train.rule, cfg.history.rule, cfg.history_batch_size) == (
        "similarity",
        "herding",
        32,
    )
    assert transfer_from_dict(raw(history={"batch_size": 6})).history_batch_size == 6


@pytest.mark.parametrize(
    "job, field",
    [
        (raw(train={"rulez": "sum"}), "train.rulez"),
        (raw(train={"epochs": "ten"}), "train.epochs"),
        (raw(train={"rule": "replay"}), "train.rule"),
        (raw(train={"momentum": 1.0}), "train.momentum"),
        (raw(meta={"checkpoint": None}), "meta.checkpoint"),
        (raw(meta={"x_shape": [1, "a"]}), r"meta.x_shape\[1\]"),
        (raw(new_source=None), "new_source"),
        (raw(old_source={"kindd": "npz"}), "old_source.kindd"),
        (raw(history={"rule": "random"}), "history.rule"),
        (raw(train={"num_workers": 2}, history={"batch_size": 3}), "history.batch_size"),
        (raw(train={"cos_scale": 0.0}), "train.cos_scale"),
        (raw(train={"rule": "finetune", "distill": 1.0}), "train.distill"),
        (raw(train={"interpolate": 1.5}), "train.interpolate"),
    ],
)
def test_mistakes_name_the_field(job, field):
    with pytest.raises(ConfigError, match=field):
        transfer_from_dict(job)


def test_a_checkpoint_that_does_not_fit_the_meta_section_is_named(tmp_path):
    from raysift.transfer.job import load_meta

    cfg = transfer_from_dict(raw(meta={"checkpoint": str(tmp_path)}))
    with pytest.raises(ConfigError, match="meta.checkpoint"):
        load_meta(cfg.meta)  # no model.pt yet
    save_meta(tmp_path)
    cfg.meta.x_shape = [1, 7]
    with pytest.raises(ConfigError, match="meta.x_shape"):
        load_meta(cfg.meta)


def test_the_cli_names_a_missing_job_file(tmp_path, capsys):
    assert main(["transfer", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml does not exist" in capsys.readouterr().err


# --- one run on a local Ray: two workers, 40 new samples --------------------------------------

MODEL = {"name": "mlp", "kwargs": {"hidden": [8]}}


def save_meta(folder):
    from raysift.config import ModelConfig
    from raysift.training.models import build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(**MODEL), (1, 6), 3)
    torch.save({"model": model.state_dict()}, folder / "model.pt")


def scene(path, n, n_test, shift, seed):
    rng = np.random.default_rng(seed)

    def part(k):
        y = np.arange(k) % 3
        x = rng.normal(size=(k, 1, 6)) + shift + np.eye(3, 6)[y][:, None, :] * 2
        return x.astype(np.float32), y

    (x, y), (xt, yt) = part(n), part(n_test)
    np.savez(path, x=x, label=y, x_test=xt, label_test=yt)


def test_run_transfer_on_ray_writes_model_library_and_summary(tmp_path, ray_session):
    from raysift.data.ingest import read_split
    from raysift.transfer.config import load_transfer
    from raysift.transfer.job import collect_rows, load_meta, run_transfer

    (tmp_path / "meta").mkdir()
    save_meta(tmp_path / "meta")
    scene(tmp_path / "old.npz", 60, 30, 0.0, seed=1)
    scene(tmp_path / "new.npz", 40, 21, 1.5, seed=2)
    job = raw(
        meta={"checkpoint": str(tmp_path / "meta"), "model": MODEL},
        new_source={"path": str(tmp_path / "new.npz"), "val_fraction": 0.0},
        old_source={"path": str(tmp_path / "old.npz"), "val_fraction": 0.0},
        history={"per_class": 4, "batch_size": 4},
        train={"rule": "agem", "epochs": 3, "batch_size": 8, "lr": 0.1, "num_workers": 2},
        run_dir=str(tmp_path / "run"),
        seed=5,
    )
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    cfg = load_transfer(tmp_path / "job.yaml")
    summary = run_transfer(cfg, echo=lambda line: None)

    run = tmp_path / "run"
    assert json.loads((run / "summary.json").read_text()) == summary
    assert (summary["new_samples"], summary["steps"]) == (40, 15)  # 3 epochs of 5 batches
    assert summary["train_sample_passes"] == {"new": 120, "history": 60, "total": 180}
    assert summary["history"]["size"] == 12 and summary["history"]["origin"] == "built"
    assert summary["forgetting"] == pytest.approx(
        summary["old_scene_accuracy"]["before"] - summary["old_scene_accuracy"]["after"]
    )
    final = HistoryLibrary.load(run / "final")
    assert final.counts().tolist() == [4, 4, 4]

    # Two DDP workers took the step one process takes on the whole global batches.
    model = load_meta(cfg.meta)
    _, y, x = collect_rows(read_split(run / "data/new", "train"))
    run_epochs(model, x, y, HistoryLibrary.load(run / "history"), cfg.train, 4, cfg.seed)
    ray_weights = torch.load(run / "final/model.pt", weights_only=True)["model"]
    for name, value in model.state_dict().items():
        torch.testing.assert_close(ray_weights[name], value, atol=1e-5, rtol=1e-5)

    with pytest.raises(ConfigError, match="run_dir"):
        run_transfer(cfg)
    # The next transfer starts from this one's final/, but never inside the run it replaces.
    cfg.meta.checkpoint = cfg.history.library = str(run / "final")
    with pytest.raises(ConfigError, match="meta.checkpoint: .* lies inside run_dir"):
        run_transfer(cfg, overwrite=True)
