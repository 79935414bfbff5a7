"""Where GLUE rows come from. Every source yields the same schema: the task's text fields, `label`, `idx`."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import datasets

from capbench.data.glue_tsv import read_glue_tsv_lines, tsv_layouts, tsv_split_path
from capbench.data.validate import validate_split
from capbench.errors import CapbenchError
from capbench.tasks import TaskSpec

LOCAL_SUFFIXES = (".jsonl", ".parquet")


@dataclass(frozen=True)
class DataSource:
    kind: str  # "hub" | "local" | "tsv"
    root: str = ""  # directory for local sources, empty for the hub

    def describe(self) -> str:
        return "Hugging Face hub" if self.kind == "hub" else f"{self.kind}:{self.root}"

    def to_dict(self) -> dict:
        return {"kind": self.kind, "root": self.root}


def detect_source(data_dir: str | os.PathLike | None) -> DataSource:
    """`--data-dir` (or CAPBENCH_DATA_DIR) picks a local source and its format; none means the hub."""
    data_dir = data_dir or os.environ.get("CAPBENCH_DATA_DIR")
    if not data_dir:
        return DataSource("hub")
    root = Path(data_dir).expanduser().resolve()
    if not root.is_dir():
        raise CapbenchError(f"--data-dir {data_dir}: no such directory; point it at a GLUE data directory")
    layouts = tsv_layouts()
    if any(p.suffix in LOCAL_SUFFIXES for config in layouts for p in (root / config).glob("*")):
        return DataSource("local", str(root))
    if (root / "glue_data").is_dir():
        root = root / "glue_data"
    if any((root / layout.directory).is_dir() for layout in layouts.values()):
        return DataSource("tsv", str(root))
    raise CapbenchError(
        f"--data-dir {data_dir}: found neither <config>/<split>.jsonl|.parquet files (hub schema) "
        "nor a glue_data/ layout (RTE/train.tsv, ...)"
    )


def _local_split_path(root: Path, task: TaskSpec, split: str) -> Path:
    for suffix in LOCAL_SUFFIXES:
        path = root / task.config / f"{split}{suffix}"
        if path.is_file():
            return path
    raise CapbenchError(
        f"missing split {split!r} of {task.name}: expected {root / task.config / split}.jsonl or .parquet"
    )


def split_file(source: DataSource, task: TaskSpec, split: str) -> Path:
    """The file a local or TSV source reads for `split`."""
    root = Path(source.root)
    if source.kind == "local":
        return _local_split_path(root, task, split)
    return tsv_split_path(root, task, split)


def _where(source: DataSource, task: TaskSpec) -> str:
    return source.root if source.kind != "hub" else f"{task.dataset}/{task.config} on the hub"


def empty_split_error(source: DataSource, task: TaskSpec, split: str, detail: str = "") -> CapbenchError:
    """The one-line error for a split with no rows; `detail` says why when sampling emptied it."""
    return CapbenchError(f"{split} split of {task.name} in {_where(source, task)} is empty{detail}")


def check_sample_size(
    source: DataSource, task: TaskSpec, split: str, limit: int | None, flag: str = "limit"
) -> None:
    """Refuse a sample that would leave no rows (`limit` <= 0); None means the whole split."""
    if limit is not None and limit <= 0:
        raise empty_split_error(
            source,
            task,
            split,
            f" after sampling: {flag} {limit} keeps no rows; it must be a positive integer "
            "(omit it to use the whole split)",
        )


def _jsonl_problem(path: Path, source: DataSource, task: TaskSpec, split: str) -> CapbenchError | None:
    """Why a JSONL file did not load: no rows, or the first line that is not a JSON object."""
    any_row = False
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            any_row = True
            try:
                value = json.loads(line)
            except UnicodeDecodeError:
                return CapbenchError(f"{path} line {number}: invalid JSON (not UTF-8 text)")
            except json.JSONDecodeError as exc:
                return CapbenchError(
                    f"{path} line {number}: invalid JSON ({exc.msg} at column {exc.colno}); "
                    "fix or delete that line"
                )
            if not isinstance(value, dict):
                return CapbenchError(
                    f"{path} line {number}: invalid JSON row, expected an object {{...}}, "
                    f"found {type(value).__name__}"
                )
    return None if any_row else empty_split_error(source, task, split)


def _parquet_problem(path: Path, source: DataSource, task: TaskSpec, split: str) -> CapbenchError | None:
    """A parquet file that did not load because it has no rows."""
    import pyarrow.parquet as pq

    try:
        rows = pq.ParquetFile(path).metadata.num_rows
    except Exception:  # not parquet at all: the caller's "could not be parsed" says so
        return None
    return empty_split_error(source, task, split) if rows == 0 else None


def _jsonl_locator(path: Path):
    """Row -> "FILE line N": the row-th non-blank line (the JSON reader skips blank lines)."""

    def locate(row: int) -> str:
        seen = -1
        with open(path, "rb") as handle:
            for number, line in enumerate(handle, start=1):
                seen += bool(line.strip())
                if seen == row:
                    return f"{path} line {number}"
        return f"{path} row {row + 1}"

    return locate


def _load_raw(source: DataSource, task: TaskSpec, split: str) -> tuple[datasets.Dataset, str, Callable]:
    """The split's rows, where they come from, and `locate(row)` naming a row for messages."""
    if source.kind == "hub":
        try:
            dataset = datasets.load_dataset(task.dataset, task.config, split=split)
        except Exception as exc:  # network, missing split, hub errors: one line, with the fix
            raise CapbenchError(
                f"could not load {task.dataset}/{task.config} split {split!r} from the hub "
                f"({type(exc).__name__}); offline, pass --data-dir with a local GLUE copy"
            ) from exc
        origin = f"{task.dataset}/{task.config} {split}"
        return dataset, origin, lambda row: f"{origin} row {row + 1}"
    path = split_file(source, task, split)
    if source.kind == "local":
        builder = "json" if path.suffix == ".jsonl" else "parquet"
        try:
            dataset = datasets.load_dataset(builder, data_files=str(path), split="train")
        except Exception as exc:
            if builder == "json":
                problem = _jsonl_problem(path, source, task, split)
            else:
                problem = _parquet_problem(path, source, task, split)
            if problem is not None:
                raise problem from exc
            raise CapbenchError(
                f"{path}: could not be parsed as {builder} ({type(exc).__name__}: {exc})"
            ) from exc
        if builder == "json":
            return dataset, str(path), _jsonl_locator(path)
        return dataset, str(path), lambda row: f"{path} row {row + 1}"
    columns, lines = read_glue_tsv_lines(path, task)
    return datasets.Dataset.from_dict(columns), str(path), lambda row: f"{path} row {lines[row]}"


def load_split(
    source: DataSource, task: TaskSpec, split: str, limit: int | None = None, limit_flag: str = "limit"
) -> datasets.Dataset:
    """Load and validate one split; `limit` keeps the first rows (presets sample deterministically before).

    An empty split, or a `limit` that keeps no rows, is refused with a one-line CapbenchError; rows are
    named by file line (JSONL, TSV) or 1-based row number (parquet, hub) in messages.
    """
    dataset, origin, locate = _load_raw(source, task, split)
    if len(dataset) == 0:
        raise empty_split_error(source, task, split)
    if "idx" not in dataset.column_names:
        dataset = dataset.add_column("idx", list(range(len(dataset))))
    validate_split(dataset, task, origin, locate)
    keep = [*task.text_fields, "label", "idx"]
    dataset = dataset.remove_columns([c for c in dataset.column_names if c not in keep])
    check_sample_size(source, task, split, limit, limit_flag)
    if limit is not None and limit < len(dataset):
        dataset = dataset.select(range(limit))
    return dataset


def split_provenance(source: DataSource, task: TaskSpec, split: str) -> dict:
    """Whether a split is an official GLUE split or carved/sampled (from a local MANIFEST.json when present)."""
    if source.kind == "local":
        manifest = Path(source.root) / "MANIFEST.json"
        if manifest.is_file():
            entry = json.loads(manifest.read_text()).get("configs", {}).get(task.config, {}).get(split, {})
            if entry:
                return {
                    "official": bool(entry.get("official", True)),
                    "provenance": entry.get("provenance", ""),
                }
        return {"official": True, "provenance": "local copy (no MANIFEST.json entry)"}
    if source.kind == "tsv":
        return {"official": True, "provenance": "GLUE TSV file"}
    return {"official": True, "provenance": f"{task.dataset}/{task.config}"}
