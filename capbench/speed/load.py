"""Machine load during a measurement: is anything else using the cores this process times on?

A speedup is a ratio of two timings taken in the same round, so slow drift cancels; another process that
takes CPU time from the measurement's threads does not: a multi-threaded kernel waits for its slowest
thread, so a preempted thread stretches some rounds and not others (the published 0.98x-1.22x spread
between identical unstructured models was that). So every measurement records

- the load average (`os.getloadavg`) before and after, and
- a direct measure of other processes' CPU use while it ran, in cores: the busy time of the cores this
  process may use (/proc/stat: user, nice, system, irq, softirq and steal jiffies) minus this process's own
  CPU time (`os.times`), divided by the wall time.

Where /proc/stat is absent the 1-minute load average after the measurement, less this process's threads,
stands in (coarser: it lags by about a minute). Both readings come through a `LoadProbe`, so tests inject
fake ones.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

# A measurement is "busy" when other processes used more than this many cores while it ran, whatever cores
# it left free (they share the memory bandwidth and caches its kernels wait on). An idle machine reads
# 0.01-0.05 cores here (kernel threads, a shell); one CPU-bound process reads 0.6-1.0. A quarter of a core is
# well clear of both.
BUSY_CORES = 0.25
# Without /proc/stat the load average (runnable threads, a 1-minute decaying mean) is all there is: it counts
# this process's own threads and lags, so the margin above them is wider.
BUSY_LOAD = 0.75

_STAT = Path("/proc/stat")
_BUSY_FIELDS = (0, 1, 2, 5, 6, 7)  # user nice system (idle iowait) irq softirq steal; guest is in user


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity), else the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


class LoadProbe:
    """Where load readings come from; the default reads this machine. Every method may return None where the
    platform has no such reading."""

    def loadavg(self) -> tuple[float, float, float] | None:
        try:
            return tuple(float(v) for v in os.getloadavg())  # type: ignore[return-value]
        except (AttributeError, OSError):
            return None

    def busy_cpu_seconds(self) -> float | None:
        """CPU seconds all processes have spent on the cores this process may use, since boot."""
        try:
            lines = _STAT.read_text().splitlines()
        except OSError:
            return None
        try:
            cores = {f"cpu{i}" for i in os.sched_getaffinity(0)}
        except (AttributeError, OSError):
            cores = set()
        per_core = [line.split() for line in lines if line.split(" ", 1)[0] in cores]
        rows = per_core or [line.split() for line in lines[:1] if line.startswith("cpu ")]
        if not rows:
            return None
        jiffies = sum(int(row[1 + i]) for row in rows for i in _BUSY_FIELDS if 1 + i < len(row))
        return jiffies / os.sysconf("SC_CLK_TCK")

    def own_cpu_seconds(self) -> float:
        """CPU seconds this process (all its threads) has used."""
        t = os.times()
        return t.user + t.system

    def wall(self) -> float:
        return time.monotonic()


@dataclass
class _Mark:
    wall: float
    busy: float | None
    own: float
    loadavg: tuple[float, float, float] | None


def _mark(probe: LoadProbe) -> _Mark:
    return _Mark(probe.wall(), probe.busy_cpu_seconds(), probe.own_cpu_seconds(), probe.loadavg())


class LoadMonitor:
    """Reads the load around one phase of a measurement: `start()`, then `stop()` returns the reading."""

    def __init__(self, probe: LoadProbe | None = None):
        self.probe = probe or LoadProbe()
        self._start: _Mark | None = None

    def start(self) -> LoadMonitor:
        self._start = _mark(self.probe)
        return self

    def stop(self) -> dict:
        """{"wall_s", "own_cores", "other_cores" (None without /proc/stat), "loadavg_before", "loadavg_after"}."""
        if self._start is None:
            raise RuntimeError("LoadMonitor.stop() before start()")
        a, b = self._start, _mark(self.probe)
        wall = max(b.wall - a.wall, 1e-9)
        own = (b.own - a.own) / wall
        other = None
        if a.busy is not None and b.busy is not None:
            other = max(0.0, (b.busy - a.busy) / wall - own)
        return {
            "wall_s": wall,
            "own_cores": own,
            "other_cores": other,
            "loadavg_before": list(a.loadavg) if a.loadavg else None,
            "loadavg_after": list(b.loadavg) if b.loadavg else None,
        }


def busy_verdict(
    reading: dict, threads: int, cores: int, threshold: float = BUSY_CORES
) -> tuple[bool | None, str]:
    """(busy, reason) of one reading of a measurement run with `threads` threads on `cores` usable cores.

    Busy when other processes used more than `threshold` cores while it ran; without /proc/stat, when the
    1-minute load average after it exceeds `threads` + `BUSY_LOAD`. None (unknown) when neither reading
    exists.
    """
    other = reading.get("other_cores")
    if other is not None:
        detail = f"other processes used {other:.2f} cores (limit {threshold:.2f}; {threads} threads on {cores} cores)"
        return other > threshold, detail
    after = reading.get("loadavg_after")
    if after:
        load_limit = threads + BUSY_LOAD
        detail = f"1-min load average {after[0]:.2f} (limit {load_limit:.2f}; no /proc/stat)"
        return after[0] > load_limit, detail
    return None, "machine load unknown (no /proc/stat, no load average)"
