"""The README's cluster path, run for real: `ray job submit --working-dir . -- raysift run`.

Starts a local Ray cluster of two nodes (a head and a second `ray start --address`, one CPU
each), submits configs/cluster_check.yaml through the job API with this checkout as the working
directory, and checks the job's summary and that the two training workers ran on the two nodes.
It also validates cluster.yaml against the cluster-config schema Ray ships. Run by
`make cluster-check`, which `.ci/run` calls.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
JOB = "configs/cluster_check.yaml"
TIMEOUT_S = 900
# set in the environment of the cluster's `ray start`s only: every process of the cluster has it
CLUSTER_MARK = "RAYSIFT_CLUSTER_CHECK"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def validate_cluster_yaml() -> None:
    """cluster.yaml against ray/autoscaler/ray-schema.json, the schema `ray up` checks."""
    import jsonschema
    import ray.autoscaler
    import yaml

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(yaml.safe_load((ROOT / "cluster.yaml").read_text()), schema)
    print("cluster.yaml: valid against Ray's cluster-config schema")


def ray_cli(*args: str, env: dict) -> None:
    subprocess.run([str(BIN / "ray"), *args], check=True, env=env, stdout=subprocess.DEVNULL)


def start_cluster(temp: Path, env: dict) -> tuple[str, str]:
    """A head and a second node, one CPU each; returns (GCS address, dashboard URL)."""
    port, dash = free_port(), free_port()

    def node_args() -> list[str]:
        # Each node's agents on ports of their own: the defaults (52365, ...) are taken by
        # any other Ray on this machine, and a job agent that cannot bind takes no jobs.
        return [
            "--num-cpus=1",
            "--num-gpus=0",
            "--object-store-memory=200000000",
            "--disable-usage-stats",
            f"--dashboard-agent-listen-port={free_port()}",
            f"--dashboard-agent-grpc-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}",
            f"--metrics-export-port={free_port()}",
        ]

    ray_cli(
        "start",
        "--head",
        f"--port={port}",
        f"--dashboard-port={dash}",
        "--include-dashboard=true",
        "--dashboard-host=127.0.0.1",
        f"--temp-dir={temp}",
        '--resources={"head_node": 1}',
        *node_args(),
        env=env,
    )
    ray_cli(
        "start",
        f"--address=127.0.0.1:{port}",
        '--resources={"second_node": 1}',
        *node_args(),
        env=env,
    )
    return f"127.0.0.1:{port}", f"http://127.0.0.1:{dash}"


def cluster_pids(temp: Path) -> set[int]:
    """The processes this check's cluster runs: those with `CLUSTER_MARK` in their environment
    (every one the `ray start`s began inherits it) and their children. Ray's agents and
    workers retitle themselves `ray::...` over their command line and the head of their
    environment, so neither names the cluster any more; their parent, a raylet, still does."""
    mark = f"{CLUSTER_MARK}={temp}".encode()
    parents, ours = {}, set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            environ = (proc / "environ").read_bytes()
        except OSError:  # gone, or not ours to read
            continue
        pid = int(proc.name)
        parents[pid] = int(stat[stat.rindex(")") + 2 :].split()[1])  # after the (name)
        if mark in environ.split(b"\0"):
            ours.add(pid)
    grew = True
    while grew:
        children = {pid for pid, parent in parents.items() if parent in ours} - ours
        ours |= children
        grew = bool(children)
    return ours


def stop_cluster(temp: Path) -> None:
    """Stop this cluster's processes only (`ray stop` would stop every Ray on the machine),
    all of them found before any is stopped: a stopped raylet's children lose their parent."""
    pids = cluster_pids(temp)
    for sig, grace in ((signal.SIGTERM, 3), (signal.SIGKILL, 0)):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        time.sleep(grace)
    shutil.rmtree(temp, ignore_errors=True)


def submit(dashboard: str, run_dir: Path) -> None:
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(dashboard)
    agent_deadline = time.monotonic() + 300
    while True:  # the head's job agent registers some seconds after `ray start` returns
        try:
            job_id = client.submit_job(
                entrypoint=f"raysift run {JOB} --set run_dir={run_dir}",
                runtime_env={"working_dir": str(ROOT), "excludes": ["runs"]},
            )
            break
        except RuntimeError as e:
            if "No available agent" not in str(e) or time.monotonic() > agent_deadline:
                raise
            time.sleep(3)
    print(f"submitted {job_id}: raysift run {JOB}")
    deadline = time.monotonic() + TIMEOUT_S
    while not (status := client.get_job_status(job_id)).is_terminal():
        if time.monotonic() > deadline:
            client.stop_job(job_id)
            sys.exit(f"cluster check: the job ran past {TIMEOUT_S} s")
        time.sleep(2)
    logs = client.get_job_logs(job_id)
    if status != JobStatus.SUCCEEDED:
        sys.exit(f"cluster check: the job ended {status}:\n{logs[-4000:]}")
    print(logs.strip().splitlines()[-1])


def worker_nodes(address: str) -> set[str]:
    """The nodes that hosted Ray Train's training-worker actors (dead ones included)."""
    from ray.util.state import list_actors

    actors = list_actors(
        address=address,
        filters=[("class_name", "=", "RayTrainWorker")],
        detail=True,
        limit=1000,
        raise_on_missing_output=False,
    )
    return {a.node_id for a in actors}


def cluster_nodes(address: str) -> set[str]:
    from ray.util.state import list_nodes

    return {n.node_id for n in list_nodes(address=address, raise_on_missing_output=False)}


def main() -> int:
    temp = Path(tempfile.mkdtemp(prefix="rs-cluster-", dir="/tmp"))  # short: socket paths
    # Token authentication, as `ray start --head` sets up by default: every node, the job
    # client and the state API read one token, kept in this check's folder, not ~/.ray. Set
    # before Ray is imported, which reads the mode once.
    token = temp / "auth_token"
    token.write_text(secrets.token_hex(32))
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token))
    os.environ.pop("RAY_ADDRESS", None)
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", CLUSTER_MARK: str(temp)}
    validate_cluster_yaml()
    try:
        address, dashboard = start_cluster(temp, env)
        submit(dashboard, temp / "run")
        summary = json.loads((temp / "run" / "summary.json").read_text())
        nodes, used = cluster_nodes(address), worker_nodes(address)
        print(
            f"summary: strategy {summary['strategy']}, test accuracy "
            f"{summary['test_accuracy']:.4f}; training workers on {len(used)} of "
            f"{len(nodes)} nodes"
        )
        if summary["strategy"] != "m2" or summary["test_accuracy"] < 0.8:
            sys.exit(f"cluster check: unexpected summary {summary}")
        if len(nodes) != 2 or used != nodes:
            sys.exit(
                f"cluster check: training workers ran on {sorted(used)}, the cluster's "
                f"nodes are {sorted(nodes)}"
            )
        print("cluster check: passed")
        return 0
    finally:
        stop_cluster(temp)


if __name__ == "__main__":
    sys.exit(main())
