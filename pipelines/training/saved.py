"""A model file a run wrote, and the spec inside it that rebuilds the model from its weights.

Every model file holds `{"model": state_dict, "spec": model_spec(...)}`, so `raysift score`, a
transfer's meta-model and a resumed run rebuild the network without the job that trained it.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch

from raysift.config import JobConfig, ModelConfig, from_dict
from raysift.operators.contract import DataError
from raysift.training.models import build_model

MODEL_FILE = "model.pt"


def model_spec(model: ModelConfig, num_classes: int, x_shape) -> dict:
    """What rebuilds a model from its weights alone; every model file a run writes holds it."""
    return {"model": asdict(model), "num_classes": int(num_classes), "x_shape": list(x_shape)}


def load_model(job: JobConfig, checkpoint_dir: str, num_classes: int, x_shape) -> torch.nn.Module:
    """The model of a checkpoint folder, built as `job` says."""
    return saved_model(
        Path(checkpoint_dir) / MODEL_FILE, model_spec(job.model, num_classes, x_shape)
    )[0]


def saved_model(path: str | Path, spec: dict | None = None) -> tuple[torch.nn.Module, dict]:
    """(model in eval mode, its spec) from a run directory (its final/model.pt) or a model file
    a run wrote; `spec` for a file that predates the spec inside it (else its run's job.json
    and data/info.json are used)."""
    path = Path(path)
    file = path / "final" / MODEL_FILE if path.is_dir() else path
    if not file.is_file():
        raise DataError(
            f"{path}: no model here: give a run directory (with final/{MODEL_FILE}) "
            f"or a {MODEL_FILE} that a run wrote"
        )
    try:
        saved = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:
        raise DataError(f"{file}: not a model file raysift wrote ({err})") from None
    spec = (
        spec
        or saved.get("spec")
        or _spec_of_run(path if path.is_dir() else file.parent.parent, file)
    )
    model = build_model(ModelConfig(**spec["model"]), tuple(spec["x_shape"]), spec["num_classes"])
    model.load_state_dict(saved["model"])
    return model.eval(), spec


def _spec_of_run(run_dir: Path, file: Path) -> dict:
    """The spec of an older run's model file, from the run's job.json and data/info.json."""
    job_file, info_file = run_dir / "job.json", run_dir / "data" / "info.json"
    if not (job_file.is_file() and info_file.is_file()):
        raise DataError(
            f"{file}: no model spec inside, and no {job_file} and {info_file} "
            f"beside it to rebuild the model from"
        )
    info = json.loads(info_file.read_text())
    return model_spec(
        from_dict(json.loads(job_file.read_text())).model, info["num_classes"], info["x_shape"]
    )
