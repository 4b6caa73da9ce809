"""The batch and transfer jobs' commands: the module that registers each, and its one-line help.

Apart from the modules, so that `raysift --help` lists every command without importing them
(they load torch or Ray Train); a module registers its commands with `add_parser`, which takes
the help from here.
"""

from __future__ import annotations

from typing import NamedTuple


class JobCommand(NamedTuple):
    module: str  # within this package; its `add_commands(subparsers)` registers the command
    help: str


JOB_COMMANDS = {
    "norms": JobCommand("operator_jobs", "add a per-sample norm column (M1 step 2)"),
    "cluster": JobCommand("operator_jobs", "k-means over the data; add cluster and dist"),
    "select": JobCommand("operator_jobs", "M1 balanced draw per class, or a random ratio"),
    "score": JobCommand(
        "operator_jobs", "add a trained model's loss, margin, pred, correct (and embedding)"
    ),
    "augment": JobCommand("augment_jobs", "augmented copies of every row (offline augmentation)"),
    "mixup": JobCommand("augment_jobs", "mixed rows with soft labels: mixup, cutmix or pairing"),
    "smote": JobCommand("augment_jobs", "SMOTE rows that bring classes up to a count"),
    "dedup": JobCommand("augment_jobs", "drop near-duplicate rows within k-means clusters"),
    "feedback": JobCommand(
        "feedback_job",
        "turn a person's check of detections into training annotations (M5 steps 1-2)",
    ),
    "transfer": JobCommand(
        "transfer", "adapt a trained model to a new scene, replaying a history library (M5)"
    ),
    "adapt": JobCommand(
        "adapt",
        "adapt a detector to a new scene from a person's checks, replaying a history library (M5)",
    ),
    "generate": JobCommand("synthesize", "sample labelled rows from a run's VAE or GAN"),
}


def add_parser(subparsers, name: str, **kwargs):
    """`subparsers.add_parser(name)` with the command's help from JOB_COMMANDS."""
    return subparsers.add_parser(name, help=JOB_COMMANDS[name].help, **kwargs)
