"""Speed tables: per layer and whole model for `capbench bench`, and the leaderboard's speed table."""

from __future__ import annotations

import math
from collections.abc import Iterable

from capbench.provenance import machine_line


def format_label(counts: dict[str, int], compacted: bool) -> str:
    """How the model ran: "compacted", then each format with its share of the encoder linears."""
    parts = ["compacted"] if compacted else []
    total = sum(counts.values())
    for name, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        if name != "dense":
            parts.append(name if n == total else f"{name} {n}/{total}")
    return " + ".join(parts) if parts else "dense"


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
    header = ["layer", "shape", "sparsity", "ideal", "dense ms", *sparse, "best"]
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
                _fmt(results["dense"]["median_s"] * 1e3, ".3f"),
                *[_fmt(results[n]["speedup"], ".2f", "x") if n in results else "—" for n in sparse],
                f"{row['best']} ({row['best_speedup']:.2f}x)",
            ]
        )
    return f"Per-layer speedup vs dense at {label} tokens (median of per-round ratios):\n\n" + markdown_table(
        header, rows
    )


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


def render_model_table(speed: dict) -> str:
    """Whole-model latency/throughput per shape, the summary line and the time breakdown."""
    header = ["shape", "dense ms", "pruned ms", "speedup", "IQR", "pruned tokens/s", "formats"]
    rows = []
    for label, row in (speed.get("model") or {}).items():
        d, p = row["models"]["dense"], row["models"]["pruned"]
        rows.append(
            [
                label,
                _fmt(d["latency_s"]["median"] * 1e3, ".1f"),
                _fmt(p["latency_s"]["median"] * 1e3, ".1f"),
                _fmt(p["speedup"], ".2f", "x"),
                _fmt(p["speedup_iqr"], ".2f"),
                _fmt(p["tokens_per_s"], ",.0f"),
                format_label(row["formats"], speed["summary"].get("compacted", False)),
            ]
        )
    parts = [f"Whole model vs dense on {machine_line(speed['machine'])}:", markdown_table(header, rows)]
    s = speed.get("summary") or {}
    if s.get("measured_speedup") is not None:
        line = (
            f"Summary at {s['token_count']}: sparsity {s['sparsity']:.3f}, measured {s['measured_speedup']:.2f}x, "
            f"theoretical 1/(1-s) {_fmt(s['theoretical_speedup'], '.2f', 'x')} "
            f"(encoder incl. attention core {_fmt(s.get('theoretical_model_speedup'), '.2f', 'x')}), "
            f"{_fmt((s.get('fraction_of_theoretical') or 0) * 100, '.0f', '%')} of theoretical"
        )
        if s.get("sparse_not_faster"):
            line += " — SPARSE BUT NOT FASTER"
        parts.append(line)
    b = speed.get("breakdown") or {}
    if b:
        header = ["part", "dense ms", "dense %", "pruned ms", "pruned %"]
        rows = []
        for part in ("encoder_linears", "attention_core", "embeddings", "other", "total"):
            ds, ps = b["dense"]["seconds"][part], b["pruned"]["seconds"][part]
            df = b["dense"]["fractions"].get(part, 1.0) if part != "total" else 1.0
            pf = b["pruned"]["fractions"].get(part, 1.0) if part != "total" else 1.0
            rows.append(
                [
                    part,
                    _fmt(ds * 1e3, ".1f"),
                    _fmt(df * 100, ".0f"),
                    _fmt(ps * 1e3, ".1f"),
                    _fmt(pf * 100, ".0f"),
                ]
            )
        parts.append(f"Where the time goes at {b['token_count']}:\n\n" + markdown_table(header, rows))
    return "\n\n".join(parts)


def render_speed_table(records: Iterable[dict]) -> str:
    """Leaderboard speed table (`speed`, declared in capbench.report.builtin): one line per done record with
    a measurement: measured speedup, theoretical, fraction of it, format used."""
    from capbench.report import tables

    return tables.render_records("speed", list(records))
