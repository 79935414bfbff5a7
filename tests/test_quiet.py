"""capbench.quiet: a speed measurement pauses the other workers of its machine, and only those."""

import json
import os
import subprocess
import sys
import threading
import time

import pytest

from capbench import leases, quiet


@pytest.fixture
def other_process():
    """A live process that is not this one (the measurer, for the worker under test)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc
    proc.kill()
    proc.wait()


def _request(cache, pid, host=None):
    folder = cache / quiet.QUIET_DIR
    folder.mkdir(parents=True, exist_ok=True)
    info = {"pid": pid, "pid_start": leases.process_start(pid), "host_id": host or leases.host_id()}
    path = folder / f"{info['host_id']}-{pid}{quiet.SUFFIX}"
    path.write_text(json.dumps(info))
    return path


def test_a_worker_pauses_while_another_process_asks_for_quiet(tmp_path, other_process, monkeypatch):
    monkeypatch.setattr(quiet, "POLL_SECONDS", 0.05)
    request = _request(tmp_path, other_process.pid)
    threading.Timer(0.6, request.unlink).start()  # the measurement ends
    started = time.monotonic()
    paused = quiet.pause_point(tmp_path)
    assert 0.5 <= paused <= time.monotonic() - started + 1e-6
    assert quiet.pause_point(tmp_path) == 0.0  # no request: no pause


def test_requests_of_this_process_other_hosts_or_dead_processes_do_not_pause(tmp_path, other_process):
    _request(tmp_path, os.getpid())  # its own measurement
    _request(tmp_path, other_process.pid, host="another-host")  # a worker elsewhere sharing the cache
    other_process.kill()
    other_process.wait()
    stale = _request(tmp_path, other_process.pid)  # a measurer that died mid-measurement
    assert quiet.live_requests(tmp_path) == []
    assert quiet.pause_point(tmp_path) == 0.0
    assert not stale.exists()  # removed by the first worker that saw it


def test_the_progress_bar_of_training_is_the_pause_point(tmp_path, other_process, monkeypatch):
    monkeypatch.setattr(quiet, "POLL_SECONDS", 0.05)
    updates = []

    class Bar:
        def update(self, n=1):
            updates.append(n)

    bar = quiet.PausingBar(Bar(), tmp_path)
    bar.update()
    assert bar.pauses == 0 and bar.paused_seconds == 0.0
    request = _request(tmp_path, other_process.pid)
    threading.Timer(0.3, request.unlink).start()
    bar._checked = float("-inf")
    bar.update()
    assert bar.pauses == 1 and bar.paused_seconds >= 0.25 and updates == [1, 1]
    assert quiet.PausingBar(Bar(), None).update() is None  # no cache directory: never pauses


def test_the_window_waits_for_the_others_to_go_idle_and_always_removes_its_request(tmp_path, monkeypatch):
    monkeypatch.setattr(quiet, "_quiet_now", lambda probe, seconds=1.0: next(readings))
    readings = iter([1.0, 0.9, 0.02])  # the other worker pauses at its next step
    with quiet.quiet_window(tmp_path, wait_seconds=60) as window:
        (request,) = (tmp_path / quiet.QUIET_DIR).glob(f"*{quiet.SUFFIX}")
        assert json.loads(request.read_text())["pid"] == os.getpid()
    assert window["requested"] and window["idle"] is True
    assert not request.exists()
    readings = iter([1.0] * 1000)  # a worker that never pauses (evaluating): measured anyway, said so
    with quiet.quiet_window(tmp_path, wait_seconds=0.0) as window:
        pass
    assert window["idle"] is False
    readings = iter([0.0])
    with pytest.raises(ValueError, match="the measurement failed"), quiet.quiet_window(tmp_path, 60):
        raise ValueError("the measurement failed")  # its request is removed all the same
    assert not list((tmp_path / quiet.QUIET_DIR).glob(f"*{quiet.SUFFIX}"))
    with quiet.quiet_window(None) as window:
        assert window == {"requested": False}
