"""Write a leaderboard: markdown, the JSON of the same numbers, and optional plots."""

from __future__ import annotations

import json
from pathlib import Path

from capbench.errors import CapbenchError
from capbench.leaderboard import render_markdown, summarize
from capbench.records import atomic_write_text, load_records


def extra_sections(records: list[dict]) -> list[str]:
    """Probing and speed tables, when the records have them."""
    sections = []
    if any(r.get("probes") for r in records):
        from capbench.probing.report import render_probe_table

        sections.append(
            "## Linear probes: task-agnostic knowledge retained\n\n" + render_probe_table(records)
        )
    if any(r.get("speed") for r in records):
        from capbench.speed.report import render_speed_table

        sections.append("## Inference speed on this machine\n\n" + render_speed_table(records))
    if any(r.get("cap") for r in records):
        from capbench.cap_table import render_cap_table

        sections.append("## CAP ablations\n\n" + render_cap_table(records))
    return sections


REPORTED_NOTE = (
    "Published numbers, labelled with their source; they are not capbench results and never enter the tables "
    "above. Δ = capbench − reported, given only where these records ran the same model, task, method, "
    "sparsity and distillation setting; otherwise there is no Δ, because a different model or budget is not a "
    "reproduction."
)


def reported_section(rows: list[dict]) -> str:
    from capbench.reported import render_reported_table

    return "## Reported in papers\n\n" + REPORTED_NOTE + "\n\n" + render_reported_table(rows)


def publish(
    run_dirs: list[Path],
    out: Path | None,
    command: str | None,
    plots: bool = False,
    reported: str = "builtin",
) -> str:
    """`reported`: "builtin" (capbench/reported.yaml), a YAML path, or "none" to leave the papers' numbers out."""
    for run_dir in run_dirs:
        if not run_dir.is_dir():
            raise CapbenchError(f"--runs {run_dir}: no such directory; pass the --out of a capbench run")
    records = load_records(*run_dirs)
    if not records:
        raise CapbenchError(f"no records under {', '.join(map(str, run_dirs))}; run `capbench run` first")
    summary = summarize(records)
    sections = extra_sections(records)
    if reported != "none":
        from capbench.reported import compare_reported, load_reported

        summary["reported"] = compare_reported(
            load_reported(None if reported == "builtin" else Path(reported)), records
        )
        if summary["reported"]:
            sections.append(reported_section(summary["reported"]))
    if plots and out is not None:
        from capbench.plots import write_plots

        links = write_plots(summary, records, out.parent, out.stem)
        if any(r.get("probes") for r in records):
            from capbench.probing.report import plot_layer_curves

            path = out.parent / f"{out.stem}-probe-layers.png"
            plot_layer_curves(records, path)
            links.append(("probe accuracy per layer", path.name))
        sections.append("## Plots\n\n" + "\n".join(f"![{name}]({path})" for name, path in links))
    text = render_markdown(summary, command, sections)
    if out is not None:
        atomic_write_text(out, text)
        atomic_write_text(out.with_suffix(".json"), json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return text
