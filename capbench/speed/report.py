"""Speed tables: per layer and whole model for `capbench bench`, and the leaderboard's speed table."""

from __future__ import annotations

import math
from collections.abc import Iterable

from capbench.provenance import machine_line
from capbench.speed.formats import format_label
from capbench.speed.inputs import describe_inputs

# ---------------------------------------------------------------------------------------------- tables


def _fmt(x, spec: str = ".2f", suffix: str = "") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—"
    return f"{x:{spec}}{suffix}"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    from capbench.report.markdown import markdown_table as table

    return table(header, rows)


def _timed_formats(layers: list[dict]) -> list[str]:
    """Formats timed on at least one layer, in first-seen order (the others are listed below the table)."""
    names: list[str] = []
    for layer in layers:
        for row in layer["token_counts"].values():
            names += [name for name in row["results"] if name not in names]
    return names


def _layer_block(layers: list[dict], label: str, names: list[str]) -> str:
    """The per-layer table at one token count."""
    sparse = [n for n in names if n != "dense"]
    header = ["layer", "shape", "sparsity", "ideal", "input", "dense ms", *sparse, "best"]
    rows = []
    for layer in layers:
        row = layer["token_counts"].get(label)
        if row is None:
            continue
        results = row["results"]
        rows.append(
            [
                layer["name"],
                "x".join(map(str, layer["shape"])),
                _fmt(layer["sparsity"], ".3f"),
                _fmt(layer["theoretical_speedup"], ".1f", "x"),
                row.get("input_layout", "row-major"),
                _fmt(results["dense"]["median_s"] * 1e3, ".3f"),
                *[_fmt(results[n]["speedup"], ".2f", "x") if n in results else "—" for n in sparse],
                f"{row['best']} ({row['best_speedup']:.2f}x)",
            ]
        )
    intro = (
        f"Calibration at {label} tokens: per-layer speedup vs dense (median of per-round ratios); a sparse "
        "format is chosen only when its interval of the median clears the minimum gain:"
    )
    return intro + "\n\n" + markdown_table(header, rows)


def _format_notes(layers: list[dict]) -> list[str]:
    """Formats unavailable on this machine (with the first reason), and those skipped as not worth timing."""
    unavailable: dict[str, str] = {}
    skipped: set[str] = set()
    for layer in layers:
        for name, info in layer["formats"].items():
            if info["reason"].startswith("skipped"):
                skipped.add(name)
            elif not info["available"]:
                unavailable.setdefault(name, info["reason"])
    notes = [f"- {name}: unavailable ({reason})" for name, reason in unavailable.items()]
    if skipped:
        notes.append(
            f"- skipped on some layers (sparsity/block density too low to pay): {', '.join(sorted(skipped))}"
        )
    return notes


def render_layer_table(speed: dict) -> str:
    """Per-layer table: shape, sparsity, ideal, dense time and each format's speedup per token count."""
    layers = speed.get("layers") or []
    if not layers:
        return "(no per-layer timings)"
    names = _timed_formats(layers)
    blocks = [_layer_block(layers, label, names) for label in speed["settings"]["token_counts"]]
    notes = _format_notes(layers)
    return "\n\n".join(blocks) + ("\n\n" + "\n".join(notes) if notes else "")


def _pct(x) -> str:
    return _fmt(None if x is None else x * 100, ".0f", "%")


def interval(speedup, ci) -> str:
    """ "1.46x [1.43, 1.49]": a speedup with its interval (just the speedup where there is none)."""
    text = _fmt(speedup, ".2f", "x")
    if ci and ci[0] is not None and ci[1] is not None and text != "—":
        text += f" [{ci[0]:.2f}, {ci[1]:.2f}]"
    return text


def busy_line(speed: dict) -> str:
    """The machine-load verdict of a measurement, loud when busy."""
    busy = speed.get("busy")
    reason = speed.get("busy_reason") or ""
    if busy:
        return f"**BUSY machine: {reason}. These numbers are not comparable; rerun on an idle machine.**"
    if busy is None:
        return f"Machine load: {reason or 'not recorded'}."
    return f"Machine load: idle ({reason})."


def _model_rows(speed: dict) -> list[list[str]]:
    rows = []
    compacted = (speed.get("summary") or {}).get("compacted", False)
    for label, row in (speed.get("model") or {}).items():
        d, p = row["models"]["dense"], row["models"]["pruned"]
        spread = p["speedup_iqr"] / p["speedup"] if p.get("speedup") else None
        stop = (row.get("stop") or {}).get("reason")
        rows.append(
            [
                label,
                _fmt(d["latency_s"]["median"] * 1e3, ".1f"),
                _fmt(p["latency_s"]["median"] * 1e3, ".1f"),
                interval(p["speedup"], p.get("speedup_ci")),
                _fmt(p["speedup_iqr"], ".3f"),
                _pct(spread),
                f"{row.get('rounds', '?')}" + (f" ({stop})" if stop else ""),
                interval(row.get("ceiling"), row.get("ceiling_ci")),
                _fmt(row.get("attainable_speedup"), ".2f", "x"),
                _pct(row.get("fraction_of_attainable")),
                format_label(row["formats"], compacted),
            ]
        )
    return rows


def _summary_line(s: dict) -> str:
    line = (
        f"Summary at {s['token_count']}: sparsity {s['sparsity']:.3f}, measured "
        f"{interval(s['measured_speedup'], s.get('measured_speedup_ci'))}, ceiling (linears free) "
        f"{_fmt(s.get('ceiling'), '.2f', 'x')}, attainable at this sparsity "
        f"{_fmt(s.get('attainable_speedup'), '.2f', 'x')} ({_pct(s.get('fraction_of_attainable'))} of it); "
        f"linears only 1/(1-s) {_fmt(s['theoretical_speedup'], '.2f', 'x')}, encoder FLOPs incl. attention "
        f"{_fmt(s.get('theoretical_model_speedup'), '.2f', 'x')}"
    )
    if s.get("sparse_not_faster"):
        line += " — SPARSE BUT NOT FASTER"
    return line


def _breakdown_table(b: dict) -> str:
    header = ["part", "dense ms", "dense %", "pruned ms", "pruned %"]
    rows = []
    for part in ("encoder_linears", "attention_core", "embeddings", "other", "total"):
        ds, ps = b["dense"]["seconds"][part], b["pruned"]["seconds"][part]
        df = b["dense"]["fractions"].get(part, 1.0) if part != "total" else 1.0
        pf = b["pruned"]["fractions"].get(part, 1.0) if part != "total" else 1.0
        rows.append(
            [part, _fmt(ds * 1e3, ".1f"), _fmt(df * 100, ".0f"), _fmt(ps * 1e3, ".1f"), _fmt(pf * 100, ".0f")]
        )
    return f"Where the time goes at {b['token_count']}:\n\n" + markdown_table(header, rows)


def render_model_table(speed: dict) -> str:
    """Whole-model latency and speedup per shape (interval, IQR, rounds and why they stopped, ceiling,
    attainable and the share of it reached), the machine-load verdict, the summary line and the breakdown."""
    header = [
        "shape",
        "dense ms",
        "pruned ms",
        "speedup [95% CI]",
        "IQR",
        "IQR/median",
        "rounds (stop)",
        "ceiling",
        "attainable",
        "% of attainable",
        "formats",
    ]
    settings = speed.get("settings") or {}
    threads = settings.get("threads", (speed.get("machine") or {}).get("threads", "?"))
    intro = (
        f"Whole model vs dense on {machine_line(speed['machine'])}, {threads} threads pinned; timed on "
        f"{describe_inputs(speed.get('inputs'))}. Ceiling: the same model with its encoder linears free."
    )
    parts = [busy_line(speed), intro, markdown_table(header, _model_rows(speed))]
    s = speed.get("summary") or {}
    if s.get("measured_speedup") is not None:
        parts.append(_summary_line(s))
    b = speed.get("breakdown") or {}
    if b:
        parts.append(_breakdown_table(b))
    return "\n\n".join(parts)


def render_speed_table(records: Iterable[dict]) -> str:
    """Leaderboard speed table (`speed`, declared in capbench.report.builtin): one line per done record with
    a measurement: measured speedup, theoretical, fraction of it, format used."""
    from capbench.report import tables

    return tables.render_records("speed", list(records))
