"""Probe results as text: the per-layer table of `capbench probe` and the leaderboard's `probes` table.

Probing itself is `probing.run.probe_model` (with `probing.options.ProbeOptions`), retention
`probing.retention.retention`, the layer curves `probing.plots.plot_layer_curves`; they are re-exported here
for callers of the former single module.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from capbench.probing.options import KNOWN_PROBES, ProbeOptions, split_probe_names
from capbench.probing.plots import plot_layer_curves
from capbench.probing.retention import layer_names, retention, summarise
from capbench.probing.run import load_model, probe_model

__all__ = [
    "KNOWN_PROBES",
    "ProbeOptions",
    "format_layer_table",
    "layer_names",
    "load_model",
    "plot_layer_curves",
    "probe_model",
    "render_probe_table",
    "render_validity_table",
    "retention",
    "split_probe_names",
    "summarise",
]


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def format_layer_table(result: Mapping, retention_result: Mapping | None = None) -> str:
    """Plain-text per-layer table of one probe_model result (the `capbench probe` output)."""
    names = result.get("layer_names") or layer_names(result["n_layers"])
    lines = [f"model {result['model']}  (weights {result['weights_hash']})"]
    for task, entry in result["tasks"].items():
        for pooling, res in entry["pooling"].items():
            control = "control_chance" in res
            head = f"\n{task} [{pooling}]  {res['n_classes']} classes, chance {res['chance']:.3f}"
            if control:
                head += f", control chance {res['control_chance']:.3f}"
            head += "  (sizes " + "/".join(str(res["sizes"][s]) for s in ("train", "dev", "test")) + ")"
            lines.append(head)
            ret, ref_layer = None, None
            if retention_result is not None:
                entry_ret = retention_result["tasks"].get(task, {}).get(pooling, {})
                ret, ref_layer = entry_ret.get("per_layer"), entry_ret.get("layer")
            cols = (
                ["layer", "acc", "std", "dev"]
                + (["control", "select."] if control else [])
                + (["retain"] if ret else [])
            )
            lines.append("  ".join(f"{c:>7s}" for c in cols))
            for i, layer in enumerate(res["layers"]):
                cells = [
                    names[i] if i < len(names) else str(i),
                    _fmt(layer["acc"]),
                    _fmt(layer["std"]),
                    _fmt(layer["dev_acc"]),
                ]
                if control:
                    cells += [_fmt(layer["control_acc"]), _fmt(layer["selectivity"])]
                if ret:
                    cells.append(_fmt(ret[i]))
                mark = "  <- best (dev)" if i == res["best_layer"] else ""
                if retention_result is not None and i == ref_layer:
                    mark += "  <- reference layer"
                lines.append("  ".join(f"{c:>7s}" for c in cells) + mark)
    if retention_result is not None:
        lines.append(
            f"\nretention vs {retention_result['reference']['model']} ({retention_result['pooling']}; "
            "(acc - acc0) / (acc_ref - acc0) at the reference's best encoder layer): "
            + ", ".join(
                f"{t} {_fmt(v)}" + ("" if t in retention_result["valid"] else " (not valid)")
                for t, v in retention_result["summary"].items()
            )
            + f"; mean over valid probes {_fmt(retention_result['mean'])}"
        )
    return "\n".join(lines) + "\n"


def render_validity_table(reference: Mapping, floors: Mapping[str, Mapping]) -> str:
    """Markdown: the pre-trained reference and each floor model (rows) by probe (columns): retention, and
    the accuracy at the reference layer against acc0 (the reference's embeddings). Probes the reference
    does not clear by the margin are marked "(not valid)"."""
    from capbench.report.markdown import markdown_table

    own = retention(reference, reference)
    tasks = list(own["summary"])
    header = ["model", *(f"{t} retention" for t in tasks), "mean"]
    base = own["reference"]["baselines"]
    notes = [
        f"{t}: layer {b['layer']}, acc_ref {b['acc_ref']:.3f}, acc0 {b['acc0']:.3f}, chance {b['chance']:.3f}, "
        f"margin {b['margin']:.3f}" + ("" if b["valid"] else f" (not valid: {b['reason']})")
        for t, b in base.items()
    ]
    rows = []
    for name, result in [("pre-trained", reference), *floors.items()]:
        ret = retention(result, reference)
        cells = []
        for t in tasks:
            entry = ret["tasks"][t][ret["pooling"]]
            cells.append(f"{_fmt(entry['retention'])} (acc {entry['acc']:.3f})")
        rows.append([name, *cells, _fmt(ret["mean"])])
    return markdown_table(header, rows) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"


def render_probe_table(records: Sequence[Mapping]) -> str:
    """Markdown: rows method (and task, when several), columns sparsity -> retention, selectivity.

    The leaderboard's `probes` table (declared in capbench.report.builtin): retention is the best-layer
    probe accuracy divided by the pre-trained model's, selectivity the best-layer task - control accuracy,
    each averaged over a record's generated probes and over the records of a cell (seeds); the pre-trained
    reference is a row of its own. Returns "" when no finished record has probe results.
    """
    from capbench.report import tables

    text = tables.render_records("probes", list(records))
    return text + "\n" if text else ""
