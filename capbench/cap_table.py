"""The CAP ablation table: which contrastive modules and losses were on, and what each variant scored.

Declared in capbench.report.builtin (`cap_ablation`); this renders it from records alone.
"""

from __future__ import annotations


def render_cap_table(records: list[dict]) -> str:
    from capbench.report import tables

    return tables.render_records("cap_ablation", records).rstrip() + "\n"
