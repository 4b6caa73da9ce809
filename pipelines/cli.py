"""`raysift`: run a job, or one operator as a batch job.

raysift run JOB.yaml [--resume | --overwrite] [--set strategy.max_rounds=3 ...]
raysift compare JOB.yaml [--strategies full,random,m2,norm_balanced,infobatch,seta]
                             [--seeds 0,1,2]   (each strategy per seed, mean ± std)
raysift report RUN_DIR                  (rebuild a comparison's report from its JSON)
raysift norms | cluster | select | score | feedback IN OUT ...   (one operator as a batch job)
raysift augment | mixup | smote | dedup IN OUT ...   (offline augmentation as batch jobs)
raysift transfer | adapt JOB.yaml      (M5: a classifier, or a detector from checks)
raysift generate RUN_DIR OUT --n N [--per-class]   (sample a run's VAE or GAN)
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

import yaml

from raysift.commands import JOB_COMMANDS
from raysift.config import COMPARED, ConfigError, load_job
from raysift.operators.contract import DataError


def _parse_set(items: list[str]) -> dict:
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. strategy.max_rounds=3")
        overrides[key] = yaml.safe_load(value)
    return overrides


def _run(args) -> None:
    from raysift.job.rounds import run_job

    job = load_job(args.job, _parse_set(args.set))
    run_job(job, resume=args.resume, overwrite=args.overwrite)


def _compare(args) -> None:
    from raysift.job.compare import compare

    job = load_job(args.job, _parse_set(args.set))
    compare(
        job,
        args.strategies.split(","),
        seeds=_parse_seeds(args.seeds),
        resume=args.resume,
        overwrite=args.overwrite,
    )


def _parse_seeds(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        seeds = [int(s) for s in text.split(",")]
    except ValueError:
        raise ConfigError(
            f"--seeds {text!r}: expected comma-separated integers, e.g. 0,1,2"
        ) from None
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds {text!r}: a seed is given twice")
    return seeds


def _report(args) -> None:
    from raysift.report.comparison import comparison_table, rebuild_report
    from raysift.report.seeds import SEEDS_JSON, rebuild_seeds_report, seeds_text

    if (Path(args.run_dir) / SEEDS_JSON).exists():
        summaries, report = rebuild_seeds_report(args.run_dir)
        print(seeds_text(summaries))
    else:
        summaries, report = rebuild_report(args.run_dir)
        print(comparison_table(summaries))
    print(f"report: {report}")


def build_parser(command: str | None) -> argparse.ArgumentParser:
    """The CLI; a batch or transfer job's options only when it is `command`."""
    parser = argparse.ArgumentParser(
        prog="raysift",
        description=__doc__.splitlines()[0],
        epilog=__doc__.split("\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run a YAML job (M2 or a baseline) to the end")
    run.add_argument("job", help="the job file")
    run.set_defaults(func=_run)
    cmp = commands.add_parser("compare", help="run the job under several strategies, side by side")
    cmp.add_argument("job", help="the job file")
    cmp.add_argument(
        "--strategies",
        default=",".join(COMPARED),
        help="comma-separated strategy names (default: %(default)s)",
    )
    cmp.add_argument(
        "--seeds",
        default=None,
        metavar="0,1,2",
        help="run every strategy once per seed (under RUN_DIR/seed<k>/) and "
        "report each one's mean ± std",
    )
    for p in (run, cmp):
        p.add_argument("--resume", action="store_true", help="continue an interrupted run")
        p.add_argument("--overwrite", action="store_true", help="replace an existing run")
        p.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a job field, e.g. --set strategy.max_rounds=3",
        )
    cmp.set_defaults(func=_compare)
    rep = commands.add_parser(
        "report", help="rebuild a comparison's report from its comparison.json (or seeds.json)"
    )
    rep.add_argument("run_dir", metavar="RUN_DIR", help="the comparison's run_dir")
    rep.set_defaults(func=_report)
    # Only the named command's module is imported (they load torch or Ray Train); the others
    # are listed with their help and no options.
    wanted = JOB_COMMANDS[command].module if command in JOB_COMMANDS else None
    if wanted:
        importlib.import_module(wanted).add_commands(commands)
    for name, job in JOB_COMMANDS.items():
        if job.module != wanted:
            commands.add_parser(name, help=job.help)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(command).parse_args(argv)
    try:
        args.func(args)
    except (ConfigError, DataError) as err:
        print(f"raysift: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
