"""`--executor ray` on a real two-node Ray cluster started on 127.0.0.1 by the test (and only its processes
stopped afterwards): the leaderboard equals a local run's, and a worker killed mid-cell is retried by Ray
with no record lost or duplicated."""

import importlib.util
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

import pytest
from test_runner import run_args

from capbench.cli import main
from capbench.records import load_records
from capbench.report import summarize

if importlib.util.find_spec("ray") is None:  # not imported here: Ray reads its auth settings at import
    pytest.skip("ray is not installed: pip install 'capbench[ray]'", allow_module_level=True)

REPO = Path(__file__).resolve().parents[1]
RAY_CLI = Path(sys.executable).with_name("ray")
# Fields that say when, where and how fast a record was made, not what it measured.
PROVENANCE = ("timings", "finished_at", "versions", "git_commit", "machine", "executor", "teacher")
PATHS = ("model_dir", "dense_model_dir")


def _free_ports(n: int) -> list[int]:
    sockets, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        sockets.append(s)
        ports.append(s.getsockname()[1])
    for s in sockets:
        s.close()
    return ports


def _session_processes(session_ids: set[int]) -> list[int]:
    """Pids of live processes in the given sessions (every process our `ray start --block`s spawned)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[3]) in session_ids and fields[0] != "Z":
            pids.append(int(entry.name))
    return pids


def _start_node(args: list[str], env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [str(RAY_CLI), "start", "--block", *args],
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own session: teardown stops exactly these processes
    )


@pytest.fixture(scope="module")
def ray_cluster():
    """A head node and a second node, one CPU each, on 127.0.0.1; yields the address."""
    if not RAY_CLI.is_file():
        pytest.skip(f"the ray command is not installed beside {sys.executable}")
    temp = Path(tempfile.mkdtemp(prefix="cbray", dir="/tmp"))  # short: Ray's socket paths must fit
    # Token authentication with a token of our own: nothing is read from or written to ~/.ray.
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32), "RAY_USAGE_STATS_ENABLED": "0"}
    env = {
        **os.environ,
        **auth,
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    (gcs, client, *node_ports) = _free_ports(14)
    common = ["--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--num-gpus", "0"]
    common += ["--object-store-memory", str(80 * 1024 * 1024), "--disable-usage-stats"]

    def node_flags(ports: list[int], low: int) -> list[str]:
        return [
            "--node-manager-port", str(ports[0]),
            "--object-manager-port", str(ports[1]),
            "--dashboard-agent-listen-port", str(ports[2]),
            "--dashboard-agent-grpc-port", str(ports[3]),
            "--runtime-env-agent-port", str(ports[4]),
            "--metrics-export-port", str(ports[5]),
            "--min-worker-port", str(low),
            "--max-worker-port", str(low + 199),
        ]  # fmt: skip

    nodes = []
    try:
        head_args = ["--head", "--port", str(gcs), "--ray-client-server-port", str(client)]
        head_args += ["--include-dashboard", "false", "--temp-dir", str(temp)]
        nodes.append(
            _start_node([*head_args, *common, *node_flags(node_ports[:6], 23000)], env, temp / "head.log")
        )
        address = f"127.0.0.1:{gcs}"
        worker_args = ["--address", address, *common, *node_flags(node_ports[6:12], 23400)]
        deadline = time.time() + 120
        started_worker = False
        while time.time() < deadline:
            for node in nodes:
                if node.poll() is not None:
                    logs = "".join(p.read_text()[-3000:] for p in temp.glob("*.log"))
                    pytest.fail(f"ray start exited with {node.returncode}:\n{logs}")
            status = subprocess.run(
                [str(RAY_CLI), "status", "--address", address], env=env, capture_output=True, text=True
            )
            if status.returncode == 0 and not started_worker:
                nodes.append(_start_node(worker_args, env, temp / "worker.log"))
                started_worker = True
            if status.returncode == 0 and status.stdout.count("node_") >= 2:
                break
            time.sleep(1)
        else:
            pytest.fail("the two-node Ray cluster did not come up within 120 s")
        yield address, env
    finally:
        sessions = {node.pid for node in nodes}  # session leaders (start_new_session)
        for node in nodes:
            if node.poll() is None:
                node.send_signal(signal.SIGTERM)  # `ray start --block` stops its node's processes
        for node in nodes:
            try:
                node.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        time.sleep(1)
        for pid in _session_processes(sessions):  # whatever is left of ours, and only ours
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(temp, ignore_errors=True)


def _without_seconds(value):
    if isinstance(value, dict):
        return {k: _without_seconds(v) for k, v in value.items() if "seconds" not in k}
    return value


def _comparable(record: dict, roots: list[Path]) -> dict:
    record = _without_seconds({k: v for k, v in record.items() if k not in PROVENANCE})
    for key in PATHS:
        value = record.get(key) or ""
        for root in roots:
            value = value.replace(str(root), "<root>")
        record[key] = value
    return record


def _board(run_dir: Path) -> dict:
    board = summarize(load_records(run_dir))
    board.pop("provenance", None)
    return board


def _driver(args: list[str], env: dict) -> subprocess.Popen:
    """`capbench run` in its own process (a Ray driver joins a cluster once per process)."""
    return subprocess.Popen(
        [sys.executable, "-m", "capbench", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )


def _finish(driver: subprocess.Popen) -> str:
    output = driver.communicate(timeout=300)[0].decode()
    assert driver.returncode == 0, output
    return output


def test_ray_grid_matches_local_grid(ray_cluster, tiny_model_dir, tiny_glue, tmp_path):
    address, env = ray_cluster
    grid = [
        "--methods",
        "magnitude,cap_movement",
        "--sparsity",
        "0.5,0.9",
        "--seeds",
        "0",
        "--no-save-models",
    ]
    local = tmp_path / "local"
    on_ray = tmp_path / "ray"
    started = time.perf_counter()
    assert main([*run_args(tiny_model_dir, tiny_glue, local, tmp_path / "cache-local"), *grid]) == 0
    local_seconds = time.perf_counter() - started
    started = time.perf_counter()
    ray_run = [*run_args(tiny_model_dir, tiny_glue, on_ray, tmp_path / "cache-ray"), *grid]
    ray_run += ["--executor", "ray", "--ray-address", address]
    output = _finish(_driver(ray_run, env))
    ray_seconds = time.perf_counter() - started
    assert "5 cells: 5 run, 0 already finished, 0 failed" in output
    print(f"smoke grid wall time: local {local_seconds:.1f} s, two-node Ray {ray_seconds:.1f} s")

    assert _board(on_ray) == _board(local)
    roots = [local, on_ray, tmp_path / "cache-local", tmp_path / "cache-ray"]
    local_records = {r["cell_id"]: _comparable(r, roots) for r in load_records(local)}
    ray_records = {r["cell_id"]: r for r in load_records(on_ray)}
    assert set(ray_records) == set(local_records)
    for cell_id, record in ray_records.items():
        assert record["executor"]["name"] == "ray" and record["executor"]["attempt"] == 1
        assert _comparable(record, roots) == local_records[cell_id], cell_id
    # Shared work was done once: one dense teacher and one pair of CAP banks (PrC, FiC) in the cache.
    assert len(list((tmp_path / "cache-ray" / "dense").glob("*/config.json"))) == 1
    assert len(list((tmp_path / "cache-ray" / "cap_banks").glob("*/meta.json"))) == 2
    # ... and its cost is reported by the cell that builds the banks in a local run (the first CAP cell).
    built = sorted(r["cap"]["extra_forward_examples"]["prc"] for r in ray_records.values() if r.get("cap"))
    assert built == [0, 96]

    # Rerunning on Ray skips every finished cell.
    assert "0 run, 5 already finished" in _finish(_driver(ray_run, env))


def test_worker_killed_mid_cell_is_retried_without_losing_or_duplicating(
    ray_cluster, tiny_model_dir, tiny_glue, tmp_path
):
    address, env = ray_cluster
    out = tmp_path / "run"
    args = run_args(tiny_model_dir, tiny_glue, out, tmp_path / "cache", "--methods", "magnitude")
    args += ["--sparsity", "0.5,0.9", "--epochs", "30", "--executor", "ray", "--ray-address", address]
    driver = _driver(args, env)
    killed = None
    try:
        deadline = time.time() + 240
        while killed is None and time.time() < deadline and driver.poll() is None:
            for lock in (out / ".locks").glob("rte-magnitude-*.lock"):
                try:
                    note = json.loads(lock.read_text() or "{}")
                except json.JSONDecodeError:  # caught mid-write
                    continue
                if note.get("state") == "running":
                    time.sleep(0.5)  # inside the cell: loading, or training its 30 epochs
                    if not (out / "records" / f"{lock.stem}.json").exists():
                        os.kill(note["pid"], signal.SIGKILL)
                        killed = lock.stem
                    break
            time.sleep(0.1)
        output = driver.communicate(timeout=300)[0].decode()
    finally:
        if driver.poll() is None:
            driver.kill()
    assert killed, "no pruned cell was caught running"
    assert driver.returncode == 0, output
    assert "3 cells: 3 run, 0 already finished, 0 failed" in output
    files = sorted(p.name for p in (out / "records").iterdir())
    assert not [f for f in files if f.startswith(".")]  # no temp files left
    assert len([f for f in files if f.endswith(".json")]) == 3  # one record per cell
    records = {r["cell_id"]: r for r in load_records(out)}
    assert all(r["status"] == "done" for r in records.values())
    assert all(r["predictions"]["file"] in files for r in records.values())
    assert records[killed]["executor"]["attempt"] == 2  # Ray's retry finished the killed cell
    assert not (out / ".locks" / f"{killed}.lock").exists()  # the retry's lease was released


class _FakeRay:
    def __init__(self, gpus: float):
        self.gpus = gpus

    def cluster_resources(self) -> dict:
        return {"CPU": 8.0, **({"GPU": self.gpus} if self.gpus else {})}


def test_gpus_per_cell_sets_each_task_s_gpus_and_is_checked_before_work(monkeypatch, capsys, tmp_path):
    from capbench.cli import main
    from capbench.errors import CapbenchError
    from capbench.executors.ray_executor import task_options

    monkeypatch.delenv("CAPBENCH_RAY_GPUS_PER_CELL", raising=False)
    assert task_options(_FakeRay(4), 0.5)["num_gpus"] == 0.5
    assert task_options(_FakeRay(4))["num_gpus"] == 1  # a GPU cluster: one GPU per cell by default
    assert task_options(_FakeRay(0))["num_gpus"] == 0
    monkeypatch.setenv("CAPBENCH_RAY_GPUS_PER_CELL", "0.25")
    assert task_options(_FakeRay(4))["num_gpus"] == 0.25
    assert task_options(_FakeRay(4), 2)["num_gpus"] == 2  # the flag wins over the environment
    with pytest.raises(CapbenchError, match="--gpus-per-cell 1: the Ray cluster has no GPUs"):
        task_options(_FakeRay(0), 1)
    base = ["run", "--tasks", "rte", "--methods", "magnitude", "--out", str(tmp_path / "x")]
    assert main([*base, "--gpus-per-cell", "1"]) == 2
    assert "--gpus-per-cell 1 needs --executor ray" in capsys.readouterr().err
    assert main([*base, "--executor", "ray", "--gpus-per-cell", "-1"]) == 2
    assert "expected 0 or more GPUs per cell" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
