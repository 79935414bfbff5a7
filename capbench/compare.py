"""`capbench compare`: a new run against a stored leaderboard JSON, for CI regression gates.

A cell regresses when
* its main metric drops by more than the noise allows: k times the seed spread (the root-sum-square of
  both sides' std over seeds) where a side has several seeds, or an absolute tolerance where both sides
  have a single seed;
* it was done and now failed, or had a value and now has none (undefined: constant predictions; or a
  non-finite number from an older capbench): a missing value is the worst score;
* its achieved sparsity falls below its target by more than the method's granularity (0.005 for
  unstructured masks, one head's share for structured pruning), whatever its accuracy.

With `--fail-on change`, a move beyond the noise rule in either direction fails: a fault can also raise a
number, so a regression gate over a fixed grid should ask for no change at all.

Cells are only compared like with like: a candidate cell whose configuration (its spec without the seed)
differs from the baseline's is refused, naming the differing fields, unless --allow-spec-change, which
labels those rows. Differences in environment (capbench and library versions, machine) are reported.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from capbench.errors import CapbenchError

STATUS_ORDER = ("regressed", "missing", "improved", "unchanged", "new")


def _spread(base: dict, new: dict) -> float | None:
    parts = [cell["std"] for cell in (base, new) if cell.get("n", 0) > 1 and cell.get("std") is not None]
    return math.sqrt(sum(s * s for s in parts)) if parts else None


def _value(cell: dict) -> float | None:
    """A cell's finite mean, or None (failed, undefined, or non-finite in an old baseline)."""
    if cell.get("status") != "done":
        return None
    mean = cell.get("mean")
    return float(mean) if isinstance(mean, int | float) and math.isfinite(mean) else None


def _why_no_value(cell: dict) -> str:
    if cell.get("status") != "done":
        return "failed"
    if cell.get("mean") is None:
        return f"undefined ({cell.get('undefined', 'no value')})"
    return f"non-finite ({cell['mean']})"


def _below_target(new: dict) -> str | None:
    achieved, target = new.get("achieved_sparsity"), new.get("target_sparsity")
    if achieved is None or target is None or not target:
        return None
    from capbench.pruning.accounting import UNSTRUCTURED_GRANULARITY  # lazy: keeps torch out of CLI start-up

    tolerance = new.get("sparsity_granularity", UNSTRUCTURED_GRANULARITY)
    if achieved < target - tolerance:
        return f"achieved sparsity {achieved:.4f} < target {target:g} − {tolerance:.4f}"
    return None


def compare_cell(base: dict, new: dict | None, k: float, abs_tol: float) -> dict:
    row = {"base": _value(base), "new": None, "delta": None, "allowed": None, "note": ""}
    if new is None:
        return {**row, "status": "missing"}
    row["new"] = _value(new)
    if row["new"] is None:
        if row["base"] is None:
            return {**row, "status": "unchanged", "note": f"{_why_no_value(base)} → {_why_no_value(new)}"}
        return {**row, "status": "regressed", "note": f"value → {_why_no_value(new)}"}
    if row["base"] is None:
        return {**row, "status": "improved", "note": f"{_why_no_value(base)} → value"}
    delta = row["new"] - row["base"]
    spread = _spread(base, new)
    allowed = k * spread if spread is not None else abs_tol
    status = "regressed" if delta < -allowed else "improved" if delta > allowed else "unchanged"
    row.update(delta=delta, allowed=allowed, status=status)
    if below := _below_target(new):
        row.update(status="regressed", note=below)
    return row


def flat_fields(config: dict, prefix: str = "") -> dict:
    """{"train.learning_rate": 5e-5, ...}: nested spec fields flattened for naming differences."""
    out = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flat_fields(value, name + "."))
        else:
            out[name] = value
    return out


def differing_fields(a: dict, b: dict) -> list[str]:
    fa, fb = flat_fields(a), flat_fields(b)
    return sorted(k for k in fa.keys() | fb.keys() if fa.get(k, "<absent>") != fb.get(k, "<absent>"))


def spec_changes(baseline: dict, current: dict) -> dict[tuple, list[str]]:
    """{(task, label, sparsity): differing fields} for cells in both whose configurations differ."""
    if "configs" not in baseline:
        raise CapbenchError(
            "baseline JSON holds no cell configurations (written by an older capbench), so like cannot be "
            "told from unlike; regenerate it with capbench leaderboard, or pass --allow-spec-change"
        )
    changes = {}
    for task, info in baseline["tasks"].items():
        new_rows = current["tasks"].get(task, {}).get("rows", {})
        for label, cells in info["rows"].items():
            for key, base in cells.items():
                new = new_rows.get(label, {}).get(key)
                if new is None or base.get("config") == new.get("config"):
                    continue
                fields = differing_fields(
                    baseline["configs"].get(base.get("config"), {}),
                    current["configs"].get(new.get("config"), {}),
                )
                changes[(task, label, key)] = fields or ["config"]
    return changes


def environment_changes(baseline: dict, current: dict) -> dict[str, str]:
    """Provenance that differs (versions, machines), by provenance key, each as one line: reported, never a
    reason to refuse."""
    before, after = baseline.get("provenance", {}), current.get("provenance", {})
    return {
        key: f"{key.replace('_', ' ')}: {before.get(key)} → {after.get(key)}"
        for key in ("capbench_versions", "library_versions", "machines")
        if key in before and before.get(key) != after.get(key)
    }


def compare_summaries(
    baseline: dict, current: dict, k: float = 2.0, abs_tol: float = 0.01, changes: dict | None = None
) -> list[dict]:
    changes = changes or {}
    rows = []
    for task, info in sorted(baseline["tasks"].items()):
        new_rows = current["tasks"].get(task, {}).get("rows", {})
        for label, cells in sorted(info["rows"].items()):
            for key, base in sorted(cells.items(), key=lambda item: float(item[0])):
                new = new_rows.get(label, {}).get(key)
                row = {"task": task, "method": label, "sparsity": key, **compare_cell(base, new, k, abs_tol)}
                if (task, label, key) in changes:
                    note = "spec changed: " + ", ".join(changes[(task, label, key)])
                    row["note"] = f"{note}; {row['note']}" if row["note"] else note
                rows.append(row)
    for task, info in sorted(current["tasks"].items()):
        for label, cells in sorted(info["rows"].items()):
            for key, new in cells.items():
                if key not in baseline["tasks"].get(task, {}).get("rows", {}).get(label, {}):
                    rows.append(
                        {
                            "task": task,
                            "method": label,
                            "sparsity": key,
                            "status": "new",
                            "base": None,
                            "new": _value(new),
                            "delta": None,
                            "allowed": None,
                            "note": "",
                        }
                    )
    return rows


def _pct(value) -> str:
    if value is None:
        return "–"
    return value if isinstance(value, str) else f"{100 * value:.2f}"


def _order(sparsity) -> float:
    try:
        return float(sparsity)
    except (TypeError, ValueError):
        return math.inf


def _number(value) -> float | None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else None


def _field(row: dict, path: str):
    """A row's field by dotted path into nested objects (``loss_terms.prc_unsup``); None where absent."""
    value = row
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _gate_row(gate: str, keys: list[str], base: dict, new: dict | None, tol: float, lower: bool) -> dict:
    label = ", ".join(str(base.get(k)) for k in keys if k not in ("task", "sparsity", "sparsity_key"))
    field = gate.split(":")[0].split(".", 1)[1]
    before, after = _number(_field(base, field)), _number(_field(new or {}, field))
    row = {
        "task": str(base.get("task", "")),
        "method": f"{gate.split(':')[0]} {label}".strip(),
        "sparsity": str(base.get("sparsity_key", base.get("sparsity", ""))),
        "base": "–" if before is None else f"{before:.4g}",
        "new": "–" if after is None else f"{after:.4g}",
        "delta": None,
        "allowed": f"{tol:g}",
        "note": "",
    }
    if new is None:
        return {**row, "status": "missing"}
    if after is None or before is None:
        status = (
            "unchanged" if after is None and before is None else "regressed" if after is None else "improved"
        )
        return {**row, "status": status}
    change = (before - after) if lower else (after - before)  # > 0: better
    status = "regressed" if change < -tol else "improved" if change > tol else "unchanged"
    return {
        **row,
        "status": status,
        "note": f"Δ {after - before:+.4g}" + (" (lower is better)" if lower else ""),
    }


def compare_table_field(baseline: dict, current: dict, gate: str, tol: float) -> list[dict]:
    """Rows of a `--gate TABLE.FIELD[:lower]` check: every baseline row of the table, matched to the current
    row of the same keys; the field regresses when it falls (rises, with `:lower`) by more than `tol`.
    FIELD may be a dotted path into a nested field, e.g. ``cap_ablation.loss_terms.prc_unsup:lower``."""
    spec, _, direction = gate.partition(":")
    name, _, field = spec.partition(".")
    tables = baseline.get("tables") or {}
    if name not in tables or not field or direction not in ("", "lower", "higher"):
        known = ", ".join(sorted(tables)) or "none (written by an older capbench; regenerate it)"
        raise CapbenchError(f"--gate {gate}: give TABLE.FIELD[:lower] of a baseline table; tables: {known}")
    keys = tables[name]["keys"]
    current_rows = (current.get("tables") or {}).get(name, {}).get("rows", [])
    index = {json.dumps([row.get(k) for k in keys]): row for row in current_rows}
    return [
        _gate_row(
            gate, keys, row, index.get(json.dumps([row.get(k) for k in keys])), tol, direction == "lower"
        )
        for row in tables[name]["rows"]
    ]


def render_diff(rows: list[dict]) -> str:
    from capbench.report.markdown import markdown_table

    counts = {status: sum(r["status"] == status for r in rows) for status in STATUS_ORDER}
    ordered = sorted(
        rows, key=lambda r: (STATUS_ORDER.index(r["status"]), r["task"], r["method"], _order(r["sparsity"]))
    )
    header = ["status", "task", "method", "sparsity", "baseline", "new", "Δ", "allowed drop", "note"]
    table = [
        [
            r["status"],
            r["task"],
            r["method"],
            r["sparsity"],
            _pct(r["base"]),
            _pct(r["new"]),
            "–" if r["delta"] is None else f"{100 * r['delta']:+.2f}",
            _pct(r["allowed"]),
            r.get("note", ""),
        ]
        for r in ordered
    ]
    title = "### capbench compare: " + ", ".join(f"{counts[s]} {s}" for s in STATUS_ORDER if counts[s])
    return f"{title}\n\n{markdown_table(header, table)}\n"


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "compare", help="compare a run with a stored leaderboard JSON; non-zero on regression"
    )
    p.add_argument(
        "--baseline", required=True, type=Path, help="leaderboard JSON written by capbench leaderboard"
    )
    p.add_argument("--runs", required=True, nargs="+", type=Path, help="run directories of the new run")
    p.add_argument(
        "--k", type=float, default=2.0, help="allowed drop in units of the seed spread (default 2)"
    )
    p.add_argument(
        "--abs-tol", type=float, default=0.01, help="allowed drop for single-seed cells (default 0.01)"
    )
    p.add_argument("--allow-missing", action="store_true", help="do not fail on baseline cells the run lacks")
    p.add_argument(
        "--allow-spec-change",
        action="store_true",
        help="compare cells whose configuration differs from the baseline's (rows are labelled)",
    )
    p.add_argument(
        "--skip-bad-records", action="store_true", help="leave out unreadable or malformed record files"
    )
    p.add_argument(
        "--gate",
        action="append",
        default=[],
        metavar="TABLE.FIELD[:lower]",
        help="also gate on a field of a leaderboard JSON table (e.g. probes.retention, speed.measured_speedup); "
        "a row regresses when the field drops by more than --gate-tol (rises, with :lower); repeatable",
    )
    p.add_argument(
        "--gate-tol", type=float, default=0.01, help="allowed change for --gate fields (default 0.01)"
    )
    p.add_argument(
        "--fail-on",
        choices=("regression", "change"),
        default="regression",
        help="exit 1 on a drop beyond the noise rule (regression, the default), or on a move beyond it in "
        "either direction (change: a fault can also raise a number, so a CI gate should use this)",
    )
    p.add_argument("--out", type=Path, help="also write the markdown diff here (for a PR comment)")
    p.set_defaults(handler=cmd_compare)


def _keep_constant(token: str):
    return float(token)  # NaN/Infinity in an old baseline: kept, and treated as "no value"


def cmd_compare(args) -> int:
    from capbench.records import atomic_write_text, load_records
    from capbench.report import summarize

    if not args.baseline.is_file():
        raise CapbenchError(
            f"--baseline {args.baseline}: no such file; write one with capbench leaderboard --out"
        )
    try:
        baseline = json.loads(args.baseline.read_text(), parse_constant=_keep_constant)
    except json.JSONDecodeError as exc:
        raise CapbenchError(
            f"--baseline {args.baseline}: not JSON ({exc.msg} at line {exc.lineno})"
        ) from None
    except UnicodeDecodeError:
        raise CapbenchError(f"--baseline {args.baseline}: not JSON (not UTF-8 text)") from None
    if "tasks" not in baseline:
        raise CapbenchError(f"--baseline {args.baseline}: not a capbench leaderboard JSON (no 'tasks')")
    bad: list[str] = []
    records = load_records(*args.runs, skip_bad=args.skip_bad_records, bad=bad)
    if not records:
        raise CapbenchError(f"no records under {', '.join(map(str, args.runs))}")
    current = summarize(records, run_dirs=args.runs)
    changes = {} if args.allow_spec_change and "configs" not in baseline else spec_changes(baseline, current)
    if changes and not args.allow_spec_change:
        fields = sorted({f for fs in changes.values() for f in fs})
        cells = [f"{t} {m} {s}" for t, m, s in sorted(changes)]
        shown = ", ".join(cells[:3]) + (f" and {len(cells) - 3} more" if len(cells) > 3 else "")
        raise CapbenchError(
            f"{len(cells)} candidate cell{'s' if len(cells) > 1 else ''} differ from the baseline in "
            f"{', '.join(fields)} ({shown}); compare runs of one configuration, or pass --allow-spec-change"
        )
    rows = compare_summaries(baseline, current, args.k, args.abs_tol, changes)
    for gate in args.gate:
        rows += compare_table_field(baseline, current, gate, args.gate_tol)
    text = render_diff(rows)
    environment = environment_changes(baseline, current)
    if environment:
        text += "\nEnvironment differs from the baseline's: " + "; ".join(environment.values()) + "\n"
    if "machines" in environment:
        text += (
            "Results depend on the CPU's kernels and the thread count (floating-point reduction order), so a "
            "move above may come from the machine rather than the code: gate against a baseline made on this "
            "machine configuration.\n"
        )
    if bad:
        text += f"\nSkipped {len(bad)} bad record file(s): " + "; ".join(bad) + "\n"
    sys.stdout.write(text)
    if args.out:
        atomic_write_text(args.out, text)
    return 1 if any(r["status"] in failing_statuses(args.fail_on, args.allow_missing) for r in rows) else 0


def failing_statuses(fail_on: str = "regression", allow_missing: bool = False) -> set[str]:
    """Row statuses that make `capbench compare` exit 1: a regression, or with fail_on="change" any move
    beyond the noise rule ("improved" included); missing baseline cells unless allowed."""
    failing = {"regressed"} | ({"improved"} if fail_on == "change" else set())
    return failing | (set() if allow_missing else {"missing"})
