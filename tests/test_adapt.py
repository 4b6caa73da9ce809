"""The adapt job (M5 end to end): its file's mistakes by name, and one small run on Ray."""

import json
import math

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from raysift.adapt.config import adapt_from_dict, load_adapt
from raysift.cli import main
from raysift.config import ConfigError


@pytest.mark.parametrize(
    "job, field",
    [
        ({"old_scene": {"sizee": [1, 2]}}, "old_scene.sizee"),
        ({"old_scene": {"canvas": 42}}, "old_scene.canvas"),
        ({"new_scene": {"noise": 3.0}}, "new_scene.noise"),
        ({"new_scene": {"name": "general"}}, "new_scene.name"),
        ({"images": {"new_train": 0}}, "images.new_train"),
        ({"check": {"min_score": 0.5}}, "check.min_score"),
        ({"check": {"iou_threshold": 0.0}}, "check.iou_threshold"),
        ({"history": {"rule": "random"}}, "history.rule"),
        ({"train": {"rule": "replay"}}, "train.rule"),
        ({"train": {"joint_forward": True}, "new_scene": {"canvas": 48}}, "new_scene.canvas"),
        (
            {"train": {"num_workers": 2, "batch_size": 16}, "history": {"batch_size": 3}},
            "history.batch_size",
        ),
    ],
)
def test_mistakes_name_the_field(job, field):
    with pytest.raises(ConfigError, match=field):
        adapt_from_dict(job)


def test_defaults_are_the_detector_s():
    cfg = adapt_from_dict({})
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.history_batch_size) == (10, 16, 16)
    assert cfg.new_scene.name == "new" and cfg.old_scene.name == "general"


def test_the_cli_names_a_missing_job_file_and_a_missing_checkpoint(tmp_path, capsys):
    assert main(["adapt", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml does not exist" in capsys.readouterr().err
    (tmp_path / "job.yaml").write_text(
        yaml.safe_dump({"meta": {"checkpoint": str(tmp_path)}, "run_dir": str(tmp_path / "run")})
    )
    assert main(["adapt", str(tmp_path / "job.yaml")]) == 2
    assert "meta.checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_run_adapt_on_ray_checks_labels_transfers_and_updates_the_library(tmp_path, ray_session):
    from raysift.adapt.detector import DETECTOR, TinyDetector, encode_targets, save_detector
    from raysift.adapt.job import SUMMARY, run_adapt
    from raysift.adapt.scenes import make_images
    from raysift.transfer.history import HistoryLibrary
    from raysift.transfer.step import run_epochs

    # A meta-detector that calls every cell a 10x10 target: some boxes land on digits
    # (correct), the rest are false alarms, and digits no box fits are missed.
    torch.manual_seed(0)
    meta = TinyDetector(8)
    with torch.no_grad():
        meta.head.bias.copy_(torch.tensor([0.2, 1.25, 1.25, 1.25, 1.25]))
    (tmp_path / "meta").mkdir()
    save_detector(meta, tmp_path / "meta")
    scene = {"canvas": 24, "targets": [1, 2], "size": [8, 11]}
    job = {
        "name": "tiny",
        "seed": 3,
        "run_dir": str(tmp_path / "run"),
        "old_scene": scene,
        "new_scene": scene | {"size": [7, 10]},
        "images": {"old_train": 40, "old_test": 10, "new_train": 12, "new_test": 10},
        "meta": {"checkpoint": str(tmp_path / "meta")},
        "history": {"size": 8, "batch_size": 4},
        "train": {"rule": "pcgrad", "epochs": 2, "batch_size": 5, "lr": 0.01},
    }
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    cfg = load_adapt(tmp_path / "job.yaml")
    summary = run_adapt(cfg, echo=lambda line: None)

    run = tmp_path / "run"
    assert json.loads((run / SUMMARY).read_text()) == summary
    assert (summary["new_images"], summary["steps"]) == (12, 2 * math.ceil(12 / 5))
    assert summary["train_sample_passes"] == {"new": 24, "history": 24, "total": 48}
    assert summary["forgetting"] == pytest.approx(
        summary["old_scene_map50"]["before"] - summary["old_scene_map50"]["after"]
    )

    # The check: one row per new image, the person's boxes all accounted for.
    new = make_images(cfg.new_scene, "train", range(12), seed=3)
    checked = pq.read_table(run / "check").sort_by("image_id").to_pydict()
    assert checked["image_id"] == list(range(12))
    boxes = summary["check"]["boxes"]
    assert boxes["correct"] + boxes["missed"] == sum(len(b) for b in new.boxes)
    assert boxes["correct"] > 0 and boxes["false"] > 0 and boxes["missed"] > 0
    assert sum(summary["check"]["images"].values()) == 12
    for label_boxes, true in zip(checked["label_boxes"], new.boxes):
        assert len(label_boxes) == len(true)

    # The Ray Train run took the steps one process takes on the checked labels.
    y = np.stack(
        [
            encode_targets(np.reshape(lb, (-1, 4)), 24, np.reshape(neg, (-1, 4)))
            for lb, neg in zip(checked["label_boxes"], checked["negative"])
        ]
    )
    model = TinyDetector(8)
    model.load_state_dict(torch.load(tmp_path / "meta/detector.pt")["model"])
    run_epochs(
        model, new.x, y, HistoryLibrary.load(run / "history"), cfg.train, 4, cfg.seed, DETECTOR
    )
    trained = torch.load(run / "final/detector.pt")["model"]
    for name, value in model.state_dict().items():
        torch.testing.assert_close(trained[name], value, atol=1e-5, rtol=1e-5)
    assert HistoryLibrary.load(run / "final").targets_.shape == (8, 6, 6, 6)

    with pytest.raises(ConfigError, match="run_dir"):
        run_adapt(cfg)
