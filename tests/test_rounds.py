"""End to end on a local Ray: M2 on digits with two workers in one Ray Train run, the shipped
model, a worker killed mid-round, the driver killed between and within rounds, run-dir rules."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import yaml

import raysift
from raysift.config import ConfigError, from_dict
from raysift.data.ingest import load_info
from raysift.data.share import owner
from raysift.job.messages import EVENTS, EpochDone, PhaseDone, parse
from raysift.job.rounds import format_summary, run_job
from raysift.training.evaluate import balanced_accuracy
from raysift.training.saved import load_model

SEED = 3


def _raw(tmp_path, name, marker):
    return {
        "name": name,
        "seed": SEED,
        "run_dir": str(tmp_path / name),
        "source": {"kind": "digits", "val_fraction": 0.15, "test_fraction": 0.2},
        "model": {
            "name": "crashing_model:crash_once_cnn2d",
            "kwargs": {"channels": 8, "hidden": 32, "marker": str(marker), "crash_at": 30},
        },
        "train": {
            "num_workers": 2,
            "batch_size": 32,
            "epochs_per_round": 4,
            "lr": 0.01,
            "final_epochs": 2,
            "checkpoint_every_s": 0,
        },
        "strategy": {
            "name": "m2",
            "initial_ratio": 0.3,
            "hard_per_round": 40,
            "reps_per_round": 20,
            "cluster_k": 4,
            "max_rounds": 2,
        },
        "score": {"batch_size": 128},
    }


def _comparable(run_dir):
    manifest = pq.read_table(run_dir / "manifest.parquet").to_pylist()
    rounds = json.loads((run_dir / "rounds.json").read_text())
    measured = ("seconds_", "peak_rss_mb")  # the clock's and the OS's figures, not the run's

    def kept(d):
        return {
            k: [kept(p) for p in v] if k == "curve" else v
            for k, v in d.items()
            if not k.startswith(measured)
        }

    return manifest, [kept(r) for r in rounds]


@pytest.fixture(scope="module")
def finished_run(ray_session, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("runs")
    (tmp / "no-crash").touch()
    job = from_dict(_raw(tmp, "e2e", tmp / "no-crash"))
    return job, raysift.run(job).summary_dict  # the notebook API's run is run_job's


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
    assert summary["compute"] == pytest.approx(
        summary["train_sample_passes"] + summary["infer_sample_passes"] / 3
    )
    # Each worker trains its own rows of the subset; every epoch both step as far as the one
    # holding more: four epochs a round, two final ones.
    expected_train = 0
    for r, epochs in ((0, 4), (1, 4), (1, 2)):
        held = np.bincount(owner(manifest["id"][manifest["round"] <= r].to_numpy(), SEED, 2))
        expected_train += epochs * 2 * held.max()
    assert summary["train_sample_passes"] == expected_train
    assert summary["test_accuracy"] > 0.5  # digits are easy: far above the 0.1 of chance
    # The wall clock splits into the phases and what lies outside them (the ingest, Ray
    # Train's start and the test), which the printed summary names.
    wall = summary["wall_seconds"]
    inside = sum(r["seconds_round"] for r in summary["per_round"])
    assert wall["outside_phases"] == pytest.approx(wall["total"] - inside)
    assert wall["ingest"] < wall["outside_phases"] < wall["total"]
    assert f"start-up and test {wall['outside_phases']:.0f})" in format_summary(summary)
    assert (run_dir / "final" / "model.pt").exists() and (run_dir / "summary.json").exists()
    # What the driver showed: rank 0's messages, a line each, every epoch and phase once.
    events = [parse(line) for line in (run_dir / EVENTS).read_text().splitlines()]
    assert [m.record["phase"] for m in events if isinstance(m, PhaseDone)] == [
        "round",
        "round",
        "final",
    ]
    assert sum(isinstance(m, EpochDone) for m in events) == 4 + 4 + 2


def test_the_notebook_api_reads_the_run_as_tables(finished_run):
    job, summary = finished_run
    run = raysift.Run.load(job.run_dir)
    rounds = run.rounds
    assert list(rounds["phase"]) == ["round", "round", "final"]
    assert list(rounds["subset_size"]) == [r["subset_size"] for r in summary["per_round"]]
    assert list(rounds["val_accuracy"]) == [r["val_accuracy"] for r in summary["per_round"]]
    assert "curve" not in rounds.columns
    one = run.summary
    assert len(one) == 1 and "per_round" not in one.columns
    assert one["test_accuracy"][0] == summary["test_accuracy"]
    assert one["wall_seconds.total"][0] == summary["wall_seconds"]["total"]
    curve = run.curve  # every validation: four epochs in each round, two in the final phase
    assert len(curve) == sum(len(r["curve"]) for r in summary["per_round"])
    assert list(curve.columns[:3]) == ["phase", "round", "epoch"]
    assert len(run.manifest()) == summary["subset_size"]
    assert str(run).startswith("[e2e] m2: test accuracy")


def _accuracy(model, split_dir, x_shape):
    table = pq.read_table(split_dir)
    x = np.stack(table["x"].to_numpy(zero_copy_only=False)).reshape(-1, *x_shape)
    with torch.no_grad():
        pred = model(torch.from_numpy(x.astype(np.float32))).argmax(1).numpy()
    return float((pred == table["label"].to_numpy()).mean())


def test_the_shipped_model_is_the_final_phase_and_the_one_tested(finished_run):
    job, summary = finished_run
    run_dir = Path(job.run_dir)
    info = load_info(run_dir / "data")
    model = load_model(job, str(run_dir / "final"), info.num_classes, info.x_shape)
    assert summary["per_round"][-1]["phase"] == "final"
    assert _accuracy(model, run_dir / "data" / "val", info.x_shape) == pytest.approx(
        summary["val_accuracy"]
    )
    assert _accuracy(model, run_dir / "data" / "test", info.x_shape) == pytest.approx(
        summary["test_accuracy"]
    )


def test_balanced_accuracy_is_the_mean_recall_of_the_classes_present():
    # class 0: 3 of 4 right, class 1: no samples, class 2: 1 of 2 right
    correct, count = [3.0, 0.0, 1.0], [4.0, 0.0, 2.0]
    assert balanced_accuracy(np.array(correct), np.array(count)) == pytest.approx(0.625)
    assert balanced_accuracy(torch.tensor(correct), torch.tensor(count)) == pytest.approx(0.625)
    assert balanced_accuracy(np.zeros(3), np.zeros(3)) == 0.0


def test_a_worker_killed_mid_round_with_its_rows_on_disk_gives_the_same_run(finished_run, tmp_path):
    job, summary = finished_run
    marker = tmp_path / "crashed-once"
    raw = _raw(tmp_path, "crashed", marker)
    raw["train"]["cache_mb"] = 0  # every feature row on disk: the same numbers again
    crashed = from_dict(raw)
    again = run_job(crashed, echo=lambda *_: None)
    assert marker.exists()  # rank 1 died at its 30th training step; Ray Train restarted both
    assert _comparable(tmp_path / "crashed") == _comparable(Path(job.run_dir))
    assert again["test_accuracy"] == summary["test_accuracy"]


def _driver(job_file, *args):
    """`raysift run` in its own process group (with the Ray it starts), lines on a pipe."""
    return subprocess.Popen(
        [sys.executable, "-m", "raysift.cli", "run", str(job_file), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def _kill(proc):
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _checkpoints(run_dir):
    return {p.name for p in (run_dir / "train" / "job").glob("checkpoint_*") if p.is_dir()}


def test_the_driver_killed_between_and_within_rounds_resumes_to_the_same_run(
    finished_run, tmp_path
):
    job, summary = finished_run
    (tmp_path / "no-crash").touch()
    raw = _raw(tmp_path, "killed", tmp_path / "no-crash")
    job_file = tmp_path / "killed.yaml"
    job_file.write_text(yaml.safe_dump(raw))
    run_dir = tmp_path / "killed"

    first = _driver(job_file)  # killed right after round 0's line: between rounds
    for line in first.stdout:
        if "round 0:" in line:
            break
    _kill(first)
    with pytest.raises(ConfigError, match="--resume"):
        run_job(from_dict(raw), echo=lambda *_: None)

    second = _driver(job_file, "--resume")  # killed at round 1's first epoch checkpoint
    seen, deadline = _checkpoints(run_dir), time.monotonic() + 300
    while not (_checkpoints(run_dir) - seen) and time.monotonic() < deadline:
        time.sleep(0.05)
    _kill(second)
    rounds = json.loads((run_dir / "rounds.json").read_text())
    assert [r["round"] for r in rounds] == [0]  # round 1 was under way

    # The last resume is not killed: it runs here, on the session's Ray (one Ray start fewer).
    resumed = run_job(from_dict(raw), resume=True, echo=lambda *_: None)
    assert _comparable(run_dir) == _comparable(Path(job.run_dir))
    assert resumed["test_accuracy"] == summary["test_accuracy"]
    assert json.loads((run_dir / "summary.json").read_text()) == resumed


def test_resume_refuses_a_different_job(finished_run):
    job, _ = finished_run
    import dataclasses

    other = dataclasses.replace(job, seed=4)
    with pytest.raises(ConfigError, match="differs"):
        run_job(other, resume=True, echo=lambda *_: None)


def test_too_many_workers_stops_before_any_output(ray_session, tmp_path):
    job = from_dict(_raw(tmp_path, "e2e", tmp_path / "m"))
    job.train.num_workers = 64
    with pytest.raises(ConfigError, match="train.num_workers: 64"):
        run_job(job, echo=lambda *_: None)
    assert not (tmp_path / "e2e").exists()
