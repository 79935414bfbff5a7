"""A quiet machine for timing: a speed measurement asks the other capbench workers on its host to pause.

A grid runs two or more workers on one machine (one thread each). A speed measurement taken while another
worker trains reads that worker's CPU use (capbench.speed.load) and is marked busy: its ratios are not
trustworthy. So ``quiet_window`` (around each ``capbench run --speed`` measurement):

1. takes the cache's ``quiet-measure`` lock, so two measurements never overlap (a second one waits, idle);
2. writes a request file ``<cache>/.quiet/<host_id>-<pid>.request`` naming this process (host, PID and
   start time, as cell leases do: capbench.leases);
3. waits until other processes use less than ``capbench.speed.load.BUSY_CORES`` cores, at most
   ``wait_seconds`` (a worker that is evaluating or probing pauses only when it next trains): the
   measurement then runs, and its own load reading still says whether the machine was quiet;
4. removes the request (also when the measurement fails).

Workers call ``pause_point`` at every training step (``PausingBar``, the progress bar every training loop
updates): while a live request of another process on the same host exists, they sleep. Training is
deterministic whatever its wall time, so a pause changes no result; the cell's ``train.paused_seconds``
says how much of its wall time was spent paused. A request whose process is gone is removed by the first
worker that sees it; a worker never pauses longer than ``MAX_PAUSE_SECONDS`` for one request.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

from capbench import leases

QUIET_DIR = ".quiet"
SUFFIX = ".request"
WAIT_SECONDS = 600.0  # the most a measurement waits for the others to go idle before it runs anyway
MAX_PAUSE_SECONDS = 3600.0  # a hung measurer cannot stop a grid for longer than this
POLL_SECONDS = 0.5
CHECK_EVERY_SECONDS = 0.5  # pause_point looks for requests at most this often (a training step is longer)


def _requests_dir(cache_dir: str | Path) -> Path:
    return Path(cache_dir) / QUIET_DIR


def _own_request(cache_dir: str | Path) -> Path:
    return _requests_dir(cache_dir) / f"{leases.host_id()}-{os.getpid()}{SUFFIX}"


def live_requests(cache_dir: str | Path | None) -> list[dict]:
    """The quiet requests of other live processes on this host; stale ones (their process gone) are removed."""
    if cache_dir is None:
        return []
    folder = _requests_dir(cache_dir)
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    me, here, live = os.getpid(), leases.host_id(), []
    for entry in entries:
        if not entry.name.endswith(SUFFIX):
            continue
        try:
            info = json.loads(Path(entry.path).read_text())
        except (OSError, ValueError):
            continue  # caught between its creation and its write: seen at the next look
        if info.get("host_id") != here or info.get("pid") == me:
            continue
        if leases.process_alive(int(info.get("pid", -1)), info.get("pid_start")):
            live.append(info)
        else:
            Path(entry.path).unlink(missing_ok=True)
    return live


def pause_point(cache_dir: str | Path | None, clock=time.monotonic, sleep=time.sleep) -> float:
    """Block while another live process on this host asks for quiet (``quiet_window``); returns the
    seconds paused (0.0 without a request)."""
    started = None
    while live_requests(cache_dir):
        now = clock()
        if started is None:
            started = now
        elif now - started > MAX_PAUSE_SECONDS:
            break
        sleep(POLL_SECONDS)
    return 0.0 if started is None else clock() - started


class PausingBar:
    """A progress bar whose ``update`` is also a pause point (see the module docstring); ``paused_seconds``
    adds up the pauses. Wraps a tqdm bar, itself a context manager."""

    def __init__(self, bar, cache_dir: str | Path | None):
        self.bar, self.cache_dir = bar, cache_dir
        self.paused_seconds, self.pauses = 0.0, 0
        self._checked = float("-inf")

    def update(self, n: int = 1):
        now = time.monotonic()
        if self.cache_dir is not None and now - self._checked >= CHECK_EVERY_SECONDS:
            paused = pause_point(self.cache_dir)
            if paused:
                self.paused_seconds += paused
                self.pauses += 1
            self._checked = time.monotonic()
        return self.bar.update(n)

    def __getattr__(self, name):
        return getattr(self.bar, name)

    def __enter__(self):
        self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        return self.bar.__exit__(*exc)


def _quiet_now(probe, seconds: float = 1.0) -> float | None:
    """Other processes' CPU use over ``seconds``, in cores (None where it cannot be read)."""
    from capbench.speed.load import LoadMonitor

    monitor = LoadMonitor(probe).start()
    time.sleep(seconds)
    return monitor.stop()["other_cores"]


@contextlib.contextmanager
def quiet_window(cache_dir: str | Path | None, wait_seconds: float | None = None, probe=None):
    """Ask the other capbench workers on this host to pause while the body runs (see the module docstring).

    Yields a dict for the measurement's record: ``requested`` (False without a cache directory: nothing
    asked), ``waited_seconds`` (until the others were idle, or ``wait_seconds``) and ``idle`` (whether they
    were idle when the body started: False after a timeout, None where the load cannot be read)."""
    from capbench.distributed import cache_lock
    from capbench.speed.load import BUSY_CORES

    if cache_dir is None:
        yield {"requested": False}
        return
    wait_seconds = WAIT_SECONDS if wait_seconds is None else wait_seconds
    with cache_lock(cache_dir, "quiet-measure"):
        path = _own_request(cache_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        pid = os.getpid()
        info = {"pid": pid, "pid_start": leases.process_start(pid), "host_id": leases.host_id()}
        partial = path.with_name(path.name + ".tmp")
        partial.write_text(json.dumps(info))
        partial.replace(path)
        try:
            started, idle = time.monotonic(), None
            while True:
                other = _quiet_now(probe)
                idle = None if other is None else other <= BUSY_CORES
                if idle is not False or time.monotonic() - started >= wait_seconds:
                    break
            yield {"requested": True, "waited_seconds": round(time.monotonic() - started, 1), "idle": idle}
        finally:
            path.unlink(missing_ok=True)
