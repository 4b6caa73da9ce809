"""End to end on a local Ray: M2 on digits with two workers, resume equality, run-dir rules."""
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from pipelines import rounds, strategies
from pipelines.config import ConfigError, from_dict
from pipelines.ingest import load_info
from pipelines.rounds import run_job
from pipelines.train import balanced_accuracy, load_model


def _job(tmp_path, name="e2e", **strategy):
    return from_dict({
        "name": name, "seed": 3, "run_dir": str(tmp_path / name),
        "source": {"kind": "digits", "val_fraction": 0.15, "test_fraction": 0.2},
        "model": {"name": "cnn2d", "kwargs": {"channels": 8, "hidden": 32}},
        "train": {"num_workers": 2, "batch_size": 32, "epochs_per_round": 4, "lr": 0.01,
                  "final_epochs": 2},
        "strategy": {"name": "m2", "initial_ratio": 0.3, "hard_per_round": 40,
                     "reps_per_round": 20, "cluster_k": 4, "max_rounds": 2, **strategy},
        "score": {"batch_size": 128},
    })


def _comparable(run_dir):
    manifest = pq.read_table(run_dir / "manifest.parquet").to_pylist()
    rounds = json.loads((run_dir / "rounds.json").read_text())
    drop = {"checkpoint", "seconds_train", "seconds_score", "seconds_select"}
    return manifest, [{k: v for k, v in r.items() if k not in drop} for r in rounds]


@pytest.fixture(scope="module")
def finished_run(ray_session, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("runs")
    job = _job(tmp)
    return job, run_job(job, echo=lambda *_: None)


def test_m2_end_to_end(finished_run):
    job, summary = finished_run
    run_dir = Path(job.run_dir)
    manifest = pq.read_table(run_dir / "manifest.parquet").to_pandas()
    assert summary["rounds"] == 2 and summary["stop_reason"] == "max_rounds 2 reached"
    first = manifest[manifest["round"] == 0]
    assert set(first["reason"]) == {"initial"}
    added = manifest[manifest["round"] == 1]
    assert (added["reason"] == "hard").sum() == 40
    assert (added["reason"] == "representative").sum() == 20
    assert manifest["id"].is_unique
    assert summary["subset_size"] == len(manifest)
    per_round = summary["per_round"]
    assert [r["phase"] for r in per_round] == ["round", "round", "final"]
    assert per_round[0]["subset_size"] == len(first) and per_round[0]["hard_found"] == 40
    assert summary["compute"] == pytest.approx(summary["train_sample_passes"]
                                               + summary["infer_sample_passes"] / 3)
    # Four epochs on each round's subset, two final ones (padded to an even split between the
    # two workers).
    expected_train = sum((2 if r["phase"] == "final" else 4)
                         * (r["subset_size"] + r["subset_size"] % 2) for r in per_round)
    assert summary["train_sample_passes"] == expected_train
    assert summary["test_accuracy"] > 0.5  # digits are easy: far above the 0.1 of chance
    assert (run_dir / "final" / "model.pt").exists() and (run_dir / "summary.json").exists()


def _accuracy(model, split_dir, x_shape):
    table = pq.read_table(split_dir)
    x = np.stack(table["x"].to_numpy(zero_copy_only=False)).reshape(-1, *x_shape)
    x = torch.from_numpy(x.astype(np.float32))
    with torch.no_grad():
        pred = model(x).argmax(1).numpy()
    return float((pred == table["label"].to_numpy()).mean())


def test_the_shipped_model_is_the_final_phase_and_the_one_tested(finished_run):
    job, summary = finished_run
    run_dir = Path(job.run_dir)
    info = load_info(run_dir / "data")
    model = load_model(job, str(run_dir / "final"), info.num_classes, info.x_shape)
    assert _accuracy(model, run_dir / "data" / "val", info.x_shape) == pytest.approx(summary["val_accuracy"])
    assert _accuracy(model, run_dir / "data" / "test", info.x_shape) == pytest.approx(summary["test_accuracy"])
    rounds = json.loads((run_dir / "rounds.json").read_text())
    shipped = (run_dir / "final" / "model.pt").read_bytes()
    assert shipped == (Path(rounds[-1]["checkpoint"]) / "model.pt").read_bytes()


def test_balanced_accuracy_is_the_mean_recall_of_the_classes_present():
    # class 0: 3 of 4 right, class 1: no samples, class 2: 1 of 2 right
    correct, count = [3.0, 0.0, 1.0], [4.0, 0.0, 2.0]
    assert balanced_accuracy(np.array(correct), np.array(count)) == pytest.approx(0.625)
    assert balanced_accuracy(torch.tensor(correct), torch.tensor(count)) == pytest.approx(0.625)
    assert balanced_accuracy(np.zeros(3), np.zeros(3)) == 0.0


class Interrupt(Exception):
    pass


def test_resume_after_crashes_gives_the_same_run(finished_run, tmp_path, monkeypatch):
    """Killed mid-round 0 (after training, before the state is saved), then again between the
    final phase and the test evaluation: each resume ends as the uninterrupted run did."""
    job, summary = finished_run
    crashed = _job(tmp_path, name="crashed")
    for module, name in ((strategies.M2, "next"), (rounds, "_evaluate")):
        real = getattr(module, name)

        def crash_once(*args, _module=module, _name=name, _real=real, **kwargs):
            monkeypatch.setattr(_module, _name, _real)
            raise Interrupt()

        monkeypatch.setattr(module, name, crash_once)
        with pytest.raises(Interrupt):
            run_job(crashed, resume=name == "_evaluate", echo=lambda *_: None)
    with pytest.raises(ConfigError, match="--resume"):
        run_job(crashed, echo=lambda *_: None)
    resumed = run_job(crashed, resume=True, echo=lambda *_: None)
    assert _comparable(tmp_path / "crashed") == _comparable(Path(job.run_dir))
    assert resumed["test_accuracy"] == summary["test_accuracy"]
    assert ((tmp_path / "crashed" / "final" / "model.pt").read_bytes()
            == (Path(job.run_dir) / "final" / "model.pt").read_bytes())


def test_resume_refuses_a_different_job(finished_run):
    job, _ = finished_run
    import dataclasses
    other = dataclasses.replace(job, seed=4)
    with pytest.raises(ConfigError, match="differs"):
        run_job(other, resume=True, echo=lambda *_: None)


def test_too_many_workers_stops_before_any_output(ray_session, tmp_path):
    job = _job(tmp_path)
    job.train.num_workers = 64
    with pytest.raises(ConfigError, match="train.num_workers: 64"):
        run_job(job, echo=lambda *_: None)
    assert not (tmp_path / "e2e").exists()
