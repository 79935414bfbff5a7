"""Write a leaderboard: markdown, the JSON of the same numbers, and optional plots."""

from __future__ import annotations

from pathlib import Path

from capbench.errors import CapbenchError
from capbench.leaderboard import render_markdown, summarize
from capbench.records import atomic_write_text, dumps_json, load_records


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
    "above. Δ = capbench − reported, given only where these records reproduce the paper's setting: the same "
    "checkpoint (by its pinned hub id or weights digest, never by folder name), task, method, sparsity and "
    "metric, the whole official train split, the official evaluation split, the paper's epochs and learning "
    "rate (and batch size where the source gives one) and the same distillation setting. A setting the source "
    "does not give rules out a Δ. Otherwise the published number stands alone, and where capbench ran that "
    "cell the last column says why it is not a reproduction."
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
    skip_bad_records: bool = False,
) -> str:
    """`reported`: "builtin" (capbench/reported.yaml), a YAML path, or "none" to leave the papers' numbers out.

    Raises CapbenchError naming every unreadable or malformed record file, unless `skip_bad_records`
    (then the header counts them).
    """
    for run_dir in run_dirs:
        if not run_dir.is_dir():
            raise CapbenchError(f"--runs {run_dir}: no such directory; pass the --out of a capbench run")
    bad: list[str] = []
    records = load_records(*run_dirs, skip_bad=skip_bad_records, bad=bad)
    if not records:
        raise CapbenchError(f"no records under {', '.join(map(str, run_dirs))}; run `capbench run` first")
    summary = summarize(records)
    if bad:
        summary["provenance"]["bad_records"] = len(bad)
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
        atomic_write_text(out.with_suffix(".json"), dumps_json(summary, str(out.with_suffix(".json"))))
    return text
