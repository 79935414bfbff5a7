"""Where GLUE rows come from. Every source yields the same schema: the task's text fields, `label`, `idx`."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import datasets

from capbench.data.glue_tsv import GLUE_TSV_LAYOUTS, read_glue_tsv, tsv_split_path
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
    if any(p.suffix in LOCAL_SUFFIXES for config in GLUE_TSV_LAYOUTS for p in (root / config).glob("*")):
        return DataSource("local", str(root))
    if (root / "glue_data").is_dir():
        root = root / "glue_data"
    if any((root / layout.directory).is_dir() for layout in GLUE_TSV_LAYOUTS.values()):
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


def _load_raw(source: DataSource, task: TaskSpec, split: str) -> tuple[datasets.Dataset, str]:
    if source.kind == "hub":
        try:
            return datasets.load_dataset(
                task.dataset, task.config, split=split
            ), f"{task.dataset}/{task.config}"
        except Exception as exc:  # network, missing split, hub errors: one line, with the fix
            raise CapbenchError(
                f"could not load {task.dataset}/{task.config} split {split!r} from the hub "
                f"({type(exc).__name__}); offline, pass --data-dir with a local GLUE copy"
            ) from exc
    path = split_file(source, task, split)
    if source.kind == "local":
        builder = "json" if path.suffix == ".jsonl" else "parquet"
        try:
            dataset = datasets.load_dataset(builder, data_files=str(path), split="train")
        except Exception as exc:
            raise CapbenchError(
                f"{path}: could not be parsed as {builder} ({type(exc).__name__}: {exc})"
            ) from exc
        return dataset, str(path)
    return datasets.Dataset.from_dict(read_glue_tsv(path, task)), str(path)


def load_split(source: DataSource, task: TaskSpec, split: str, limit: int | None = None) -> datasets.Dataset:
    """Load and validate one split; `limit` keeps the first rows (presets sample deterministically before)."""
    dataset, origin = _load_raw(source, task, split)
    if "idx" not in dataset.column_names:
        dataset = dataset.add_column("idx", list(range(len(dataset))))
    validate_split(dataset, task, origin)
    keep = [*task.text_fields, "label", "idx"]
    dataset = dataset.remove_columns([c for c in dataset.column_names if c not in keep])
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
