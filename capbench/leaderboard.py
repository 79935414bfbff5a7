"""Summarize run records into a leaderboard (JSON) and render it as deterministic markdown.

Summarizing is separate from running: the same records always give byte-identical output.
"""

from __future__ import annotations

import statistics
from collections import defaultdict

from capbench import __version__
from capbench.errors import CapbenchError
from capbench.spec import DENSE, MEASUREMENT_FIELDS

DIGITS = 2
# Spec fields that may differ between the records of one leaderboard cell.
CELL_INDEPENDENT = ("seed", *MEASUREMENT_FIELDS)


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
    tasks = {}
    for task in sorted(cells):
        dense = [
            r["main_metric"]["value"]
            for r in cells[task].get(DENSE, {}).get("0", [])
            if r["status"] == "done"
        ]
        dense_mean = statistics.fmean(dense) if dense else None
        rows = {}
        for label in sorted(cells[task], key=lambda name: (name != DENSE, name)):
            for key, group in cells[task][label].items():
                check_one_configuration(f"{task} {label} sparsity {key}", group)
            rows[label] = {
                key: _cell(cells[task][label][key], dense_mean)
                for key in sorted(cells[task][label], key=float)
            }
        info = meta.get(task, {})
        tasks[task] = {"metric": info.get("name"), "split": info.get("split"), "rows": rows}
    return {"capbench_version": __version__, "provenance": _provenance(records), "tasks": tasks}


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
    done = [r for r in group if r.get("status") == "done"]
    if not done:
        return {"status": "failed", "n": 0, "errors": sorted({r.get("error", "") for r in group})}
    values = [r["main_metric"]["value"] for r in done]
    cell = {"status": "done", **_stats(values), "failed": len(group) - len(done)}
    achieved = [r["sparsity"]["linear"] for r in done if r.get("sparsity")]
    if achieved:
        cell["achieved_sparsity"] = round(statistics.fmean(achieved), 4)
    if dense_mean:
        cell["retention"] = round(cell["mean"] / dense_mean, 4)
    for extra in ("probe_retention", "speedup"):
        found = [r[extra] for r in done if extra in r]
        if found:
            cell[extra] = round(statistics.fmean(found), 4)
    return cell


def _fmt_metric(cell: dict | None) -> str:
    if cell is None:
        return "–"
    if cell["status"] != "done":
        return "failed"
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
        f"- records: {prov['records']} ({prov['failed']} failed)",
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
