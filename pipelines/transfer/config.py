"""The transfer job file (M5): typed sections, built by the same rules as the main job file.

Unknown keys and wrong types are named by `config.build_section`; the ranges and the required fields
are checked here, so a transfer job fails before it ingests or trains anything.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from raysift.config import ModelConfig, SourceConfig, build_section, check_field, read_job_file

# The names the transfer's job files and code choose from, here so that the config imports no
# implementation: how a step mixes the transfer and history gradients (transfer/gradmix.py),
# finetune adding "the transfer gradient alone", and how the library keeps its members.
MIX_RULES = ("sum", "agem", "pcgrad", "similarity")
RULES = ("finetune", *MIX_RULES)
HISTORY_RULES = ("herding", "reservoir")


@dataclass
class MetaConfig:
    """The meta-model: a checkpoint folder as `train.py` writes it, and how to rebuild the net."""

    checkpoint: str | None = None  # a directory holding model.pt
    model: ModelConfig = field(default_factory=ModelConfig)
    x_shape: list[int] | None = None  # the feature shape the model reads, e.g. [1, 40]
    num_classes: int | None = None


@dataclass
class HistoryConfig:
    """The old-scene samples replayed beside the new ones."""

    library: str | None = None  # a folder HistoryLibrary.save wrote; null: built from old_source
    per_class: int = 20  # when built
    rule: str = "herding"  # when built: herding | reservoir
    batch_size: int | None = None  # history rows per step; null: train.batch_size


@dataclass
class TransferTrainConfig:
    rule: str = "similarity"  # finetune | sum | agem | pcgrad | similarity
    floor: float = 0.0  # similarity: the smallest weight either gradient keeps
    cos_scale: float = 1.0  # similarity: the cosine that counts as full conflict (gradmix)
    distill: float = 0.0  # weight of the meta-model's distillation on the history batches
    joint_forward: bool = False  # one forward pass over new and history rows (BatchNorm)
    # WiSE-FT: the weights kept are meta + interpolate * (trained - meta); 1: the trained ones
    interpolate: float = 1.0
    epochs: int = 10
    batch_size: int = 32  # new-scene rows per step (global, over all workers)
    lr: float = 0.01
    momentum: float = 0.0  # SGD
    weight_decay: float = 0.0
    num_workers: int = 1
    use_gpu: bool = False
    threads_per_worker: int = 1


class TransferJob:
    """What the transfer-like job files (transfer, adapt) share: a `history` section with an
    optional `batch_size` and a `train` section with one."""

    @property
    def history_batch_size(self) -> int:
        h = self.history.batch_size
        return self.train.batch_size if h is None else h

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class TransferConfig(TransferJob):
    name: str = "transfer"
    seed: int = 0
    run_dir: str = "runs/transfer"
    meta: MetaConfig = field(default_factory=MetaConfig)
    new_source: SourceConfig | None = None  # the new scene: train split to learn, test to score
    old_source: SourceConfig | None = None  # the old scene: builds the library, scores forgetting
    history: HistoryConfig = field(default_factory=HistoryConfig)
    train: TransferTrainConfig = field(default_factory=TransferTrainConfig)

    def validate(self) -> "TransferConfig":
        """Required fields and ranges that the types alone do not express."""
        check_field(self.seed >= 0, "seed", self.seed, ">= 0")
        check_field(bool(self.run_dir), "run_dir", self.run_dir, "a folder path")
        m = self.meta
        check_field(bool(m.checkpoint), "meta.checkpoint", m.checkpoint, "the meta-model's folder")
        check_field(
            bool(m.x_shape) and all(d >= 1 for d in m.x_shape),
            "meta.x_shape",
            m.x_shape,
            "a list of positive sizes, e.g. [1, 40]",
        )
        check_field(
            m.num_classes is not None and m.num_classes >= 1,
            "meta.num_classes",
            m.num_classes,
            "an integer >= 1",
        )
        check_field(self.new_source is not None, "new_source", None, "a source section (new scene)")
        check_field(self.old_source is not None, "old_source", None, "a source section (old scene)")
        check_train(self.train)
        h = self.history
        check_field(h.per_class >= 1, "history.per_class", h.per_class, ">= 1")
        check_history_rule(h.rule)
        check_history_batch(self.history_batch_size, self.train.num_workers)
        return self


def check_history_rule(rule: str) -> None:
    check_field(rule in HISTORY_RULES, "history.rule", rule, f"one of {', '.join(HISTORY_RULES)}")


def require_rule(rule: str, rules: tuple[str, ...]) -> None:
    """A rule that code (not a job file) names: a ValueError listing the choices."""
    if rule not in rules:
        raise ValueError(f"rule: unknown rule {rule!r}; choose one of {', '.join(rules)}")


def check_train(t: TransferTrainConfig, prefix: str = "train") -> None:
    """The ranges of a `train` section (a transfer's, or the adapt job's)."""
    check_field(t.rule in RULES, f"{prefix}.rule", t.rule, f"one of {', '.join(RULES)}")
    check_field(0 <= t.floor <= 1, f"{prefix}.floor", t.floor, "in [0, 1]")
    check_field(0 < t.cos_scale <= 1, f"{prefix}.cos_scale", t.cos_scale, "in (0, 1]")
    check_field(t.distill >= 0, f"{prefix}.distill", t.distill, ">= 0")
    check_field(
        not (t.distill and t.rule == "finetune"),
        f"{prefix}.distill",
        t.distill,
        "0 with rule finetune (distillation acts on the history batches)",
    )
    check_field(0 <= t.interpolate <= 1, f"{prefix}.interpolate", t.interpolate, "in [0, 1]")
    for name in ("epochs", "batch_size", "num_workers", "threads_per_worker"):
        check_field(getattr(t, name) >= 1, f"{prefix}.{name}", getattr(t, name), ">= 1")
    check_field(t.lr > 0, f"{prefix}.lr", t.lr, "> 0")
    check_field(0 <= t.momentum < 1, f"{prefix}.momentum", t.momentum, "in [0, 1)")
    check_field(t.weight_decay >= 0, f"{prefix}.weight_decay", t.weight_decay, ">= 0")


def check_history_batch(rows: int, num_workers: int) -> None:
    # The library splits each history batch evenly over the workers (HistoryLibrary).
    check_field(
        rows >= 1 and rows % num_workers == 0,
        "history.batch_size",
        rows,
        f"a positive multiple of train.num_workers ({num_workers})",
    )


def transfer_from_dict(raw: dict, where: str = "transfer job") -> TransferConfig:
    return build_section(TransferConfig, raw, prefix="", where=where).validate()


def load_transfer(path: str | Path) -> TransferConfig:
    """Read a YAML transfer job, type-check and validate it."""
    return transfer_from_dict(read_job_file(path), where=str(path))
