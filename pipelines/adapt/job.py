"""`raysift adapt JOB.yaml`: a detector adapted to a new scene from a person's checks (M5).

    generate both scenes (Ray Data) -> the meta-detector (loaded, or trained on the old scene)
    -> it predicts on the new scene's training images, keeping the boxes under the threshold
    -> a simulated person checks them (`operators.feedback`: correct / missed / false)
    -> the check's labels as dense targets -> history library of old-scene images under the
    meta-detector -> mAP@0.5 before -> Ray Train: transfer steps mixing history and new
    gradients (`transfer.fit_transfer`) -> mAP@0.5 after -> library re-selected under the new
    detector -> final/, summary.json

The simulated person is exact: the boxes they verify are the true boxes, so every target is
either found (correct) or added (missed), and every confident box on no target is rejected
(false). Their labels follow M5 step 2 as `operators.feedback` states it; negatives are
background cells of the dense target, weighted by `check.negative_weight`.

RUN_DIR holds `adapt.json` (the job as run), `data/{old,new}/{train,test}` (the images as
Parquet: id, x, boxes), `meta/` (the meta-detector), `check/` (the feedback operator's rows,
one per checked image), `history/` (the library replayed), `final/` (detector.pt and the
updated library) and `summary.json`. The driver holds each scene's images in memory (a few
thousand 40x40 canvases: megabytes), and so does every training worker for the new ones.
"""

from __future__ import annotations

import shutil
import time
from collections import Counter
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray
import torch

from raysift.adapt.config import AdaptConfig, SceneConfig, load_adapt
from raysift.adapt.detection_eval import mean_ap, predict
from raysift.adapt.detector import (
    DETECTOR,
    DETECTOR_FILE,
    TinyDetector,
    detector_gradient_fn,
    encode_targets,
    load_detector,
    save_detector,
)
from raysift.adapt.scenes import make_images
from raysift.config import ConfigError
from raysift.data.parquet import read_parquet
from raysift.job.rounds import check_workers, init_ray
from raysift.operators.contract import ID, LABEL, X, data_errors, from_columns
from raysift.operators.feedback import (
    BOXES,
    CATEGORIES,
    IMAGE_ID,
    PRED_BOXES,
    PRED_SCORES,
    TRUE_BOXES,
    feedback,
)
from raysift.run_state import atomic_write_json, replace_via_staging
from raysift.seeding import derive_seed
from raysift.transfer.config import TransferTrainConfig
from raysift.transfer.history import TARGET, HistoryLibrary
from raysift.transfer.job import (
    TransferPlan,
    add_job_command,
    finish,
    fit_transfer,
    refuse_existing,
)

JOB_COPY = "adapt.json"
SUMMARY = "summary.json"
TRUE = "boxes"  # a scene row's true boxes
SPLITS = (("old", "train"), ("old", "test"), ("new", "train"), ("new", "test"))


def scene_rows(batch: pa.Table, scene: SceneConfig, split: str, seed: int) -> pa.Table:
    """map_batches function: ids (`ray.data.range`) -> the scene's images and true boxes."""
    from ray.data.extensions import ArrowTensorArray

    ids = batch[ID].to_numpy()
    images = make_images(scene, split, ids, seed)
    return pa.table(
        {
            ID: pa.array(ids, pa.int64()),
            X: ArrowTensorArray.from_numpy(images.x),
            TRUE: pa.array([b.tolist() for b in images.boxes], type=BOXES),
        }
    )


class CheckInput:
    """map_batches callable (pyarrow): scene rows -> the feedback operator's input rows.

    The detector's boxes scoring at least `min_score`, before non-maximum suppression (M5
    step 2's re-prediction: the candidates under the threshold stay), beside the true boxes,
    which stand in for the boxes the person verifies.
    """

    def __init__(self, folder: str, min_score: float):
        torch.set_num_threads(1)
        self.model = load_detector(folder)
        self.min_score = min_score

    def __call__(self, batch: pa.Table) -> pa.Table:
        x = batch[X].combine_chunks().to_numpy()
        found = predict(self.model, x, min_score=self.min_score)
        return pa.table(
            {
                IMAGE_ID: batch[ID],
                PRED_BOXES: pa.array([b.tolist() for b, _ in found], type=BOXES),
                PRED_SCORES: pa.array([s.tolist() for _, s in found], type=pa.list_(pa.float32())),
                TRUE_BOXES: batch[TRUE].cast(BOXES),
            }
        )


def run_adapt(cfg: AdaptConfig, *, overwrite: bool = False, echo=print) -> dict:
    """Run the M5 loop to the end; returns (and writes) its summary."""
    started = time.perf_counter()
    run_dir = Path(cfg.run_dir)
    _check_inputs(cfg, run_dir, overwrite)
    init_ray()
    check_workers(cfg.train.num_workers, cfg.train.use_gpu)
    seconds = {}

    t = time.perf_counter()
    replace_via_staging(run_dir, partial(_write_scenes, cfg))
    data = {(scene, split): _read_rows(run_dir / "data" / scene / split) for scene, split in SPLITS}
    seconds["scenes"] = time.perf_counter() - t
    old_train, old_test = data["old", "train"], data["old", "test"]
    new_train, new_test = data["new", "train"], data["new", "test"]

    t = time.perf_counter()
    meta_dir = run_dir / "meta"
    meta_dir.mkdir()
    if cfg.meta.checkpoint:
        shutil.copy2(Path(cfg.meta.checkpoint) / DETECTOR_FILE, meta_dir / DETECTOR_FILE)
        meta_origin = "loaded"
    else:
        _train_meta(cfg, old_train, meta_dir)
        meta_origin = "trained"
    meta = _load(meta_dir, "meta.checkpoint")
    seconds["meta"] = time.perf_counter() - t

    t = time.perf_counter()
    check = _check(cfg, run_dir / "data" / "new" / "train", meta_dir, run_dir / "check")
    canvas = cfg.new_scene.canvas
    y_new = np.stack(
        [
            encode_targets(labels, canvas, negatives, cfg.check.negative_weight)
            for labels, negatives in zip(check["label_boxes"], check["negative"])
        ]
    )
    seconds["check"] = time.perf_counter() - t
    counts = Counter(check["category"])
    echo(
        f"[{cfg.name}] meta-detector ({meta_origin}) checked on {len(y_new)} new images: "
        + ", ".join(f"{counts[c]} {c}" for c in CATEGORIES)
    )

    t = time.perf_counter()
    library = HistoryLibrary(cfg.history.size, 1, cfg.history.rule, seed=cfg.seed)
    _offer(library, meta, old_train, cfg.old_scene.canvas)
    library.save(run_dir / "history")
    held_before = library.ids_.copy()
    seconds["history"] = time.perf_counter() - t

    t = time.perf_counter()
    before = {"new": mean_ap(meta, *new_test[1:]), "old": mean_ap(meta, *old_test[1:])}
    seconds["evaluate"] = time.perf_counter() - t

    t = time.perf_counter()
    plan = TransferPlan(
        partial(load_detector, str(meta_dir.resolve())),
        save_detector,
        DETECTOR,
        TARGET,
        cfg.train,
        cfg.history_batch_size,
        cfg.seed,
        str((run_dir / "history").resolve()),
    )
    rows = from_columns({ID: new_train[0], X: new_train[1], TARGET: y_new})
    checkpoint, metrics = fit_transfer(plan, rows, run_dir / "train")
    seconds["train"] = time.perf_counter() - t
    final = run_dir / "final"
    final.mkdir()
    shutil.copy2(Path(checkpoint) / DETECTOR_FILE, final / DETECTOR_FILE)
    model = load_detector(final)

    t = time.perf_counter()
    after = {"new": mean_ap(model, *new_test[1:]), "old": mean_ap(model, *old_test[1:])}
    seconds["evaluate"] += time.perf_counter() - t

    t = time.perf_counter()
    if library.rule == "herding":
        _offer(library, model, old_train, cfg.old_scene.canvas)
    library.save(final)
    seconds["history"] += time.perf_counter() - t
    seconds["total"] = time.perf_counter() - started

    replaced = int((~np.isin(held_before, library.ids_)).sum())
    summary = {
        "name": cfg.name,
        "rule": cfg.train.rule,
        "new_images": len(y_new),
        "meta": meta_origin,
        "check": {
            "images": {c: counts[c] for c in CATEGORIES},
            "boxes": {k: int(np.sum(check[f"n_{k}"])) for k in ("correct", "missed", "false")},
        },
        "new_scene_map50": {"before": before["new"], "after": after["new"]},
        "old_scene_map50": {"before": before["old"], "after": after["old"]},
        "forgetting": before["old"] - after["old"],
        "epochs": cfg.train.epochs,
        "steps": metrics["steps"],
        "train_sample_passes": {
            "new": metrics["new_sample_passes"],
            "history": metrics["history_sample_passes"],
            "total": metrics["new_sample_passes"] + metrics["history_sample_passes"],
        },
        "mixing": {
            k: metrics.get(k) for k in ("mean_cosine", "mean_w_t", "mean_w_h", "conflict_steps")
        },
        "history": {
            "rule": library.rule,
            "size": len(library),
            "replaced_after_transfer": replaced,
        },
        "model": str(final / DETECTOR_FILE),
        "library": str(final),
        "wall_seconds": seconds,
    }
    return finish(run_dir, summary, echo, metric="map50", label="mAP@0.5 ", digits=3)


def _check_inputs(cfg: AdaptConfig, run_dir: Path, overwrite: bool) -> None:
    """What can be checked before anything is written or started."""
    refuse_existing(run_dir, overwrite)
    checkpoint = cfg.meta.checkpoint
    if checkpoint:
        if not (Path(checkpoint) / DETECTOR_FILE).is_file():
            raise ConfigError(f"meta.checkpoint: {checkpoint} holds no {DETECTOR_FILE}")
        if Path(checkpoint).resolve().is_relative_to(run_dir.resolve()):
            raise ConfigError(
                f"meta.checkpoint: {checkpoint} lies inside run_dir {run_dir}, "
                f"which the run replaces; copy it out or choose another run_dir"
            )
        _load(Path(checkpoint), "meta.checkpoint")


def _write_scenes(cfg: AdaptConfig, staging: Path) -> None:
    """Every split of both scenes as Parquet, generated by Ray Data tasks (seeded per image)."""
    scenes = {"old": cfg.old_scene, "new": cfg.new_scene}
    for scene, split in SPLITS:
        n = getattr(cfg.images, f"{scene}_{split}")
        rows = ray.data.range(n).map_batches(
            scene_rows,
            fn_kwargs={"scene": scenes[scene], "split": split, "seed": cfg.seed},
            batch_format="pyarrow",
        )
        rows.write_parquet(str(staging / "data" / scene / split))
    atomic_write_json(staging / JOB_COPY, cfg.to_dict())


def _read_rows(path: Path) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """A split's (ids, images, true boxes), ordered by id."""
    import ray.data.extensions  # noqa: F401  registers the tensor type for reading `x`

    table = pq.read_table(path).sort_by(ID)
    boxes = [np.asarray(b, np.float32).reshape(-1, 4) for b in table[TRUE].to_pylist()]
    return table[ID].to_numpy(), table[X].combine_chunks().to_numpy(), boxes


def _load(folder: Path, field: str) -> TinyDetector:
    try:
        return load_detector(folder)
    except (RuntimeError, KeyError) as err:  # not a detector.pt this version wrote
        raise ConfigError(
            f"{field}: {folder / DETECTOR_FILE} is not a TinyDetector "
            f"checkpoint: {str(err).splitlines()[0]}"
        ) from None


def _train_meta(cfg: AdaptConfig, old_train, folder: Path) -> None:
    """The meta-detector: the same transfer steps with rule finetune from a fresh net, on the
    old scene's training images and their true boxes."""
    m = cfg.meta
    train = TransferTrainConfig(
        rule="finetune",
        epochs=m.epochs,
        batch_size=m.batch_size,
        lr=m.lr,
        momentum=m.momentum,
        num_workers=cfg.train.num_workers,
        use_gpu=cfg.train.use_gpu,
        threads_per_worker=cfg.train.threads_per_worker,
    )
    ids, x, boxes = old_train
    y = np.stack([encode_targets(b, cfg.old_scene.canvas) for b in boxes])
    plan = TransferPlan(
        partial(fresh_detector, m.width, derive_seed(cfg.seed, "meta init")),
        save_detector,
        DETECTOR,
        TARGET,
        train,
        m.batch_size,
        cfg.seed,
        None,
    )
    checkpoint, _ = fit_transfer(
        plan, from_columns({ID: ids, X: x, TARGET: y}), folder.parent / "meta_train"
    )
    shutil.copy2(Path(checkpoint) / DETECTOR_FILE, folder / DETECTOR_FILE)


def fresh_detector(width: int, seed: int) -> TinyDetector:
    torch.manual_seed(seed)
    return TinyDetector(width)


def _check(cfg: AdaptConfig, images: Path, meta_dir: Path, out: Path) -> dict:
    """The meta-detector's boxes checked by the simulated person; the feedback operator's rows
    are written to `out` and returned as columns, ordered by image id."""
    c = cfg.check
    rows = read_parquet(str(images)).map_batches(
        CheckInput,
        fn_constructor_kwargs={"folder": str(meta_dir.resolve()), "min_score": c.min_score},
        compute=ray.data.ActorPoolStrategy(size=1),
        batch_format="pyarrow",
    )
    with data_errors():
        checked = feedback(rows, c.conf_threshold, c.iou_threshold).materialize()
    checked.write_parquet(str(out))
    table = pa.concat_tables(ray.get(checked.to_arrow_refs())).sort_by(IMAGE_ID)
    columns = table.to_pydict()
    for name in ("label_boxes", "negative"):
        columns[name] = [np.asarray(b, np.float32).reshape(-1, 4) for b in columns[name]]
    return columns


def _offer(
    library: HistoryLibrary, model: TinyDetector, rows, canvas: int, batch_size: int = 1024
) -> None:
    """Offer the old scene's training images (one group, label 0) with their dense targets."""
    ids, x, boxes = rows
    grad_fn = detector_gradient_fn(model)
    for s in range(0, len(ids), batch_size):
        part = slice(s, s + batch_size)
        y = np.stack([encode_targets(b, canvas) for b in boxes[part]])
        library.update(
            {ID: ids[part], LABEL: np.zeros(len(y), np.int64), X: x[part], TARGET: y}, grad_fn
        )


def add_commands(subparsers) -> None:
    """Register `adapt` on the CLI's subparsers."""
    add_job_command(subparsers, "adapt", load_adapt, run_adapt)
