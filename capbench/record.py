"""The run record: one typed object per grid cell, written by `Record.to_disk`, read by `Record.from_disk`.

The schema (README, "Record schema") lives here as fields. A record is `done` (metrics, predictions,
sparsity, ...) or `failed` (a one-line `error` and a `traceback`); both carry the frozen spec, its digest and
the provenance of the run. Fields a newer or older writer added that this version does not know are kept in
`extra` and written back unchanged, so reading and rewriting a record (measurements, migration) loses
nothing.
"""

from __future__ import annotations

import json
import math
import traceback as tb
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path

from capbench.jsonio import read_json, write_json

SCHEMA_VERSION = 3  # 2: spec.data is the data's content hash, not its path; 3: spec.model_identity
DONE, FAILED = "done", "failed"
REQUIRED_FIELDS = ("schema_version", "cell_id", "spec", "status")
REQUIRED_SPEC_FIELDS = ("task", "method", "sparsity", "seed", "model", "preset")


class RecordError(ValueError):
    """A record file that does not parse or lacks the fields a summary needs."""


def record_problem(data) -> str | None:
    """Why parsed JSON cannot be a record (missing or mistyped fields), or None when it can."""
    if not isinstance(data, dict):
        return "not a JSON object"
    missing = [k for k in REQUIRED_FIELDS if k not in data]
    if not missing and isinstance(data["spec"], dict):
        missing = [f"spec.{k}" for k in REQUIRED_SPEC_FIELDS if k not in data["spec"]]
    elif not missing:
        return "spec is not an object"
    if not missing and data["status"] == DONE:
        main = data.get("main_metric")
        if not isinstance(main, dict):
            missing = ["main_metric"]
        else:
            missing = [f"main_metric.{k}" for k in ("name", "split", "value") if k not in main]
        missing += [] if isinstance(data.get("metrics"), dict) else ["metrics"]
    if missing:
        return f"missing field{'s' if len(missing) > 1 else ''} {', '.join(missing)}"
    if data["status"] not in (DONE, FAILED):
        return f"unknown status {data['status']!r}"
    return None


@dataclass
class Record:
    """One cell's result. Optional sections are None when absent (and then not written)."""

    cell_id: str
    spec: dict
    status: str
    spec_hash: str | None = None  # the spec's digest (resume matches it); absent only in hand-made records
    schema_version: int = SCHEMA_VERSION
    # done
    metrics: dict | None = None  # {split: {metric: value or None}}
    main_metric: dict | None = None  # {name, split, value (None: undefined), undefined: reason}
    undefined_metrics: dict | None = None  # {split: {metric: reason}}
    predictions: dict | None = None  # {file, sha256, rows}: capbench.predictions
    sparsity: dict | None = None  # capbench.pruning.accounting.sparsity_report
    data: dict | None = None  # {source, splits: {split: provenance}}
    model_dir: str | None = None
    dense_model_dir: str | None = None
    teacher: dict | None = None
    method_config: dict | None = None
    cap: dict | None = None
    # One-shot cells: {start, regime, prune_seconds, calibration, after_pruning {metrics, main_metric},
    # finetune_steps}: the accuracy right after pruning, before any fine-tuning.
    oneshot: dict | None = None
    train: dict | None = None
    timings: dict | None = None
    device: dict | None = None  # where the cell ran: type, name (CUDA: driver, capability, peak memory)
    # failed
    error: str | None = None  # one line
    traceback: str | None = None
    # provenance (environment: never part of the digest)
    versions: dict | None = None
    git_commit: str | None = None
    machine: dict | None = None
    finished_at: str | None = None
    distributed: dict | None = None
    executor: dict | None = None
    # measurements of the finished model
    probes: dict | None = None
    speed: dict | None = None
    extra: dict = field(default_factory=dict)

    # ------------------------------------------------------------------------------------ constructors
    @classmethod
    def for_spec(cls, spec, status: str, **sections) -> Record:
        """A record of `spec` (a capbench.spec.CellSpec) with the given status and sections."""
        return cls(
            cell_id=spec.cell_id, spec=spec.to_dict(), spec_hash=spec.digest, status=status, **sections
        )

    @classmethod
    def failure(cls, spec, error: BaseException, one_line: str | None = None) -> Record:
        """A failed record of `spec`: `one_line` (default "Type: message") and the current traceback."""
        return cls.for_spec(
            spec,
            FAILED,
            error=one_line or f"{type(error).__name__}: {error}",
            traceback=tb.format_exc(limit=8),
        )

    def finish(self, provenance: dict, **sections) -> Record:
        """Stamp provenance (versions, git_commit, machine), `finished_at` and e.g. executor/distributed."""
        self.versions = provenance.get("versions")
        self.git_commit = provenance.get("git_commit")
        self.machine = provenance.get("machine")
        for name, value in sections.items():
            setattr(self, name, value)
        self.finished_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
        return self

    # ------------------------------------------------------------------------------------ (de)serialise
    @classmethod
    def from_dict(cls, data: dict) -> Record:
        """Raises RecordError when `data` lacks what a record needs."""
        problem = record_problem(data)
        if problem:
            raise RecordError(problem)
        known = {f.name for f in fields(cls)} - {"extra"}
        record = cls(**{k: v for k, v in data.items() if k in known})
        record.extra = {k: v for k, v in data.items() if k not in known}
        record._written = set(data)
        return record

    def to_dict(self) -> dict:
        out = dict(self.extra)
        written = getattr(self, "_written", set())
        for f in fields(self):
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            # git_commit is null outside a checkout, and said so; other absent sections are left out
            if value is not None or f.name in written or (f.name == "git_commit" and self.versions):
                out[f.name] = value
        return out

    @classmethod
    def from_disk(cls, path: Path) -> Record:
        """Raises RecordError naming the problem (unreadable, not JSON, missing fields)."""
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise RecordError(f"unreadable ({exc.strerror})") from None
        except UnicodeDecodeError:
            raise RecordError("not valid JSON (not UTF-8 text; corrupted?)") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise RecordError(f"not valid JSON ({exc.msg} at line {exc.lineno}; truncated?)") from None
        return cls.from_dict(data)

    def to_disk(self, path: Path) -> bool:
        """Write atomically and strictly (capbench.jsonio); False, writing nothing, when that would replace
        a "done" record with a "failed" one: a failure never hides a result another attempt got.

        Read-then-write: writers of one cell are serialised by its lease (`capbench.leases`); this check is
        the last line of defence for writers without one (the Ray driver, migrate-records).
        """
        if not self.is_done:
            current = read_json(path)
            if current is not None and current.get("status") == DONE:
                return False
        write_json(path, self.to_dict())
        return True

    # ------------------------------------------------------------------------------------ accessors
    @property
    def is_done(self) -> bool:
        return self.status == DONE

    @property
    def task(self) -> str:
        return self.spec["task"]

    @property
    def method(self) -> str:
        return self.spec["method"]

    @property
    def seed(self) -> int:
        return self.spec["seed"]

    @property
    def target_sparsity(self) -> float:
        return self.spec["sparsity"]

    @property
    def main_value(self) -> float | None:
        """The main metric as a finite float; None when failed, undefined or non-finite."""
        if not self.is_done:
            return None
        value = self.main_metric["value"]
        return float(value) if isinstance(value, int | float) and math.isfinite(value) else None

    @property
    def achieved_sparsity(self) -> float | None:
        return (self.sparsity or {}).get("linear")
