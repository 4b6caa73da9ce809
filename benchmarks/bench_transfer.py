"""Transfer (M5): new- and old-scene quality per mixing rule, for a classifier and a detector.

    .venv/bin/python benchmarks/bench_transfer.py [--sizes 100 500] [--seeds 0 1 2 3 4]
        [--variants finetune replay ...] [--models classifier detector]

One table: per number of new samples N and per variant, the classifier's new- and old-scene
test accuracy and the detector's new- and old-scene mAP@0.5, mean ± std over the seeds, and
whether the variant meets the target (old scene within 1 point of the meta-model *and* new
scene at least fine-tuning's mean at the same N), with the sample-passes and seconds per run.

Classifier. Old scene: MNIST-1D as `mnist1d` generates it by default (4,000 train / 1,000
test). New scene: the same templates under a visibly different transform (more shear, more
correlated and more i.i.d. noise, another generator seed); per seed, N labelled samples drawn
from its 4,000 train, scored on its 1,000 test. The meta-model is `cnn1d` (wider with
--channels / --hidden), trained once on the old train split (AdamW), cached.

Detector. `scenes.SceneConfig` (old) and `NewSceneConfig` (new), seed 0: 2,000 old training
images, 2,000 new ones and 500 test images of each. The meta-detector (`TinyDetector(32)`, 8
epochs of the transfer step with rule finetune from scratch, the adapt job's recipe) is trained
once and cached; it predicts on the 2,000 new images once and a simulated person checks them
(`operators.feedback`, thresholds 0.5 / 0.5, true boxes as the person's): per seed, N of the
checked images are drawn with their labels, as `raysift adapt` trains on them.

Per model, every variant starts from the same meta-model, with a library built once under it
by its rule and size, and takes the same steps (epochs x ceil(N / batch)); per seed, the
variants see the same N samples in the same order. The runs are in-process: `run_epochs` at
world 1, the code each Ray Train worker of `raysift transfer` / `raysift adapt` runs.

`--prepare` only writes the classifier's meta-model and seed 0's new samples into the cache,
for the same transfer as a Ray Train job: `raysift transfer configs/transfer_mnist1d.yaml`.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import random
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from raysift.adapt.config import NewSceneConfig, SceneConfig
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
from raysift.config import ModelConfig
from raysift.operators.contract import ID, LABEL, X
from raysift.operators.feedback import review
from raysift.training.evaluate import accuracy, array_batches, hit_sums
from raysift.training.models import build_model
from raysift.training.saved import MODEL_FILE
from raysift.transfer.config import MetaConfig, TransferTrainConfig
from raysift.transfer.history import TARGET, HistoryLibrary, head_gradient_fn
from raysift.transfer.job import load_meta
from raysift.transfer.step import CLASSIFIER, run_epochs

NEW_SCENE = {"shear_scale": 2.5, "iid_noise_scale": 0.05, "seed": 7}
META = {"epochs": 30, "batch_size": 128, "lr": 0.01, "seed": 0}
MODEL = ModelConfig(name="cnn1d")  # --channels / --hidden widen it (models.cnn1d's kwargs)
DETECTOR_META = {"width": 32, "epochs": 8, "batch_size": 32, "lr": 0.01, "momentum": 0.9, "seed": 0}
DETECTOR_IMAGES = {"old_train": 2000, "old_test": 500, "new_train": 2000, "new_test": 500}


@dataclass(frozen=True)
class Variant:
    """A transfer setting: the rule and its options, and the library it replays."""

    train: dict  # TransferTrainConfig fields beyond the shared ones
    library_scale: int = 1  # times the base library size
    library_rule: str = "herding"
    history_ratio: float = 1  # history rows per step, in new batches


VARIANTS = {
    "finetune": Variant({"rule": "finetune"}),
    "replay": Variant({"rule": "sum"}),
    "agem": Variant({"rule": "agem"}),
    "pcgrad": Variant({"rule": "pcgrad"}),
    "similarity": Variant({"rule": "similarity"}),
    # Item 4 of issue 16, each alone (on plain replay, or the similarity rule's own option):
    "similarity, cos_scale 0.1": Variant({"rule": "similarity", "cos_scale": 0.1}),
    "replay, library x5": Variant({"rule": "sum"}, library_scale=5),
    "replay, reservoir": Variant({"rule": "sum"}, library_rule="reservoir"),
    "replay, distill 1": Variant({"rule": "sum", "distill": 1.0}),
    "replay, history x2": Variant({"rule": "sum"}, history_ratio=2),
    "replay, joint forward": Variant({"rule": "sum", "joint_forward": True}),
    # the joint forward under the rules that keep the detector's new scene best apart
    "agem, joint forward": Variant({"rule": "agem", "joint_forward": True}),
    # replay with the joint forward and half a new batch of history rows a step: where it keeps
    # the old scene whole and trails fine-tuning on the new one, history's share traded back
    "replay, joint forward, history x0.5": Variant(
        {"rule": "sum", "joint_forward": True}, history_ratio=0.5
    ),
    "similarity, cos_scale 0.1, joint forward": Variant(
        {"rule": "similarity", "cos_scale": 0.1, "joint_forward": True}
    ),
    # ... and together, the classifier's best in a first look (2 seeds)
    "replay, joint, x5, distill 1, history x2": Variant(
        {"rule": "sum", "joint_forward": True, "distill": 1.0}, library_scale=5, history_ratio=2
    ),
    # WiSE-FT: the weights kept halfway from the meta-model to the transferred ones, alone on
    # fine-tuning and on replay, then on the combination above
    "finetune, interpolate 0.5": Variant({"rule": "finetune", "interpolate": 0.5}),
    "replay, interpolate 0.5": Variant({"rule": "sum", "interpolate": 0.5}),
    **{
        f"replay, joint, x5, distill 1, history x2, interpolate {a}": Variant(
            {"rule": "sum", "joint_forward": True, "distill": 1.0, "interpolate": a},
            library_scale=5,
            history_ratio=2,
        )
        for a in (0.5, 0.7)
    },
}


@dataclass
class Testbed:
    """One model kind's data and meta-model, as the runs need them."""

    name: str
    meta: object  # () -> a fresh copy of the meta-model
    x_new: np.ndarray  # the pool the N new samples are drawn from
    y_new: np.ndarray
    test: dict  # scene -> () -> score of a model
    library_base: int  # per_class (classifier) or size (detector)
    classes: int
    old: dict  # id, label, x (and target) of the old training split, for libraries
    grad_fn: object
    task: object
    train: dict  # TransferTrainConfig fields
    meta_scores: dict = field(default_factory=dict)
    libraries: dict = field(default_factory=dict)

    def library(self, variant: Variant) -> HistoryLibrary:
        key = (variant.library_scale, variant.library_rule)
        if key not in self.libraries:
            lib = HistoryLibrary(
                self.library_base * variant.library_scale,
                self.classes,
                variant.library_rule,
                seed=0,
            )
            self.libraries[key] = lib.update(self.old, self.grad_fn)
        return self.libraries[key]


def mnist1d(cache: Path, **changes) -> dict:
    """MNIST-1D from `get_dataset_args()` with `changes`, as (1, 40) signals; cached as .npz."""
    from mnist1d.data import get_dataset_args, make_dataset

    key = hashlib.sha256(json.dumps(changes, sort_keys=True).encode()).hexdigest()[:12]
    path = cache / f"mnist1d-{key}.npz"
    if not path.exists():
        args = get_dataset_args()
        for name, value in changes.items():
            setattr(args, name, value)
        np_state, py_state = np.random.get_state(), random.getstate()  # it seeds global RNGs
        try:
            made = make_dataset(args)
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)
        np.savez(path, x=made["x"], y=made["y"], x_test=made["x_test"], y_test=made["y_test"])
    with np.load(path) as f:
        return {
            k: (f[k][:, None, :].astype(np.float32) if k.startswith("x") else f[k].astype(np.int64))
            for k in f.files
        }


def meta_model(cache: Path, old: dict, model_config: ModelConfig = MODEL) -> MetaConfig:
    """The old-scene model, trained once (AdamW, plain loop) and kept in train.py's format;
    a widened `cnn1d` in a folder of its own."""
    folder, settings = cache / "meta", json.dumps(META, sort_keys=True)
    if model_config.kwargs:
        width = "-".join(f"{k}{v}" for k, v in sorted(model_config.kwargs.items()))
        folder = cache / f"meta-{width}"
        settings = json.dumps({**META, **model_config.kwargs}, sort_keys=True)
    meta = MetaConfig(str(folder), model_config, [1, 40], 10)
    saved = folder / "settings.json"
    if (folder / MODEL_FILE).exists() and saved.exists() and saved.read_text() == settings:
        return meta
    torch.manual_seed(META["seed"])
    model = build_model(model_config, (1, 40), 10)
    opt = torch.optim.AdamW(model.parameters(), lr=META["lr"])
    x, y = torch.from_numpy(old["x"]), torch.from_numpy(old["y"])
    model.train()
    for _ in range(META["epochs"]):
        order = torch.randperm(len(y))
        for i in range(0, len(y), META["batch_size"]):
            idx = order[i : i + META["batch_size"]]
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict()}, folder / MODEL_FILE)
    (folder / "settings.json").write_text(settings)
    return meta


def export_new_scene(cache: Path, new: dict, size: int) -> Path:
    """Seed 0's draw of `size` new samples and the new test split, for the example Ray job."""
    pick = np.random.default_rng(0).choice(len(new["y"]), size, replace=False)
    path = cache / "new_scene.npz"
    np.savez(
        path, x=new["x"][pick], label=new["y"][pick], x_test=new["x_test"], label_test=new["y_test"]
    )
    return path


def classifier_model(args) -> ModelConfig:
    """`cnn1d` as models.py builds it, or wider by --channels / --hidden."""
    widths = {"channels": args.channels, "hidden": args.hidden}
    return dataclasses.replace(MODEL, kwargs={k: v for k, v in widths.items() if v})


def classifier_task(cache: Path, args) -> Testbed:
    old, new = mnist1d(cache), mnist1d(cache, **NEW_SCENE)
    config = classifier_model(args)
    meta = load_meta(meta_model(cache, old, config))

    def test_accuracy(data):
        return lambda model: accuracy(
            hit_sums(model, array_batches(data["x_test"], data["y_test"], "cpu"), 10)
        )

    return Testbed(
        "classifier",
        lambda: load_meta(meta_model(cache, old, config)),
        new["x"],
        new["y"],
        {"new": test_accuracy(new), "old": test_accuracy(old)},
        args.per_class,
        10,
        {ID: np.arange(len(old["y"])), LABEL: old["y"], X: old["x"]},
        head_gradient_fn(meta),
        CLASSIFIER,
        {
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "momentum": args.momentum,
        },
    )


def scene_images(cache: Path, scene: SceneConfig, split: str, n: int) -> tuple:
    key = hashlib.sha256(json.dumps([dataclasses.asdict(scene), split, n]).encode()).hexdigest()[
        :12
    ]
    path = cache / f"scene-{key}.npz"
    if not path.exists():
        images = make_images(scene, split, range(n), seed=0)
        np.savez(
            path,
            x=images.x,
            boxes=np.concatenate(images.boxes),
            counts=[len(b) for b in images.boxes],
        )
    with np.load(path) as f:
        return f["x"], np.split(f["boxes"], np.cumsum(f["counts"])[:-1])


def meta_detector(cache: Path, x: np.ndarray, y: np.ndarray) -> Path:
    """The old-scene detector, trained once with the adapt job's recipe, cached."""
    folder, settings = cache / "meta-detector", json.dumps(DETECTOR_META, sort_keys=True)
    saved = folder / "settings.json"
    if (folder / DETECTOR_FILE).exists() and saved.exists() and saved.read_text() == settings:
        return folder
    m = DETECTOR_META
    torch.manual_seed(m["seed"])
    model = TinyDetector(m["width"])
    run_epochs(
        model,
        x,
        y,
        None,
        TransferTrainConfig(
            rule="finetune",
            epochs=m["epochs"],
            batch_size=m["batch_size"],
            lr=m["lr"],
            momentum=m["momentum"],
        ),
        m["batch_size"],
        m["seed"],
        DETECTOR,
    )
    folder.mkdir(parents=True, exist_ok=True)
    save_detector(model, folder)
    saved.write_text(settings)
    return folder


def detector_task(cache: Path, args) -> Testbed:
    n = DETECTOR_IMAGES
    old_x, old_boxes = scene_images(cache, SceneConfig(), "train", n["old_train"])
    new_x, new_boxes = scene_images(cache, NewSceneConfig(), "train", n["new_train"])
    tests = {
        "old": scene_images(cache, SceneConfig(), "test", n["old_test"]),
        "new": scene_images(cache, NewSceneConfig(), "test", n["new_test"]),
    }
    canvas = old_x.shape[-1]
    old_y = np.stack([encode_targets(b, canvas) for b in old_boxes])
    folder = meta_detector(cache, old_x, old_y)
    meta = load_detector(folder)
    images, boxes, new_y = Counter(), Counter(), []
    for (found, scores), true in zip(predict(meta, new_x, min_score=0.05), new_boxes):
        checked = review(found, scores, true, conf_threshold=0.5, iou_threshold=0.5)
        images[checked.category] += 1
        boxes.update(correct=checked.n_correct, missed=checked.n_missed, false=checked.n_false)
        new_y.append(encode_targets(checked.label_boxes, canvas, checked.negative))
    print(
        f"detector: the person's check of the meta-detector on {len(new_x)} new images: "
        f"images {dict(images)}, boxes {dict(boxes)}"
    )
    return Testbed(
        "detector",
        lambda: load_detector(folder),
        new_x,
        np.stack(new_y),
        {
            scene: (lambda x, b: lambda model: mean_ap(model, x, b))(*tests[scene])
            for scene in ("new", "old")
        },
        args.detector_library,
        1,
        {ID: np.arange(len(old_x)), LABEL: np.zeros(len(old_x), np.int64), X: old_x, TARGET: old_y},
        detector_gradient_fn(meta),
        DETECTOR,
        {
            "epochs": args.detector_epochs,
            "batch_size": args.detector_batch_size,
            "lr": args.detector_lr,
            "momentum": args.momentum,
        },
    )


def run(task: Testbed, variant: Variant, size: int, seed: int) -> tuple[float, float, dict]:
    pick = np.random.default_rng(seed).choice(len(task.y_new), size, replace=False)
    model = task.meta()
    train = TransferTrainConfig(**{**task.train, **variant.train})
    library = None if train.rule == "finetune" else task.library(variant)
    stats = run_epochs(
        model,
        task.x_new[pick],
        task.y_new[pick],
        library,
        train,
        max(1, round(train.batch_size * variant.history_ratio)),
        seed,
        task.task,
    )
    return task.test["new"](model), task.test["old"](model), stats


def mean_std(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {std:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 500])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument(
        "--variants",
        nargs="+",
        default=list(VARIANTS),
        choices=VARIANTS,
        metavar="VARIANT",
        help=f"from: {', '.join(VARIANTS)}",
    )
    parser.add_argument(
        "--models",
        nargs="+",
        default=["classifier", "detector"],
        choices=["classifier", "detector"],
    )
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.005)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--per-class", type=int, default=20, help="classifier library")
    parser.add_argument("--channels", type=int, help="the classifier's convolutions (cnn1d: 32)")
    parser.add_argument("--hidden", type=int, help="the classifier's dense layer (cnn1d: 128)")
    parser.add_argument("--detector-epochs", type=int, default=10)
    parser.add_argument("--detector-batch-size", type=int, default=16)
    parser.add_argument("--detector-lr", type=float, default=0.005)
    parser.add_argument("--detector-library", type=int, default=100)
    parser.add_argument("--cache", default="/tmp/raysift-bench-transfer")
    parser.add_argument(
        "--prepare",
        action="store_true",
        help="only write the classifier's meta-model and new_scene.npz (for "
        "configs/transfer_mnist1d.yaml) into the cache, then stop",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    if args.prepare:
        old, new = mnist1d(cache), mnist1d(cache, **NEW_SCENE)
        meta = meta_model(cache, old, classifier_model(args))
        print(
            f"meta-model in {meta.checkpoint}, new scene in "
            f"{export_new_scene(cache, new, max(args.sizes))}"
        )
        return

    builders = {"classifier": classifier_task, "detector": detector_task}
    tasks = [builders[name](cache, args) for name in args.models]
    for task in tasks:
        meta = task.meta()
        task.meta_scores = {scene: score(meta) for scene, score in task.test.items()}
        print(
            f"{task.name} meta-model: old scene {task.meta_scores['old']:.3f}, new scene "
            f"{task.meta_scores['new']:.3f}; {task.train}, library {task.library_base}"
            f"{' per class' if task.classes > 1 else ''}; seeds {args.seeds}"
            + (f"; cnn1d {classifier_model(args).kwargs}" if task.name == "classifier" else ""),
            flush=True,
        )

    results = {}  # (size, variant, task) -> runs
    for size in args.sizes:
        for name in args.variants:
            for task in tasks:
                start, runs = time.perf_counter(), []
                for seed in args.seeds:
                    runs.append(run(task, VARIANTS[name], size, seed))
                seconds = (time.perf_counter() - start) / len(args.seeds)
                results[size, name, task.name] = runs, seconds
                print(
                    f"{size} | {name} | {task.name} | new {mean_std([r[0] for r in runs])}"
                    f" | old {mean_std([r[1] for r in runs])} | {seconds:.1f} s/run",
                    flush=True,
                )

    header = ["N new", "variant"]
    for task in tasks:
        unit = "acc" if task.name == "classifier" else "mAP@0.5"
        header += [f"{task.name} new {unit}", f"{task.name} old {unit}", "target"]
    header += ["sample-passes / run", "s / run"]
    print("\n| " + " | ".join(header) + " |\n|" + " --- |" * len(header))
    for size in args.sizes:
        for name in args.variants:
            row, passes, seconds = [str(size), name], [], []
            for task in tasks:
                runs, secs = results[size, name, task.name]
                new, old = [r[0] for r in runs], [r[1] for r in runs]
                row += [mean_std(new), mean_std(old), target(task, results, size, new, old)]
                stats = runs[0][2]
                passes.append(str(stats["new_sample_passes"] + stats["history_sample_passes"]))
                seconds.append(f"{secs:.1f}")
            print("| " + " | ".join(row + [" / ".join(passes), " / ".join(seconds)]) + " |")


def target(task: Testbed, results: dict, size: int, new: list, old: list) -> str:
    """'yes' when the old scene is within 1 point of the meta-model and the new scene at
    least fine-tuning's mean; else what is missing."""
    finetune = results.get((size, "finetune", task.name))
    misses = []
    if statistics.mean(old) < task.meta_scores["old"] - 0.01:
        misses.append("old")
    if finetune is None or statistics.mean(new) < statistics.mean(r[0] for r in finetune[0]):
        misses.append("new" if finetune else "new?")
    return "yes" if not misses else "no (" + ", ".join(misses) + ")"


if __name__ == "__main__":
    main()
