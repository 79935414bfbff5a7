"""The CAP ablation table: which contrastive modules and losses were on, and what each variant scored."""

from __future__ import annotations

from collections import defaultdict

from capbench.leaderboard import _fmt_metric, _stats, markdown_table, row_label, sparsity_key


def render_cap_table(records: list[dict]) -> str:
    groups: dict = defaultdict(lambda: defaultdict(list))
    settings: dict = {}
    costs: dict = defaultdict(list)
    for record in records:
        cap = record["spec"].get("cap")
        if not cap or record.get("status") != "done":
            continue
        key = (record["spec"]["task"], row_label(record["spec"]))
        groups[key][sparsity_key(record["spec"]["sparsity"])].append(record["main_metric"]["value"])
        settings[key] = cap
        costs[key].append(record.get("cap", {}))
    if not groups:
        return "No finished CAP cells.\n"
    columns = sorted({s for cells in groups.values() for s in cells}, key=float)
    header = [
        "task",
        "variant",
        "modules",
        "losses",
        "repr",
        "τ",
        *[f"s={c}" for c in columns],
        "bank MB",
        "extra fwd",
    ]
    rows = []
    for (task, label), cells in sorted(groups.items()):
        cap = settings[(task, label)]
        losses = "+".join(n for n in ("unsup", "sup") if cap.get(n)) or "none"
        bank_mb = (
            max((c.get("bank_bytes_peak", c.get("bank_bytes_total", 0)) or 0) for c in costs[(task, label)])
            / 1e6
        )
        extra = max((c.get("extra_forward_examples_total", 0) or 0) for c in costs[(task, label)])
        metric_cells = [
            (
                "–"
                if c not in cells
                else "undefined"
                if None in cells[c]
                else _fmt_metric({"status": "done", **_stats(cells[c])})
            )
            for c in columns
        ]
        rows.append(
            [
                task,
                label,
                "+".join(cap.get("modules", [])),
                losses,
                cap.get("representation", ""),
                f"{cap.get('temperature', '')}",
                *metric_cells,
                f"{bank_mb:.1f}",
                str(extra),
            ]
        )
    return "\n".join(markdown_table(header, rows)) + "\n"
