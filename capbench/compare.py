"""`capbench compare`: a new run against a stored leaderboard JSON, for CI regression gates.

A cell regresses when its main metric drops by more than the noise allows: k times the seed spread
(the root-sum-square of both sides' std over seeds) where a side has several seeds, or an absolute
tolerance where both sides have a single seed.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from capbench.errors import CapbenchError

STATUS_ORDER = ("regressed", "missing", "improved", "unchanged", "new")


def _spread(base: dict, new: dict) -> float | None:
    parts = [cell["std"] for cell in (base, new) if cell.get("n", 0) > 1]
    return math.sqrt(sum(s * s for s in parts)) if parts else None


def compare_cell(base: dict, new: dict | None, k: float, abs_tol: float) -> dict:
    if new is None:
        return {"status": "missing", "base": base.get("mean"), "new": None, "delta": None, "allowed": None}
    if new.get("status") != "done":
        return {
            "status": "regressed",
            "base": base.get("mean"),
            "new": None,
            "delta": None,
            "allowed": "failed",
        }
    if base.get("status") != "done":
        return {"status": "improved", "base": None, "new": new["mean"], "delta": None, "allowed": None}
    delta = new["mean"] - base["mean"]
    spread = _spread(base, new)
    allowed = k * spread if spread is not None else abs_tol
    status = "regressed" if delta < -allowed else "improved" if delta > allowed else "unchanged"
    return {"status": status, "base": base["mean"], "new": new["mean"], "delta": delta, "allowed": allowed}


def compare_summaries(baseline: dict, current: dict, k: float = 2.0, abs_tol: float = 0.01) -> list[dict]:
    rows = []
    for task, info in sorted(baseline["tasks"].items()):
        new_rows = current["tasks"].get(task, {}).get("rows", {})
        for label, cells in sorted(info["rows"].items()):
            for key, base in sorted(cells.items(), key=lambda item: float(item[0])):
                new = new_rows.get(label, {}).get(key)
                rows.append(
                    {"task": task, "method": label, "sparsity": key, **compare_cell(base, new, k, abs_tol)}
                )
    for task, info in sorted(current["tasks"].items()):
        for label, cells in sorted(info["rows"].items()):
            for key, new in cells.items():
                if key not in baseline["tasks"].get(task, {}).get("rows", {}).get(label, {}):
                    mean = new.get("mean")
                    rows.append(
                        {
                            "task": task,
                            "method": label,
                            "sparsity": key,
                            "status": "new",
                            "base": None,
                            "new": mean,
                            "delta": None,
                            "allowed": None,
                        }
                    )
    return rows


def _pct(value) -> str:
    if value is None:
        return "–"
    return value if isinstance(value, str) else f"{100 * value:.2f}"


def render_diff(rows: list[dict]) -> str:
    counts = {status: sum(r["status"] == status for r in rows) for status in STATUS_ORDER}
    lines = [
        "### capbench compare: " + ", ".join(f"{counts[s]} {s}" for s in STATUS_ORDER if counts[s]),
        "",
        "| status | task | method | sparsity | baseline | new | Δ | allowed drop |",
        "|---|---|---|---|---|---|---|---|",
    ]
    ordered = sorted(
        rows, key=lambda r: (STATUS_ORDER.index(r["status"]), r["task"], r["method"], float(r["sparsity"]))
    )
    for r in ordered:
        delta = "–" if r["delta"] is None else f"{100 * r['delta']:+.2f}"
        lines.append(
            f"| {r['status']} | {r['task']} | {r['method']} | {r['sparsity']} | {_pct(r['base'])} | "
            f"{_pct(r['new'])} | {delta} | {_pct(r['allowed'])} |"
        )
    return "\n".join(lines) + "\n"


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
    p.add_argument("--out", type=Path, help="also write the markdown diff here (for a PR comment)")
    p.set_defaults(handler=cmd_compare)


def cmd_compare(args) -> int:
    from capbench.leaderboard import summarize
    from capbench.records import atomic_write_text, load_records

    if not args.baseline.is_file():
        raise CapbenchError(
            f"--baseline {args.baseline}: no such file; write one with capbench leaderboard --out"
        )
    try:
        baseline = json.loads(args.baseline.read_text())
    except json.JSONDecodeError as exc:
        raise CapbenchError(
            f"--baseline {args.baseline}: not JSON ({exc.msg} at line {exc.lineno})"
        ) from None
    if "tasks" not in baseline:
        raise CapbenchError(f"--baseline {args.baseline}: not a capbench leaderboard JSON (no 'tasks')")
    records = load_records(*args.runs)
    if not records:
        raise CapbenchError(f"no records under {', '.join(map(str, args.runs))}")
    rows = compare_summaries(baseline, summarize(records), args.k, args.abs_tol)
    text = render_diff(rows)
    sys.stdout.write(text)
    if args.out:
        atomic_write_text(args.out, text)
    failing = {"regressed"} | (set() if args.allow_missing else {"missing"})
    return 1 if any(r["status"] in failing for r in rows) else 0
