"""The job file: typed sections with defaults, checked before anything runs.

A YAML job maps onto these dataclasses one to one. Unknown keys and wrong types stop the
run with the dotted name of the field, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml


class ConfigError(ValueError):
    """A job file that cannot run: the message names the field."""


@dataclass
class SourceConfig:
    """Where the data comes from and how it is split."""

    kind: str = "mnist1d"  # mnist1d | digits | parquet | npz | idx | imagefolder | text
    path: str | None = None  # file, folder, glob or URI (user data)
    num_samples: int = 60000  # mnist1d only
    label_column: str = "label"
    feature_column: str = "x"
    id_column: str = "id"  # assigned at ingest when the data has none
    split_column: str = "split"  # used when present: values train / val / test
    shape: list[int] | None = None  # reshape flat feature lists, e.g. [1, 28, 28]
    val_fraction: float = 0.1  # of the training split
    test_fraction: float = 0.2  # only when the source has no test split
    image_size: list[int] | None = None  # imagefolder: resize to [H, W]
    text_column: str = "text"  # text: the column of strings (CSV or Parquet)
    max_len: int = 64  # text: tokens per row, padded with 0 or truncated
    max_vocab: int = 20000  # text: vocabulary size, <pad> (0) and <unk> (1) included
    min_count: int = 1  # text: training-split occurrences a word needs to get its own id
    imbalance_ratio: float = 1.0  # > 1: long-tailed train and val splits (test stays as given)


@dataclass
class ModelConfig:
    name: str = "cnn1d"  # mlp | cnn1d | cnn2d | textcnn | package.module:function
    kwargs: dict = field(default_factory=dict)


@dataclass
class TrainConfig:
    num_workers: int = 2
    use_gpu: bool = False
    batch_size: int = 128
    epochs_per_round: int | None = 3  # None: planned by strategy.budget_fraction
    lr: float = 0.01
    weight_decay: float = 0.0
    final_epochs: int | None = 0  # a last phase on the final subset with a one-cycle schedule
    # the final phase validates every epoch and ships the best of the last round's model and
    # each final epoch's (highest val accuracy, the earliest on a tie)
    final_keep_best: bool = False
    # phase: a one-cycle schedule per round and final phase; run_onecycle / run_cosine: one
    # curve over the whole run, each phase taking its planned share of it
    lr_schedule: str = "phase"
    threads_per_worker: int = 1
    val_every_epoch: bool = False  # validate after every epoch (accuracy-vs-compute curves)
    cache_mb: int = 2048  # per worker and split: features kept in memory; the rest on disk
    spill_dir: str | None = None  # where a worker's rows past cache_mb go (default: the tmp dir)
    # every phase ends with a checkpoint; within one, an epoch's end makes one when the last is
    # older than this (0: every epoch). Ray Train takes about one report a health-check poll.
    checkpoint_every_s: float = 60.0


@dataclass
class StrategyConfig:
    name: str = "m2"  # m2 | random | full | norm_balanced | infobatch | seta
    # The knobs in PLANNED_KEYS may be None while budget_fraction is set: the plan fills them.
    initial_ratio: float | None = 0.1
    hard_per_round: int | None = 2000
    reps_per_round: int | None = 1000
    cluster_k: int = 20
    cluster_on: str = "embedding"  # embedding | x
    # m2: skip a representative within this distance (in the cluster_on space) of a row already
    # chosen, e.g. an offline-augmented copy of a chosen sample (null: keep all)
    reps_dedup: float | None = None
    # m2: which rows of a cluster represent it, each cluster its share of reps_per_round: a
    # seeded uniform draw within it (spread: level or ahead on every job measured, steadier on
    # Fashion-MNIST), or the rows nearest its centre (nearest: the rule until then)
    reps_pick: str = "spread"  # spread | nearest
    # m2: when the pool holds fewer mispredictions than hard_per_round, fill the rest with the
    # correctly predicted rows of highest loss or lowest margin (none: the source rule)
    hard_fill: str = "none"  # none | loss | margin
    max_rounds: int | None = 5
    target_val_accuracy: float | None = None
    patience: int | None = None  # stop after this many rounds without a val gain
    budget: float | None = None  # compute budget in sample-passes
    # plan rounds, rows per round and final phase to spend at most this share of full's compute
    # (full's `epochs` over the training set); the planned knobs the job sets stay as set
    budget_fraction: float | None = None
    epochs: int = 20  # the `full` and `infobatch` baselines' epochs
    # norm_balanced (M1): m per class by the norm rule, then drop what the model has learned
    per_class: int = 100
    norm: str = "pixel_weighted_l2"  # pixel_weighted_l2 | l1 | l2 | linf
    channel_weights: list[float] | None = None  # pixel_weighted_l2; None: luminance for RGB
    remaining_total: int | None = None  # stop when at most this many unlearned samples remain
    remaining_per_class: int | None = None  # ... or when every class has at most this many
    # keep the samples a round gets right in the pool, to be scored again next round (false:
    # dropped for good, the source rule)
    rescore_dropped: bool = False
    # infobatch: prune a fraction of the below-mean-loss samples each epoch, anneal at the end
    prune_ratio: float = 0.5  # r
    anneal_delta: float = 0.875  # full data from epoch delta * epochs on (seta: its annealing)
    # m2, random, norm_balanced: InfoBatch's rule inside each round's (and the final phase's)
    # epochs, leaving out this share of the below-mean-loss subset rows (0: off)
    round_prune_ratio: float = 0.0
    # seta: a random share, grouped by loss, a window sliding from easy to hard (the authors'
    # CIFAR settings)
    seta_ratio: float = 0.1  # rows left out at random each epoch (at most 0.9)
    num_group: int = 5  # loss groups
    window_scale: float = 0.9  # share of the groups the window holds


@dataclass
class ScoreConfig:
    batch_size: int = 1024
    num_actors: int = 1
    use_gpu: bool = False


@dataclass
class AugmentConfig:
    """Single-sample transforms applied in order to every training batch."""

    # [{name: flip, p: 0.5, axis: horizontal}, ...]: `name` picks the transform, `p` (default
    # 1.0) is each sample's chance to get it, the other keys are the transform's own options.
    transforms: list[dict] = field(default_factory=list)


STRATEGY_NAMES = ("m2", "random", "full", "norm_balanced", "infobatch", "seta")
COMPARED = ("full", "random", "m2", "norm_balanced", "infobatch", "seta")  # compare's default
# Knobs a budget plans (pipelines/selection/budget.py) where the job leaves them out, by section.
PLANNED_KEYS = {
    "strategy": ("initial_ratio", "hard_per_round", "reps_per_round", "max_rounds"),
    "train": ("epochs_per_round", "final_epochs"),
}
HARD_FILLS = ("none", "loss", "margin")
REPS_PICKS = ("spread", "nearest")
LR_SCHEDULES = ("phase", "run_onecycle", "run_cosine")
MIXUP_KINDS = ("none", "mixup", "cutmix", "pairing", "adversarial", "moex")
TARGET_RATIOS = ("perturbed", "original")
ASCENTS = ("mean", "sample")
MOMENTS = ("channel", "spatial")


@dataclass
class MixupConfig:
    """How training batches are mixed (after the single-sample transforms)."""

    kind: str = "none"  # none | mixup | cutmix | pairing | adversarial | moex
    alpha: float = 1.0  # lam ~ Beta(alpha, alpha)
    layer: int = 0  # mixup, adversarial, moex: 0 mixes inputs, k > 0 the input of model stage k
    per_sample: bool = True  # one lam per sample, or one per batch (input mixup, cutmix)
    n_steps: int = 1  # adversarial: gradient-ascent steps on lam
    gamma: float = 0.002  # adversarial: step size
    bound: float | None = None  # adversarial: largest |lam - lam0| allowed
    clip: bool = True  # adversarial: keep lam in [0, 1]
    keep_rose: bool = True  # adversarial: keep the new lam only where the loss rose
    target_ratio: str = "perturbed"  # adversarial: mix targets with the perturbed or drawn lam
    ascent: str = "mean"  # adversarial: step on the batch-mean loss (AMP) or each sample's own
    moex_lambda: float = 0.9  # moex: target weight of the sample's own label
    moments: str = "channel"  # moex: over the channels (positional norm) or the positions
    smoothing: float = 0.0  # label smoothing, with or without mixing


SYNTHESIZE_KINDS = ("none", "vae", "gan", "style", "neural", "moex")


@dataclass
class SynthesizeConfig:
    """Synthetic rows added to the train split before training (M4), with their provenance."""

    kind: str = "none"  # none | vae | gan | style | neural | moex
    per_class: int = 100  # rows added per class (moex: about as many)
    epochs: int = 200  # vae, gan, neural: training epochs of the generator or augmenter
    lr: float = 0.001  # vae, gan, neural
    batch_size: int = 64  # vae, gan, neural
    latent: int = 16  # vae, gan: noise dimensions
    hidden: int = 256  # vae, gan: width of the MLPs
    # vae, gan: train in the driver up to this many train rows; above, one Ray Train run of
    # train.num_workers workers, each on its own rows (DDP)
    in_process_rows: int = 20000
    steps: int = 50  # style: Adam steps per new sample
    style_weight: float = 10.0  # style: against content weight 1
    tv_weight: float = 0.1  # style: total variation
    content_weight: float = 1.0  # neural: content loss against classification weight 1
    moex_lambda: float = 0.9  # moex: target weight of the sample's own label
    moments: str = "spatial"  # moex on inputs: over the positions, or the channels


@dataclass
class JobConfig:
    name: str = "job"
    seed: int = 0
    run_dir: str = "runs/job"
    source: SourceConfig = field(default_factory=SourceConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    mixup: MixupConfig = field(default_factory=MixupConfig)
    synthesize: SynthesizeConfig = field(default_factory=SynthesizeConfig)

    def validate(self) -> "JobConfig":
        """Range checks that the types alone do not express."""
        s = self.strategy
        check_field(
            s.budget_fraction is None or 0 < s.budget_fraction <= 1,
            "strategy.budget_fraction",
            s.budget_fraction,
            "in (0, 1] or null",
        )
        for section, keys in PLANNED_KEYS.items():
            for key in keys:
                check_field(
                    getattr(getattr(self, section), key) is not None
                    or s.budget_fraction is not None,
                    f"{section}.{key}",
                    None,
                    "a number (null only with strategy.budget_fraction, to plan it)",
                )
        if s.initial_ratio is not None:
            check_field(
                0 < s.initial_ratio <= 1, "strategy.initial_ratio", s.initial_ratio, "in (0, 1]"
            )
        check_field(
            s.name in STRATEGY_NAMES, "strategy.name", s.name, f"one of {', '.join(STRATEGY_NAMES)}"
        )
        check_field(
            s.cluster_on in ("embedding", "x"),
            "strategy.cluster_on",
            s.cluster_on,
            "embedding or x",
        )
        check_field(
            s.reps_pick in REPS_PICKS,
            "strategy.reps_pick",
            s.reps_pick,
            f"one of {', '.join(REPS_PICKS)}",
        )
        check_field(
            s.hard_fill in HARD_FILLS,
            "strategy.hard_fill",
            s.hard_fill,
            f"one of {', '.join(HARD_FILLS)}",
        )
        for name in ("hard_per_round", "reps_per_round", "cluster_k", "max_rounds", "epochs"):
            value = getattr(s, name)
            check_field(value is None or value >= 0, f"strategy.{name}", value, ">= 0")
        check_field(s.per_class >= 1, "strategy.per_class", s.per_class, ">= 1")
        check_field(
            s.reps_dedup is None or s.reps_dedup > 0,
            "strategy.reps_dedup",
            s.reps_dedup,
            "> 0 or null",
        )
        for name in ("remaining_total", "remaining_per_class"):
            value = getattr(s, name)
            check_field(value is None or value >= 0, f"strategy.{name}", value, ">= 0 or null")
        check_field(0 <= s.prune_ratio < 1, "strategy.prune_ratio", s.prune_ratio, "in [0, 1)")
        check_field(0 < s.anneal_delta <= 1, "strategy.anneal_delta", s.anneal_delta, "in (0, 1]")
        check_field(0 <= s.seta_ratio < 1, "strategy.seta_ratio", s.seta_ratio, "in [0, 1)")
        check_field(
            0 <= s.round_prune_ratio < 1,
            "strategy.round_prune_ratio",
            s.round_prune_ratio,
            "in [0, 1)",
        )
        check_field(s.num_group >= 1, "strategy.num_group", s.num_group, ">= 1")
        check_field(
            0 < s.window_scale <= 1 and round(s.num_group * s.window_scale) >= 1,
            "strategy.window_scale",
            s.window_scale,
            "in (0, 1], a window of at least one of strategy.num_group groups",
        )
        t = self.train
        for name in ("epochs_per_round", "final_epochs"):
            value = getattr(t, name)
            check_field(value is None or value >= 0, f"train.{name}", value, ">= 0")
        for name in ("num_workers", "batch_size", "threads_per_worker"):
            check_field(getattr(t, name) >= 1, f"train.{name}", getattr(t, name), ">= 1")
        check_field(t.lr > 0, "train.lr", t.lr, "> 0")
        check_field(
            t.lr_schedule in LR_SCHEDULES,
            "train.lr_schedule",
            t.lr_schedule,
            f"one of {', '.join(LR_SCHEDULES)}",
        )
        check_field(t.cache_mb >= 0, "train.cache_mb", t.cache_mb, ">= 0")
        check_field(
            t.checkpoint_every_s >= 0, "train.checkpoint_every_s", t.checkpoint_every_s, ">= 0"
        )
        check_field(
            0 <= self.source.val_fraction < 1,
            "source.val_fraction",
            self.source.val_fraction,
            "in [0, 1)",
        )
        check_field(
            0 <= self.source.test_fraction < 1,
            "source.test_fraction",
            self.source.test_fraction,
            "in [0, 1)",
        )
        check_field(
            self.source.imbalance_ratio >= 1,
            "source.imbalance_ratio",
            self.source.imbalance_ratio,
            ">= 1 (1: as given)",
        )
        check_field(self.score.num_actors >= 1, "score.num_actors", self.score.num_actors, ">= 1")
        self._validate_text()
        self._validate_mixup()
        self._validate_synthesize()
        if self.model.name == "textcnn" and self.augment.transforms:
            raise ConfigError(
                "augment.transforms: textcnn reads token ids, which single-sample "
                "transforms would corrupt; use mixup.layer >= 1 instead"
            )
        return self

    def _validate_text(self) -> None:
        src = self.source
        check_field(src.max_len >= 1, "source.max_len", src.max_len, ">= 1")
        # Token ids travel as float32 (the data contract's dtype), exact below 2**24.
        check_field(2 < src.max_vocab <= 2**24, "source.max_vocab", src.max_vocab, "in (2, 2**24]")
        check_field(src.min_count >= 1, "source.min_count", src.min_count, ">= 1")
        if self.model.name == "textcnn" and src.kind == "text":
            # The embedding covers every id the vocabulary can hand out.
            vocab = self.model.kwargs.setdefault("vocab_size", src.max_vocab)
            check_field(
                isinstance(vocab, int) and vocab >= src.max_vocab,
                "model.kwargs.vocab_size",
                vocab,
                f"an integer >= source.max_vocab ({src.max_vocab})",
            )
            if self.model.kwargs.get("word_vectors"):
                # Pretrained vectors go to the words of this run's vocabulary (ingest writes it).
                vocab_file = Path(self.run_dir).resolve() / "data" / "vocab.json"
                self.model.kwargs["vocab"] = str(vocab_file)

    def _validate_synthesize(self) -> None:
        y = self.synthesize
        check_field(
            y.kind in SYNTHESIZE_KINDS,
            "synthesize.kind",
            y.kind,
            f"one of {', '.join(SYNTHESIZE_KINDS)}",
        )
        for name in ("per_class", "epochs", "batch_size", "latent", "hidden", "steps"):
            check_field(getattr(y, name) >= 1, f"synthesize.{name}", getattr(y, name), ">= 1")
        for name in ("lr", "style_weight", "tv_weight", "content_weight"):
            check_field(getattr(y, name) >= 0, f"synthesize.{name}", getattr(y, name), ">= 0")
        check_field(y.lr > 0, "synthesize.lr", y.lr, "> 0")
        check_field(y.in_process_rows >= 0, "synthesize.in_process_rows", y.in_process_rows, ">= 0")
        check_field(0 <= y.moex_lambda <= 1, "synthesize.moex_lambda", y.moex_lambda, "in [0, 1]")
        check_field(
            y.moments in MOMENTS, "synthesize.moments", y.moments, f"one of {', '.join(MOMENTS)}"
        )
        if y.kind != "none":
            check_field(
                self.source.kind != "text",
                "synthesize.kind",
                y.kind,
                "none for a text source (token ids cannot be generated or blended)",
            )

    def _validate_mixup(self) -> None:
        m = self.mixup
        check_field(m.kind in MIXUP_KINDS, "mixup.kind", m.kind, f"one of {', '.join(MIXUP_KINDS)}")
        check_field(m.alpha > 0, "mixup.alpha", m.alpha, "> 0")
        check_field(m.layer >= 0, "mixup.layer", m.layer, ">= 0")
        check_field(m.n_steps >= 0, "mixup.n_steps", m.n_steps, ">= 0")
        check_field(m.gamma >= 0, "mixup.gamma", m.gamma, ">= 0")
        check_field(m.bound is None or m.bound >= 0, "mixup.bound", m.bound, ">= 0 or null")
        check_field(
            m.target_ratio in TARGET_RATIOS,
            "mixup.target_ratio",
            m.target_ratio,
            f"one of {', '.join(TARGET_RATIOS)}",
        )
        check_field(0 <= m.smoothing < 1, "mixup.smoothing", m.smoothing, "in [0, 1)")
        check_field(m.ascent in ASCENTS, "mixup.ascent", m.ascent, f"one of {', '.join(ASCENTS)}")
        check_field(0 <= m.moex_lambda <= 1, "mixup.moex_lambda", m.moex_lambda, "in [0, 1]")
        check_field(
            m.moments in MOMENTS, "mixup.moments", m.moments, f"one of {', '.join(MOMENTS)}"
        )
        if self.model.name == "textcnn" and m.kind != "none":
            text = "for textcnn, whose input is token ids"
            check_field(
                m.kind in ("mixup", "adversarial", "moex"),
                "mixup.kind",
                m.kind,
                f"mixup, adversarial or moex {text}",
            )
            check_field(
                m.layer >= 1,
                "mixup.layer",
                m.layer,
                f">= 1 {text} (1: word vectors, 2: pooled features)",
            )
        if self.strategy.name in ("infobatch", "seta") or self.strategy.round_prune_ratio:
            check_field(
                m.kind == "none",
                "mixup.kind",
                m.kind,
                f"none with strategy {self.strategy.name} or round_prune_ratio (each "
                f"sample is scored by its own loss)",
            )
        if m.kind in ("cutmix", "pairing"):
            check_field(m.layer == 0, "mixup.layer", m.layer, f"0: {m.kind} mixes inputs only")
        if m.kind == "adversarial" or m.layer > 0:
            check_field(
                m.per_sample,
                "mixup.per_sample",
                m.per_sample,
                "true: adversarial and hidden-layer mixing draw lam per sample",
            )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def check_field(ok: bool, name: str, value, expected: str) -> None:
    if not ok:
        raise ConfigError(f"{name}: got {value!r}, expected {expected}")


def read_job_file(path: str | Path) -> dict:
    """A YAML job file's mapping of sections (any job kind), or a ConfigError naming the file."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"job file {path} does not exist")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{path}: the job must be a mapping of sections, got {type(raw).__name__}"
        )
    return raw


def load_job(path: str | Path, overrides: dict | None = None) -> JobConfig:
    """Read a YAML job, apply `overrides` (dotted keys), type-check and validate it."""
    return from_dict(with_overrides(read_job_file(path), overrides), where=str(path))


def with_overrides(raw: dict, overrides: dict | None) -> dict:
    """A copy of a job's sections with dotted `overrides` set ({"strategy.max_rounds": 3})."""
    raw = copy.deepcopy(raw)
    for dotted, value in (overrides or {}).items():
        node = raw
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return raw


def from_dict(raw: dict, where: str = "job") -> JobConfig:
    return build_section(JobConfig, left_to_plan(raw), prefix="", where=where).validate()


def left_to_plan(raw: dict) -> dict:
    """`raw` with the PLANNED_KEYS it leaves out set to None when it sets
    strategy.budget_fraction: those the budget plans, the ones it sets stay as set."""
    strategy = raw.get("strategy") if isinstance(raw, dict) else None
    if not isinstance(strategy, dict) or strategy.get("budget_fraction") is None:
        return raw
    out = dict(raw)
    for section, keys in PLANNED_KEYS.items():
        given = out.get(section) or {}
        if isinstance(given, dict):
            out[section] = {**{k: None for k in keys}, **given}
    return out


def build_section(cls, raw, prefix: str, where: str):
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{where}: '{prefix.rstrip('.') or 'job'}' must be a mapping, got {type(raw).__name__}"
        )
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key '{prefix}{unknown[0]}' "
            f"(known in this section: {', '.join(sorted(known))})"
        )
    values = {}
    for key, value in raw.items():
        values[key] = _coerce(hints[key], value, f"{prefix}{key}", where)
    return cls(**values)


def _coerce(hint, value, name: str, where: str):
    if dataclasses.is_dataclass(hint):
        return build_section(hint, value, prefix=f"{name}.", where=where)
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, name, where)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: '{name}' must be a list, got {value!r}")
        return [_coerce(args[0], v, f"{name}[{i}]", where) for i, v in enumerate(value)]
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: '{name}' must be a mapping, got {value!r}")
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is bool and not isinstance(value, bool):
        raise ConfigError(f"{where}: '{name}' must be true or false, got {value!r}")
    if hint is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{where}: '{name}' must be an integer, got {value!r}")
    if not isinstance(value, hint):
        raise ConfigError(f"{where}: '{name}' must be {hint.__name__}, got {value!r}")
    return value
