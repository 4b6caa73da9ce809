"""The batch and transfer jobs' commands: the module that registers each, and its one-line help.

Apart from the modules, so that `raysift --help` lists every command without importing them
(they load torch or Ray Train); a module registers its commands with `add_parser`, which takes
the help from here.
"""

from __future__ import annotations

import argparse
import math
from typing import NamedTuple


class JobCommand(NamedTuple):
    module: str  # its `add_commands(subparsers)` registers the command
    help: str


JOB_COMMANDS = {
    "norms": JobCommand("raysift.batch.operator", "add a per-sample norm column (M1 step 2)"),
    "cluster": JobCommand("raysift.batch.operator", "k-means over the data; add cluster and dist"),
    "select": JobCommand("raysift.batch.operator", "M1 balanced draw per class, or a random ratio"),
    "score": JobCommand(
        "raysift.batch.operator",
        "add a trained model's loss, margin, pred, correct (and embedding)",
    ),
    "augment": JobCommand(
        "raysift.batch.augment", "augmented copies of every row (offline augmentation)"
    ),
    "mixup": JobCommand(
        "raysift.batch.augment", "mixed rows with soft labels: mixup, cutmix or pairing"
    ),
    "smote": JobCommand("raysift.batch.augment", "SMOTE rows that bring classes up to a count"),
    "dedup": JobCommand(
        "raysift.batch.augment", "drop near-duplicate rows within k-means clusters"
    ),
    "feedback": JobCommand(
        "raysift.batch.feedback",
        "turn a person's check of detections into training annotations (M5 steps 1-2)",
    ),
    "transfer": JobCommand(
        "raysift.transfer.job",
        "adapt a trained model to a new scene, replaying a history library (M5)",
    ),
    "adapt": JobCommand(
        "raysift.adapt.job",
        "adapt a detector to a new scene from a person's checks, replaying a history library (M5)",
    ),
    "generate": JobCommand(
        "raysift.batch.synthesize", "sample labelled rows from a run's VAE or GAN"
    ),
}


def add_parser(subparsers, name: str, **kwargs):
    """`subparsers.add_parser(name)` with the command's help from JOB_COMMANDS."""
    return subparsers.add_parser(name, help=JOB_COMMANDS[name].help, **kwargs)


# Option value types the commands share: argparse names the option and the bad value.
def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def positive_float(text: str) -> float:
    value = non_negative(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value
