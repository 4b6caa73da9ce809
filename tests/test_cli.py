"""The command line starts light: listing commands or rebuilding a report loads no torch and no
Ray Train; a job's options still come with its command."""

import subprocess
import sys

import pytest

PROBE = """
import contextlib, io, sys
from raysift.cli import main
with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    try:
        main(sys.argv[1:])
    except SystemExit:
        pass
print(sorted(m for m in ("torch", "ray.train") if m in sys.modules))
"""


def loaded(*argv):
    out = subprocess.run(
        [sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, check=True
    )
    return out.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize("argv", [["--help"], ["report", "/nonexistent-run-dir"]])
def test_help_and_report_load_neither_torch_nor_ray_train(argv):
    assert loaded(*argv) == "[]"


def test_a_job_command_still_gets_its_options(capsys):
    from raysift.cli import main

    with pytest.raises(SystemExit):
        main(["norms", "--help"])
    assert "--channel-weights" in capsys.readouterr().out
    assert loaded("norms", "--help") == "['torch']"  # the probe can tell: score loads models


def test_each_job_command_is_registered_by_the_module_the_table_names():
    import argparse
    import importlib

    from raysift.commands import JOB_COMMANDS

    for module in {job.module for job in JOB_COMMANDS.values()}:
        commands = argparse.ArgumentParser().add_subparsers()
        importlib.import_module(module).add_commands(commands)
        assert set(commands.choices) == {n for n, j in JOB_COMMANDS.items() if j.module == module}


def test_batch_jobs_show_the_operators_and_their_own_log_lines(capsys):
    import logging

    from raysift.batch.operator import show_progress

    show_progress()
    show_progress()  # once is enough: no line twice
    logging.getLogger("raysift.operators.cluster").info("k-means: pass 1")
    logging.getLogger("raysift.data.user_data").info("writing out")
    assert capsys.readouterr().err == "raysift: k-means: pass 1\nraysift: writing out\n"
