"""Numbers reported in papers, shown beside (never mixed into) capbench's own rows.

Each entry of a reported file is one published number with its source. A leaderboard lists the entries of its
tasks in a separate table, and gives the Δ of capbench's own reproduction where the records hold one: same
model, task, method, sparsity, distillation on/off, metric and split.
"""

from __future__ import annotations

import statistics
from importlib import resources
from pathlib import Path

import yaml

from capbench.errors import CapbenchError
from capbench.leaderboard import markdown_table

REQUIRED_KEYS = ("source", "model", "task", "split", "metric", "method", "sparsity", "kd", "value")


def builtin_reported_path() -> Path:
    return Path(str(resources.files("capbench") / "reported.yaml"))


def load_reported(path: Path | None = None) -> list[dict]:
    path = path or builtin_reported_path()
    if not path.is_file():
        raise CapbenchError(f"reported numbers file {path} not found; pass --reported none to leave them out")
    entries = yaml.safe_load(path.read_text()) or []
    if not isinstance(entries, list):
        raise CapbenchError(f"{path}: expected a YAML list of entries; see capbench/reported.yaml")
    for index, entry in enumerate(entries, 1):
        missing = [key for key in REQUIRED_KEYS if key not in entry]
        if missing:
            raise CapbenchError(f"{path} entry {index}: missing keys {missing}; see capbench/reported.yaml")
    return entries


def model_name(model: str) -> str:
    """'google-bert/bert-base-uncased' and 'bert-base-uncased' name the same checkpoint."""
    return model.rstrip("/").split("/")[-1].lower()


def uses_kd(spec: dict) -> bool:
    cap = spec.get("cap") or {}
    return bool(spec.get("kd")) or float(cap.get("w_kd", 0) or 0) > 0


def _reproduction(entry: dict, records: list[dict]) -> list[float]:
    values = []
    for record in records:
        spec = record["spec"]
        if record.get("status") != "done" or spec["task"] != entry["task"]:
            continue
        if model_name(spec["model"]) != model_name(entry["model"]) or spec["method"] != entry["method"]:
            continue
        if abs(spec["sparsity"] - entry["sparsity"]) > 1e-9:
            continue
        if spec["method"] != "dense" and uses_kd(spec) != bool(entry["kd"]):
            continue
        value = record.get("metrics", {}).get(entry["split"], {}).get(entry["metric"])
        if value is not None:
            values.append(100 * value)
    return values


def compare_reported(entries: list[dict], records: list[dict]) -> list[dict]:
    """Entries of the tasks these records cover, each with capbench's own mean and Δ where one exists."""
    tasks = {r["spec"]["task"] for r in records}
    rows = []
    for entry in entries:
        if entry["task"] not in tasks:
            continue
        ours = _reproduction(entry, records)
        row = {key: entry[key] for key in (*REQUIRED_KEYS, "method_label") if key in entry}
        if ours:
            mean = statistics.fmean(ours)
            row.update(capbench=round(mean, 2), capbench_n=len(ours), delta=round(mean - entry["value"], 2))
        rows.append(row)
    return sorted(rows, key=_order)


def _order(row: dict) -> tuple:
    return (
        row["task"],
        row["source"],
        row["kd"],
        row["sparsity"],
        row["method"],
        row["split"],
        row["metric"],
    )


def render_reported_table(rows: list[dict]) -> str:
    """Per task, one line per published row (source, method, sparsity, KD); a column per split and metric."""
    sources = sorted({row["source"] for row in rows})
    lines = []
    for task in sorted({row["task"] for row in rows}):
        task_rows = [row for row in rows if row["task"] == task]
        columns = sorted({(row["split"], row["metric"]) for row in task_rows})
        grouped: dict = {}
        for row in task_rows:
            key = (
                sources.index(row["source"]) + 1,
                row["sparsity"],
                row["kd"],
                row["method"],
                row.get("method_label"),
                row["model"],
            )
            grouped.setdefault(key, {})[(row["split"], row["metric"])] = row
        header = [
            "method",
            "model",
            "sparsity",
            "KD",
            *[f"{split} {metric}" for split, metric in columns],
            "source",
        ]
        table = [
            [
                method + (f" ({label})" if label else ""),
                model,
                f"{sparsity:g}",
                "yes" if kd else "no",
                *[_fmt_reported(cells.get(column)) for column in columns],
                f"[{source}]",
            ]
            for (source, sparsity, kd, method, label, model), cells in grouped.items()
        ]
        lines += ["", f"### {task}", "", *markdown_table(header, table)]
    lines += [""] + [f"[{number}] {source}  " for number, source in enumerate(sources, 1)]
    return "\n".join(lines).lstrip("\n").rstrip() + "\n"


def _fmt_reported(row: dict | None) -> str:
    if row is None:
        return "–"
    if "delta" not in row:
        return f"{row['value']:.1f}"
    return f"{row['value']:.1f} (capbench Δ {row['delta']:+.1f}, n={row['capbench_n']})"
