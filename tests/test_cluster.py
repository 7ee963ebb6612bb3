"""Scale-out on one machine: a Ray head and a second Ray node on loopback, and a 2-worker
`crammit train --address` whose workers land one on each node."""

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from crammit.cluster import concurrent_cpu_runs, max_cpu_workers, worker_cpus, worker_threads
from crammit.train import rundir


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def ray_node(*args: str, temp_dir: Path) -> subprocess.Popen:
    """`ray start --block`: the node lives as long as this process (its own process group)."""
    return subprocess.Popen(
        [sys.executable, "-m", "ray.scripts.scripts", "start", "--block", "--disable-usage-stats",
         "--temp-dir", str(temp_dir), *args],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        env={**os.environ, "RAY_ADDRESS": ""},
    )


def stop(node: subprocess.Popen) -> None:
    """The node's processes and only them (`ray stop` would stop every Ray on the machine),
    killed: a head stopped gracefully takes half a minute, and the test is done with it."""
    with contextlib.suppress(ProcessLookupError):  # it has ended by itself
        os.killpg(node.pid, signal.SIGKILL)
    node.wait()


# One process joins the cluster (ray.init waits for the head) and polls it: a process started
# per poll would pay Ray's import and connection each time, on the cores the nodes start on.
WAIT_FOR_NODES = """
import sys, time
import ray
ray.init(address=sys.argv[1], logging_level="ERROR")
while sum(node["Alive"] for node in ray.nodes()) < int(sys.argv[2]):
    time.sleep(0.2)
"""


def wait_for_nodes(address: str, count: int, deadline_s: float = 120) -> None:
    try:
        subprocess.run([sys.executable, "-c", WAIT_FOR_NODES, address, str(count)], capture_output=True,
                       timeout=deadline_s, check=True)
    except (subprocess.TimeoutExpired, subprocess.CalledProcessError) as error:
        raise AssertionError(f"{count} Ray nodes did not come up at {address}") from error


@pytest.mark.slow
def test_two_workers_train_across_a_head_and_a_second_node(tmp_path, toy_data):
    port = free_port()
    address = f"127.0.0.1:{port}"
    temp_dir = Path("/tmp") / f"crammit-nodes-{port}"  # Ray's socket paths must stay short
    # Each worker takes 2 of the 5 CPUs: two cannot share the head's 3, and one CPU stays
    # free on the head for Ray Data's readers.
    head = ray_node("--head", "--node-ip-address", "127.0.0.1", "--port", str(port), "--num-cpus", "3",
                    "--include-dashboard=false", "--object-store-memory", str(300 << 20), temp_dir=temp_dir)
    nodes = [head]
    try:
        nodes.append(ray_node("--address", address, "--node-ip-address", "127.0.0.1", "--num-cpus", "2",
                              "--object-store-memory", str(200 << 20), temp_dir=temp_dir))
        wait_for_nodes(address, 2)
        run_dir = tmp_path / "run"
        result = subprocess.run(
            [sys.executable, "-m", "crammit", "train", "--address", address, "--gpus", "0", "--workers", "2",
             "--size", "tiny", "--data", str(toy_data), "--tokens", str(6 * 16 * 128), "--batch-size", "16",
             "--micro-batch", "8", "--out", str(run_dir)],
            capture_output=True, text=True, timeout=600,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        final = rundir.read_final(run_dir)
        assert len(final.worker_nodes) == 2 and len(set(final.worker_nodes)) == 2
    finally:
        for node in reversed(nodes):
            stop(node)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_crammit_s_ray_jobs_change_ray_train_s_defaults_unless_the_user_set_them(monkeypatch):
    """Every process of the job gets RAY_TRAIN_ENV (a study's trials start their runs'
    Train controllers); a variable the user exported keeps the user's value."""
    import ray

    from crammit.cluster import RAY_TRAIN_ENV, start_ray

    calls = []
    monkeypatch.setattr(ray, "init", lambda **kwargs: calls.append(kwargs))
    monkeypatch.delenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", raising=False)
    monkeypatch.setenv("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "1")
    start_ray()
    user_set = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "1"}
    assert calls[0]["runtime_env"]["env_vars"] == {**RAY_TRAIN_ENV, **user_set}
    assert RAY_TRAIN_ENV["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] != "2"  # not Ray's default


def test_the_placement_policy_shares_cpus_less_the_readers_one():
    assert worker_cpus(2, 1) == 1.0  # one CPU stays with Ray Data's readers
    assert worker_cpus(2, 8) == 0.125 and max_cpu_workers(2) == 8  # down to MIN_CPU_PER_WORKER each
    assert worker_cpus(5, 1, concurrent_runs=2, driver_cpus=0.5) == 1.5
    assert worker_threads(2, 1) == 2 and worker_threads(2, 8) == 1  # threads use every core
    assert concurrent_cpu_runs(16, 2) == 8
