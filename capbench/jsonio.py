"""Atomic, strict JSON files: every capbench writer goes through here (records, leaderboards, banks' meta).

Atomic: a temp file in the same directory, fsync, os.replace, so readers never see half a file; the file
gets the permissions a plain open() would (0666 minus the umask). Strict: NaN and infinities are refused,
never written.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from capbench import leases


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _mode_for(path: Path) -> int:
    """An existing file keeps its permissions; a new one gets 0666 minus the umask, as open() would."""
    try:
        return path.stat().st_mode & 0o777
    except FileNotFoundError:
        return 0o666 & ~_umask()


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Write via a temp file in the same directory and os.replace: readers never see half a file.

    A new file gets the permissions a plain `open(path, "w")` would (0666 minus the umask), not mkstemp's
    0600, so a group sharing a store can read it; a replaced file keeps its own. The temp file is `.<name>.<writer>.<random>.tmp`
    (writer: `leases.writer_tag()`), so a cleanup can tell whose it is (`remove_stale_temp_files`).
    """
    atomic_write_with(path, lambda handle: handle.write(payload))


def atomic_write_with(path: Path, write) -> None:
    """``atomic_write_bytes`` for a payload too large to hold twice: ``write(handle)`` streams it into the
    temp file (a training checkpoint, ``torch.save``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{path.name}.{leases.writer_tag()}."
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=prefix, suffix=".tmp")
    try:
        os.fchmod(fd, _mode_for(path))
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def dumps_json(data, where: str = "JSON") -> str:
    """Strict JSON text (sorted keys, 2-space indent); NaN and infinities are refused, never written.

    Raises ValueError naming `where` and the first non-finite value's key path.
    """
    try:
        return json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n"
    except ValueError:
        raise ValueError(
            f"{where}: refusing to write a non-finite number at {_non_finite_path(data)}"
        ) from None


def _non_finite_path(data, prefix: str = "") -> str:
    import math

    if isinstance(data, float) and not math.isfinite(data):
        return prefix or "<top>"
    items = (
        data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list | tuple) else ()
    )
    for key, value in items:
        found = _non_finite_path(value, f"{prefix}.{key}" if prefix else str(key))
        if found:
            return found
    return ""


def write_json(path: Path, data: dict) -> None:
    atomic_write_text(path, dumps_json(data, str(path)))


def read_json(path: Path) -> dict | None:
    """The JSON object at `path`, or None when it is missing or does not parse."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):  # ValueError: bad JSON (JSONDecodeError) or bytes that are not UTF-8
        return None
