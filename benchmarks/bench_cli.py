"""How long the command line takes to answer `raysift --help`, here and at an older commit.

Each run is a fresh interpreter, the two checkouts alternating, and the table gives the median
and the range. The older commit is unpacked with `git archive` into a temporary folder and run
from there as `pipelines.cli`, the module path before the raysift namespace (issue 15).

    .venv/bin/python benchmarks/bench_cli.py [--against 4b084dd] [--runs 7]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROBE = "import sys; sys.argv = ['raysift', '--help']; from {module} import main; main()"


def timed(root: Path, module: str, path: str) -> float:
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": path}
    t = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", PROBE.format(module=module)],
        cwd=root,
        env=env,
        stdout=subprocess.DEVNULL,
        check=True,
    )
    return time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--against", default="4b084dd", help="the older commit (default %(default)s)")
    p.add_argument("--runs", type=int, default=7)
    args = p.parse_args()
    old = Path(tempfile.mkdtemp(prefix="bench-cli-"))
    archive = subprocess.run(
        ["git", "archive", args.against], cwd=ROOT, capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
    # The old checkout first on the path, so its own top-level packages are the ones imported.
    checkouts = {
        args.against: (old, "pipelines.cli", str(old)),
        "this checkout": (ROOT, "raysift.cli", ""),
    }
    times = {name: [] for name in checkouts}
    for _ in range(args.runs):
        for name, (root, module, path) in checkouts.items():
            times[name].append(timed(root, module, path))
    print(f"raysift --help, {args.runs} fresh interpreters each, alternating")
    print(f"{'checkout':<16} {'median s':>8} {'min s':>6} {'max s':>6}")
    for name, t in times.items():
        print(f"{name:<16} {statistics.median(t):>8.2f} {min(t):>6.2f} {max(t):>6.2f}")
    ratio = statistics.median(times["this checkout"]) / statistics.median(times[args.against])
    print(f"ratio this / {args.against}: {ratio:.2f}")


if __name__ == "__main__":
    main()
