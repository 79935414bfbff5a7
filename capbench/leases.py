"""Cell leases: which worker is running a grid cell, on a store that several workers share.

A worker (a ``capbench run`` process, a Ray task, a shard) claims a cell before it runs it, by creating the
cell's lease file ``<out>/.locks/<cell_id>.lock``. Other workers that reach the cell while the lease is held
leave it to the holder; the holder writes the record and then releases the lease (deletes the file). The
same lease covers the measurements that rewrite a finished record (probes, speed), so one record has one
writer at a time.

What a lease holds (JSON): ``state`` ("running"), ``cell``, a random ``token`` that names this claim,
``host`` (hostname), ``host_id`` (a digest of hostname, boot id and PID namespace: two processes with the
same ``host_id`` see each other's PIDs), ``pid`` and ``pid_start`` (the process start time, so a reused PID
is not mistaken for the holder), ``attempt`` (1, or one more than the lease it took over), ``started_at``
(UTC, ISO 8601) and ``heartbeat_at`` (seconds since the epoch). While it holds the lease, a background
thread of the holder rewrites the file with a new ``heartbeat_at`` every ``HEARTBEAT_SECONDS``.

Staleness: a lease is stale, and may be taken over, when its holder is known to be dead (same ``host_id``,
and no live process with that PID and start time) or when its heartbeat is older than ``STALE_SECONDS``
by the claimant's clock. A lease file that cannot be parsed (caught between its creation and its first
write, or damaged) is judged by its modification time instead.

Atomicity: a free cell (no lease file) is claimed with ``open(O_CREAT | O_EXCL)``, which the filesystem
guarantees to succeed for exactly one of several processes (on NFS, v3 and later implement exclusive
create on the server). Nothing is ever read and then written back to claim. A stale lease is taken over
under its takeover lock (``<lease>.takeover``, created with ``O_EXCL``, so takeovers of one lease never
overlap; a takeover lock older than ``TAKEOVER_STALE_SECONDS`` was left by a crashed taker and is cleared):
the taker reads the lease again and gives up unless it is still the stale content it judged, then (1)
renames it to a name unique to the taker; (2) compares the moved file, byte for byte, with the content it
judged stale: if it differs, a stalled holder's heartbeat landed in between, so it puts that lease back
(``link``, exclusive) and gives up; (3) creates the new lease with ``O_EXCL``, which fails if a fresh
claimant created one after step 1. Without the takeover lock, a second taker could move the first taker's
new lease aside, and a plain claimant could create one in that moment: two holders (a test of six racing
processes found it). With it, of any number of simultaneous takers and claimants at most one holds the
lease; the one remaining window (a holder whose heartbeat stalled for ``STALE_SECONDS`` releasing at the
instant of a takeover while two new claimants arrive) is covered by the record-level check below.
Release renames the lease aside and deletes it only if it still holds the releaser's token.

Across hosts: the store must be one filesystem that every worker sees at the same path, with exclusive
create and atomic rename (local disks, NFSv3+, Lustre, GPFS, CephFS). A holder on another host cannot be
checked by PID, so its lease goes stale only through its heartbeat: a crashed host's cells wait up to
``STALE_SECONDS`` before another worker takes them over, and hosts' clocks must agree to well within that
(NTP). A holder that is alive but whose heartbeat stalled longer than ``STALE_SECONDS`` may lose its lease;
it notices at its next heartbeat (``Lease.lost``), and the worker that finishes second finds the first one's
record on disk and keeps it (``capbench.runner.finished_elsewhere``), so a cell is recorded once even then.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

LEASES_DIR = ".locks"  # under the run directory (the Ray executor's per-cell lock files lived here too)
SUFFIX = ".lock"
HEARTBEAT_SECONDS = 30.0  # how often a holder rewrites its lease
STALE_SECONDS = 300.0  # a heartbeat older than this marks the holder as gone
POLL_SECONDS = 2.0  # how often `claim(wait=True)` looks again at a held lease
CLAIM_ROUNDS = 4  # create / take over attempts before a claim reports the cell as held


def lease_path(out_dir: Path, cell_id: str) -> Path:
    return Path(out_dir) / LEASES_DIR / f"{cell_id}{SUFFIX}"


# ------------------------------------------------------------------------------------------ who is who
_HOST_ID: list[str] = []


def _read_text(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


def host_id() -> str:
    """Digest of (hostname, boot id, PID namespace): equal for processes that can see each other's PIDs."""
    if not _HOST_ID:
        try:
            namespace = os.readlink("/proc/self/ns/pid")
        except OSError:
            namespace = ""
        key = "\0".join([socket.gethostname(), _read_text("/proc/sys/kernel/random/boot_id"), namespace])
        _HOST_ID.append(hashlib.sha256(key.encode()).hexdigest()[:12])
    return _HOST_ID[0]


def process_start(pid: int) -> str | None:
    """The kernel's start time of `pid` (clock ticks since boot), or None where /proc is not available."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def process_alive(pid: int, start: str | None = None) -> bool:
    """Whether process `pid` of this host runs (not a zombie), and is the one that started at `start`."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:  # no /proc (macOS): ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X"):
        return False
    return start is None or fields[19] == str(start)


def writer_tag() -> str:
    """`<pid>-<host_id>`: names the writer of a temp file (see `capbench.records.atomic_write_bytes`)."""
    return f"{os.getpid()}-{host_id()}"


def writer_alive(tag: str) -> bool | None:
    """Whether the writer a `writer_tag` names is alive: None when it ran on another host (unknowable)."""
    pid, _, host = tag.partition("-")
    if host != host_id() or not pid.isdigit():
        return None
    return process_alive(int(pid))


# --------------------------------------------------------------------------------------- lease files
def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _create_exclusive(path: Path, payload: bytes) -> bool:
    """Create `path` holding `payload` unless it exists; True if this call created it."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    try:
        os.write(fd, payload)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        Path(path).unlink(missing_ok=True)
        raise
    os.close(fd)
    return True


def _encode(info: dict) -> bytes:
    return (json.dumps(info, sort_keys=True) + "\n").encode()


def _decode(raw: bytes | None) -> dict | None:
    try:
        info = json.loads(raw) if raw else None
    except (ValueError, UnicodeDecodeError):
        return None
    return info if isinstance(info, dict) else None


def observe(path: Path) -> tuple[bytes, float] | None:
    """The lease file's bytes and modification time, or None when there is no lease."""
    try:
        with open(path, "rb") as handle:
            return handle.read(), os.fstat(handle.fileno()).st_mtime
    except FileNotFoundError:
        return None


def is_stale(info: dict | None, mtime: float, now: float, stale_after: float = STALE_SECONDS) -> bool:
    """The staleness rule of the module docstring, for a lease's parsed content (None if unparsable).

    A note that is not "running" (the "finished" note the flock-based Ray executor of older capbench
    versions left behind) holds nothing.
    """
    if info is not None and info.get("state") != "running":
        return True
    if info is not None and info.get("host_id") == host_id() and isinstance(info.get("pid"), int):
        if not process_alive(info["pid"], info.get("pid_start")):
            return True
    beat = info.get("heartbeat_at") if info is not None else None
    if not isinstance(beat, int | float) or isinstance(beat, bool):
        beat = mtime
    return now - beat > stale_after


def lease_state(
    path: Path, now: float | None = None, stale_after: float = STALE_SECONDS
) -> tuple[str, dict | None]:
    """("absent" | "held" | "stale", the lease's content) for the lease file at `path`."""
    seen = observe(path)
    if seen is None:
        return "absent", None
    info = _decode(seen[0])
    now = time.time() if now is None else now
    return ("stale" if is_stale(info, seen[1], now, stale_after) else "held"), info


class Lease:
    """A claim this process holds on one cell; `release()` (or leaving the `with` block) gives it back."""

    def __init__(self, path: Path, info: dict, clock, heartbeat: float | None, previous: dict | None = None):
        self.path = Path(path)
        self.info = info
        self.previous = previous  # the stale lease this one took over, if any
        self._clock = clock
        self._mutex = threading.Lock()
        self._stop = threading.Event()
        self._lost = False
        self._released = False
        self._thread = None
        if heartbeat:
            self._thread = threading.Thread(
                target=self._beat, args=(float(heartbeat),), name=f"lease {self.path.name}", daemon=True
            )
            self._thread.start()

    token = property(lambda self: self.info["token"])
    attempt = property(lambda self: self.info["attempt"])

    @property
    def lost(self) -> bool:
        """True once this holder found another claim in its lease file (it was judged stale and taken over)."""
        return self._lost

    def _beat(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                if not self.refresh():
                    return
            except OSError:  # a passing filesystem error: the next beat tries again
                continue

    def owned(self) -> bool:
        info = _decode((observe(self.path) or (b"", 0.0))[0])
        return info is not None and info.get("token") == self.token

    def refresh(self) -> bool:
        """Rewrite the lease with a new heartbeat; False (and `lost`) once it holds another claim's token.

        A missing or unparsable lease file is skipped, not taken as lost: a taker may have it moved aside
        for a moment to compare it (and puts it back).
        """
        with self._mutex:
            if self._released or self._lost:
                return False
            info = _decode((observe(self.path) or (b"", 0.0))[0])
            if info is None:
                return True
            if info.get("token") != self.token:
                self._lost = True
                return False
            self.info["heartbeat_at"] = self._clock()
            temp = self.path.with_name(f".{self.path.name}.{self.token}.tmp")
            temp.write_bytes(_encode(self.info))
            os.replace(temp, self.path)
            return True

    def release(self) -> None:
        """Stop the heartbeat and delete the lease, if it is still this holder's (idempotent)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        with self._mutex:
            if self._released:
                return
            self._released = True
            aside = self.path.with_name(f"{self.path.name}.{self.token}.released")
            try:
                os.rename(self.path, aside)
            except FileNotFoundError:
                self._lost = True
                return
            info = _decode(aside.read_bytes())
            if info is None or info.get("token") != self.token:  # someone else's lease now: put it back
                self._lost = True
                _put_back(aside, self.path)
            else:
                aside.unlink(missing_ok=True)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _put_back(aside: Path, path: Path) -> None:
    """Return a lease moved aside by mistake to its name, unless a new lease was created there meanwhile."""
    try:
        os.link(aside, path)
    except FileExistsError:
        pass
    except OSError:  # a filesystem without hard links
        _create_exclusive(path, aside.read_bytes())
    aside.unlink(missing_ok=True)


def _new_info(path: Path, clock, attempt: int, previous: dict | None) -> dict:
    pid = os.getpid()
    info = {
        "state": "running",
        "cell": path.name[: -len(SUFFIX)] if path.name.endswith(SUFFIX) else path.name,
        "token": uuid.uuid4().hex,
        "host": socket.gethostname(),
        "host_id": host_id(),
        "pid": pid,
        "pid_start": process_start(pid),
        "attempt": attempt,
        "started_at": _now_iso(),
        "heartbeat_at": clock(),
    }
    if previous is not None:
        info["took_over"] = {k: previous.get(k) for k in ("host", "pid", "token", "attempt", "heartbeat_at")}
    return info


TAKEOVER_STALE_SECONDS = 60.0  # a takeover takes milliseconds; a takeover lock this old was left by a crash


def _takeover_lock(path: Path, clock) -> Path | None:
    """Hold `<lease>.takeover` (O_EXCL) so that takeovers of one lease are serialised; None if another
    taker holds it. A lock left by a taker that died (older than TAKEOVER_STALE_SECONDS) is cleared first."""
    lock = path.with_name(path.name + ".takeover")
    payload = _encode({"token": uuid.uuid4().hex, "pid": os.getpid(), "host_id": host_id()})
    if _create_exclusive(lock, payload):
        return lock
    try:
        age = clock() - lock.stat().st_mtime
    except FileNotFoundError:
        return lock if _create_exclusive(lock, payload) else None  # released meanwhile
    if age < TAKEOVER_STALE_SECONDS:
        return None
    aside = lock.with_name(f"{lock.name}.{uuid.uuid4().hex}.stale")
    try:
        os.rename(lock, aside)
    except FileNotFoundError:
        return None
    aside.unlink(missing_ok=True)
    return lock if _create_exclusive(lock, payload) else None


def take_over(
    path: Path, seen: tuple[bytes, float], *, clock=time.time, heartbeat: float | None = HEARTBEAT_SECONDS
) -> Lease | None:
    """Replace the lease whose content was `seen` (and judged stale) with a new one; None if another won.

    The steps of the module docstring, under the lease's takeover lock. Exposed so tests can interleave
    takers step by step.
    """
    path = Path(path)
    lock = _takeover_lock(path, clock)
    if lock is None:
        return None  # another worker is taking this lease over right now
    try:
        now = observe(path)
        if now is None or now[0] != seen[0]:
            return None  # refreshed, released or already taken over since it was judged stale
        return _replace(path, seen, clock, heartbeat)
    finally:
        lock.unlink(missing_ok=True)


def _replace(path: Path, seen: tuple[bytes, float], clock, heartbeat: float | None) -> Lease | None:
    old = _decode(seen[0])
    aside = path.with_name(f"{path.name}.{uuid.uuid4().hex}.stale")
    try:
        os.rename(path, aside)  # (1) at most one taker moves any given file
    except FileNotFoundError:
        return None
    if aside.read_bytes() != seen[0]:  # (2) a stalled holder's heartbeat landed in between: put it back
        _put_back(aside, path)
        return None
    # A retry of an attempt that died mid-cell; an older capbench's "finished" note starts again at 1.
    if old is None or old.get("state") == "running":
        attempt = int((old or {}).get("attempt") or 1) + 1
    else:
        attempt = 1
    info = _new_info(path, clock, attempt, old)
    won = _create_exclusive(path, _encode(info))  # (3) unless a fresh claimant got there first
    aside.unlink(missing_ok=True)
    if old and old.get("token"):
        path.with_name(f".{path.name}.{old['token']}.tmp").unlink(missing_ok=True)  # its half heartbeat
    return Lease(path, info, clock, heartbeat, previous=old) if won else None


def try_claim(
    path: Path,
    *,
    clock=time.time,
    stale_after: float = STALE_SECONDS,
    heartbeat: float | None = HEARTBEAT_SECONDS,
) -> Lease | None:
    """Claim the lease at `path` now: a new one if there is none, the stale one taken over, else None.

    `clock` (seconds since the epoch) is injectable for tests; `heartbeat=None` starts no heartbeat thread.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(CLAIM_ROUNDS):
        info = _new_info(path, clock, 1, None)
        if _create_exclusive(path, _encode(info)):
            return Lease(path, info, clock, heartbeat)
        seen = observe(path)
        if seen is None:
            continue  # released between our create and our look: try again
        if not is_stale(_decode(seen[0]), seen[1], clock(), stale_after):
            return None
        lease = take_over(path, seen, clock=clock, heartbeat=heartbeat)
        if lease is not None:
            return lease
    return None


def claim(path: Path, *, wait: bool = False, poll: float = POLL_SECONDS, **options) -> Lease | None:
    """`try_claim`, or with `wait` keep trying every `poll` seconds until the lease is this process's."""
    while True:
        lease = try_claim(path, **options)
        if lease is not None or not wait:
            return lease
        time.sleep(poll)


def claim_cell(out_dir: Path, cell_id: str, **options) -> Lease | None:
    """`claim` the lease of one grid cell of the run directory `out_dir`."""
    return claim(lease_path(out_dir, cell_id), **options)


@contextlib.contextmanager
def holding(out_dir: Path, cell_id: str, **options):
    """Context manager: yields the cell's Lease (released on exit), or None when another worker holds it."""
    lease = claim_cell(out_dir, cell_id, **options)
    try:
        yield lease
    finally:
        if lease is not None:
            lease.release()
