"""Write a leaderboard: markdown, the JSON of the same numbers, and optional plots."""

from __future__ import annotations

from pathlib import Path

from capbench.errors import CapbenchError
from capbench.records import atomic_write_text, dumps_json, load_records
from capbench.report import records_frame, render_markdown, summarize
from capbench.report.summary import add_reported


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
    frames = {"records": records_frame(records, run_dirs)}
    summary = summarize(records, frames["records"])
    if bad:
        summary["provenance"]["bad_records"] = len(bad)
    sections = []
    if reported != "none":
        from capbench.reported import compare_reported, load_reported

        entries = load_reported(None if reported == "builtin" else Path(reported))
        frames["reported"] = add_reported(summary, compare_reported(entries, records))
    if plots and out is not None:
        from capbench.plots import write_plots

        links = write_plots(summary, records, out.parent, out.stem, frames["records"])
        if any(r.get("probes") for r in records):
            from capbench.probing.report import plot_layer_curves

            path = out.parent / f"{out.stem}-probe-layers.png"
            plot_layer_curves(records, path)
            links.append(("probe accuracy per layer", path.name))
        sections.append("## Plots\n\n" + "\n".join(f"![{name}]({path})" for name, path in links))
    text = render_markdown(summary, command, sections, frames)
    if out is not None:
        atomic_write_text(out, text)
        atomic_write_text(out.with_suffix(".json"), dumps_json(summary, str(out.with_suffix(".json"))))
    return text
