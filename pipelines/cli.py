"""`raysift`: run a job, or one operator as a batch job.

    raysift run JOB.yaml [--resume | --overwrite] [--set strategy.max_rounds=3 ...]
    raysift compare JOB.yaml [--strategies full,random,m2,norm_balanced,infobatch]
    raysift report RUN_DIR                  (rebuild a comparison's report from its JSON)
    raysift norms | cluster | select | score | feedback IN OUT ...   (one operator as a batch job)
    raysift augment | mixup | smote | dedup IN OUT ...   (offline augmentation as batch jobs)
    raysift transfer | adapt JOB.yaml      (M5: a classifier, or a detector from checks)
    raysift generate RUN_DIR OUT --n N [--per-class]   (sample a run's VAE or GAN)
"""
from __future__ import annotations

import argparse
import sys

import yaml

from operators.contract import DataError

from . import adapt, augment_jobs, feedback_job, operator_jobs, synthesize, transfer
from .config import ConfigError, load_job


def _parse_set(items: list[str]) -> dict:
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. strategy.max_rounds=3")
        overrides[key] = yaml.safe_load(value)
    return overrides


def _run(args) -> None:
    from .rounds import run_job

    job = load_job(args.job, _parse_set(args.set))
    run_job(job, resume=args.resume, overwrite=args.overwrite)


def _compare(args) -> None:
    from .compare import compare

    job = load_job(args.job, _parse_set(args.set))
    compare(job, args.strategies.split(","), resume=args.resume, overwrite=args.overwrite)


def _report(args) -> None:
    from .report import comparison_table, rebuild_report

    summaries, report = rebuild_report(args.run_dir)
    print(comparison_table(summaries))
    print(f"report: {report}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="raysift", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run a YAML job (M2 or a baseline) to the end")
    run.add_argument("job", help="the job file")
    run.set_defaults(func=_run)
    cmp = commands.add_parser("compare", help="run the job under several strategies, side by side")
    cmp.add_argument("job", help="the job file")
    cmp.add_argument("--strategies", default="full,random,m2,norm_balanced,infobatch",
                     help="comma-separated strategy names (default: %(default)s)")
    for p in (run, cmp):
        p.add_argument("--resume", action="store_true", help="continue an interrupted run")
        p.add_argument("--overwrite", action="store_true", help="replace an existing run")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a job field, e.g. --set strategy.max_rounds=3")
    cmp.set_defaults(func=_compare)
    rep = commands.add_parser("report", help="rebuild a comparison's report from its "
                                             "comparison.json")
    rep.add_argument("run_dir", metavar="RUN_DIR", help="the comparison's run_dir")
    rep.set_defaults(func=_report)
    operator_jobs.add_commands(commands)
    augment_jobs.add_commands(commands)
    feedback_job.add_commands(commands)
    transfer.add_commands(commands)
    synthesize.add_commands(commands)
    adapt.add_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ConfigError, DataError) as err:
        print(f"raysift: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
