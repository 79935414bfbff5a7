"""Summarize run records into a leaderboard (JSON) and render it as deterministic markdown.

Summarizing is separate from running: the same records always give byte-identical output.
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
from collections import defaultdict

from capbench import __version__
from capbench.errors import CapbenchError
from capbench.spec import DENSE, MEASUREMENT_FIELDS, NAME_FIELDS

DIGITS = 2
# Spec fields that may differ between the records of one leaderboard cell.
CELL_INDEPENDENT = ("seed", *MEASUREMENT_FIELDS, *NAME_FIELDS)


def cell_config(spec: dict) -> dict:
    """A cell's configuration: its spec without the seed, measurements and display names."""
    return {k: v for k, v in spec.items() if k not in CELL_INDEPENDENT}


def config_digest(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def main_value(record: dict) -> float | None:
    """A done record's main metric as a finite float; None when it has none (see `no_value_reason`)."""
    value = record["main_metric"]["value"]
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    return None


def no_value_reason(record: dict) -> str:
    """Why a done record's main metric has no value: undefined (and why), or non-finite (a fault)."""
    main = record["main_metric"]
    if main["value"] is None:
        return main.get("undefined", "undefined")
    return f"non-finite {main['value']} (written by a capbench that did not refuse it; rerun the cell)"


def row_label(spec: dict) -> str:
    if spec["method"] == DENSE:
        return DENSE
    if spec.get("cap"):
        from capbench.methods import cap_variant

        variant = cap_variant(spec)
        return spec["method"] + (f" [{variant}]" if variant else "")
    return spec["method"] + (" +KD" if spec.get("kd") else "")


def sparsity_key(value: float) -> str:
    return f"{value:g}"


def _stats(values: list[float]) -> dict:
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": round(mean, DIGITS + 2), "std": round(std, DIGITS + 2), "n": len(values)}


def _provenance(records: list[dict]) -> dict:
    done = [r for r in records if r.get("status") == "done"]
    carved = sorted(
        {
            f"{r['spec']['task']}/{split}"
            for r in done
            for split, info in r.get("data", {}).get("splits", {}).items()
            if not info.get("official", True)
        }
    )
    stamps = sorted(r["finished_at"] for r in records if r.get("finished_at"))
    return {
        "models": sorted({r["spec"]["model"] for r in records}),
        "data_sources": sorted({_data_source_line(r) for r in records}),
        "carved_splits": carved,
        "presets": sorted({r["spec"]["preset"] for r in records}),
        "git_commits": sorted({r.get("git_commit") or "unknown" for r in records}),
        "capbench_versions": sorted({r.get("versions", {}).get("capbench", "unknown") for r in records}),
        "library_versions": sorted(
            {
                ", ".join(f"{k} {v}" for k, v in sorted(r["versions"].items()) if k != "capbench")
                for r in records
                if r.get("versions")
            }
        ),
        "machines": sorted({_machine_line(r.get("machine", {})) for r in records}),
        "date_range": [stamps[0], stamps[-1]] if stamps else [],
        "records": len(records),
        "failed": sum(r.get("status") != "done" for r in records),
    }


def _data_source_line(record: dict) -> str:
    """Where the run read its data (failed records only have the spec's content identity)."""
    source = record.get("data", {}).get("source") or record["spec"]["data"]
    if source["kind"] == "hub":
        return "hub"
    return f"{source['kind']}:{source.get('root') or source.get('sha256', '?')}"


def _machine_line(machine: dict) -> str:
    if not machine:
        return "unknown"
    return (
        f"{machine.get('cpu', '?')}, {machine.get('threads', '?')} threads, torch {machine.get('torch', '?')}"
    )


def summarize(records: list[dict]) -> dict:
    """The leaderboard's numbers: per task, per row (method), per sparsity: mean/std/n, retention, achieved."""
    cells: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    meta: dict = {}
    for record in records:
        spec = record["spec"]
        cells[spec["task"]][row_label(spec)][sparsity_key(spec["sparsity"])].append(record)
        if record.get("status") == "done":
            meta.setdefault(spec["task"], record["main_metric"])
    tasks, configs = {}, {}
    for task in sorted(cells):
        dense = [main_value(r) for r in cells[task].get(DENSE, {}).get("0", []) if r["status"] == "done"]
        dense_mean = statistics.fmean(dense) if dense and None not in dense else None
        rows = {}
        for label in sorted(cells[task], key=lambda name: (name != DENSE, name)):
            for key, group in cells[task][label].items():
                check_one_configuration(f"{task} {label} sparsity {key}", group)
                config = cell_config(group[0]["spec"])
                configs[config_digest(config)] = config
            rows[label] = {
                key: _cell(cells[task][label][key], dense_mean)
                for key in sorted(cells[task][label], key=float)
            }
        info = meta.get(task) or _task_main_metric(task)
        tasks[task] = {"metric": info.get("name"), "split": info.get("split"), "rows": rows}
    return {
        "capbench_version": __version__,
        "provenance": _provenance(records),
        "tasks": tasks,
        "configs": dict(sorted(configs.items())),
    }


def _task_main_metric(task: str) -> dict:
    """The task's declared main metric, for a task whose every record failed."""
    from capbench.tasks import get_task

    try:
        spec = get_task(task)
    except CapbenchError:
        return {}
    return {"name": spec.main_metric, "split": spec.main_eval_split}


def _differing_fields(a: dict, b: dict) -> list[str]:
    return sorted(k for k in a.keys() | b.keys() if k not in CELL_INDEPENDENT and a.get(k) != b.get(k))


def check_one_configuration(where: str, group: list[dict]) -> None:
    """A leaderboard cell averages seeds of one configuration; anything else would be a silent mix."""
    first = group[0]
    seen: dict = {}
    for record in group:
        spec = record["spec"]
        differing = _differing_fields(first["spec"], spec)
        if differing:
            raise CapbenchError(
                f"{where}: records {first['cell_id']} and {record['cell_id']} differ in "
                f"{', '.join(differing)}; a cell averages seeds of one configuration, so pass "
                "run directories of one configuration (or migrate old records: capbench migrate-records)"
            )
        if spec["seed"] in seen:
            raise CapbenchError(
                f"{where}: seed {spec['seed']} appears twice ({seen[spec['seed']]} and {record['cell_id']}); "
                "pass each run directory once"
            )
        seen[spec["seed"]] = record["cell_id"]


def _cell(group: list[dict], dense_mean: float | None) -> dict:
    config = config_digest(cell_config(group[0]["spec"]))
    done = [r for r in group if r.get("status") == "done"]
    if not done:
        return {
            "status": "failed",
            "n": 0,
            "config": config,
            "errors": sorted({r.get("error", "") for r in group}),
        }
    values = [main_value(r) for r in done]
    undefined = sorted({no_value_reason(r) for r, v in zip(done, values) if v is None})
    if undefined:  # a seed without a value makes the cell's mean undefined, never a mean of the rest
        cell = {
            "status": "done",
            "mean": None,
            "std": None,
            "n": len(values),
            "undefined": "; ".join(undefined),
        }
        cell["undefined_seeds"] = sum(v is None for v in values)
    else:
        cell = {"status": "done", **_stats(values)}
    cell.update(failed=len(group) - len(done), config=config)
    achieved = [r["sparsity"]["linear"] for r in done if r.get("sparsity")]
    if achieved:
        cell["achieved_sparsity"] = round(statistics.fmean(achieved), 4)
        cell["target_sparsity"] = done[0]["spec"]["sparsity"]
        tolerances = [r["sparsity"].get("granularity") for r in done if r.get("sparsity")]
        if all(t is not None for t in tolerances):
            cell["sparsity_granularity"] = max(tolerances)
    if dense_mean and cell["mean"] is not None:
        cell["retention"] = round(cell["mean"] / dense_mean, 4)
    return cell


def _fmt_metric(cell: dict | None) -> str:
    if cell is None:
        return "–"
    if cell["status"] != "done":
        return "failed"
    if cell["mean"] is None:
        return f"undefined: {cell['undefined']} (n={cell['n']})"
    spread = f" ± {100 * cell['std']:.{DIGITS - 1}f}" if cell["n"] > 1 else ""
    text = f"{100 * cell['mean']:.{DIGITS - 1}f}{spread} (n={cell['n']})"
    return text + (f", {cell['failed']} failed" if cell.get("failed") else "")


def _fmt_retention(cell: dict | None, dense_row: bool) -> str:
    if cell is None or cell["status"] != "done":
        return "–" if cell is None else "failed"
    parts = []
    if "retention" in cell and not dense_row:
        parts.append(f"{100 * cell['retention']:.1f}%")
    if "achieved_sparsity" in cell:
        parts.append(f"s={cell['achieved_sparsity']:.3f}")
    return " · ".join(parts) or "–"


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def render_markdown(
    summary: dict, command: str | None = None, extra_sections: list[str] | None = None
) -> str:
    prov = summary["provenance"]
    lines = ["# capbench leaderboard", ""]
    lines += [
        f"- model: {', '.join(prov['models'])}",
        f"- data: {', '.join(prov['data_sources'])}",
        f"- carved (non-official) splits: {', '.join(prov['carved_splits']) or 'none, all splits official'}",
        f"- preset: {', '.join(prov['presets'])}",
        f"- records: {prov['records']} ({prov['failed']} failed"
        + (f", {prov['bad_records']} unreadable or malformed skipped)" if prov.get("bad_records") else ")"),
        f"- capbench {', '.join(prov['capbench_versions'])}, git {', '.join(prov['git_commits'])}",
        f"- runs: {' to '.join(prov['date_range']) if prov['date_range'] else 'unknown'}",
        f"- machine: {'; '.join(prov['machines'])}",
    ]
    if command:
        lines += [f"- regenerate: `{command}`"]
    for task, info in summary["tasks"].items():
        columns = sorted({key for row in info["rows"].values() for key in row}, key=float)
        header = ["method", *[("dense" if key == "0" else f"s={key}") for key in columns]]
        metric_rows = [
            [label, *[_fmt_metric(row.get(key)) for key in columns]] for label, row in info["rows"].items()
        ]
        keep_rows = [
            [label, *[_fmt_retention(row.get(key), label == DENSE) for key in columns]]
            for label, row in info["rows"].items()
        ]
        lines += ["", f"## {task}: {info['metric']} on {info['split']} (×100, mean ± std over seeds)", ""]
        lines += markdown_table(header, metric_rows)
        lines += [
            "",
            f"### {task}: retention (% of dense) · achieved sparsity of the pruned linear weights",
            "",
        ]
        lines += markdown_table(header, keep_rows)
    for section in extra_sections or []:
        lines += ["", section.rstrip()]
    return "\n".join(lines) + "\n"
