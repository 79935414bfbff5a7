"""Per-layer probe curves of records or probe results (matplotlib's Agg canvas, no display needed)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from capbench.errors import CapbenchError
from capbench.probing.features import POOLINGS
from capbench.probing.retention import layer_names


def _sparsity_label(value: float) -> str:
    return f"{100 * float(value):g}%"


def _mean_result(results: list[Mapping]) -> dict:
    """One probe result whose per-layer accuracies (and controls) are the means over `results` (the seeds
    of one cell); chance and layer names from the first."""
    first = results[0]
    tasks: dict = {}
    for task, info in first["tasks"].items():
        pooled = {}
        for pooling, entry in info.get("pooling", {}).items():
            entries = [r["tasks"].get(task, {}).get("pooling", {}).get(pooling) for r in results]
            entries = [e for e in entries if e is not None and len(e["layers"]) == len(entry["layers"])]
            layers = []
            for i in range(len(entry["layers"])):
                layer = {"acc": sum(e["layers"][i]["acc"] for e in entries) / len(entries)}
                if all("control_acc" in e["layers"][i] for e in entries):
                    layer["control_acc"] = sum(e["layers"][i]["control_acc"] for e in entries) / len(entries)
                layers.append(layer)
            pooled[pooling] = {"layers": layers, "chance": entry["chance"]}
        tasks[task] = {"pooling": pooled}
    out = {"tasks": tasks}
    if first.get("layer_names"):
        out["layer_names"] = first["layer_names"]
    return out


def _record_series(records: list[Mapping]) -> tuple[list[tuple[str, Mapping, dict]], dict | None]:
    """One line per leaderboard row and sparsity (and task, when several): the mean over its seeds, labelled
    with the row's name as the tables give it (capbench.leaderboard.row_label) and n."""
    from capbench.leaderboard import row_label

    groups: dict[tuple, list[Mapping]] = {}
    for r in records:
        spec = r["spec"]
        key = (row_label(spec), float(spec.get("sparsity", 0.0)), spec.get("task"))
        groups.setdefault(key, []).append(r)
    tasks = {key[2] for key in groups}
    rows = sorted({key[0] for key in groups}, key=lambda m: (m != "dense", m))
    sparsities = sorted({key[1] for key in groups})
    series: list[tuple[str, Mapping, dict]] = []
    reference = None
    for key in sorted(groups, key=lambda k: (rows.index(k[0]), k[1], str(k[2]))):
        row, sparsity, task = key
        members = groups[key]
        label = f"{row} {_sparsity_label(sparsity)}" + (f" ({task})" if len(tasks) > 1 else "")
        label += f" (n={len(members)})" if len(members) > 1 else ""
        turn = sparsities.index(sparsity)
        style = {
            "color": f"C{rows.index(row) % 10}",
            "marker": ["o", "s", "^", "D"][rows.index(row) // 10 % 4],
            "alpha": 0.45 + 0.55 * (turn + 1) / len(sparsities),
            "linestyle": ["-", "--", "-.", ":"][turn % 4],
        }
        series.append((label, _mean_result([m["probes"] for m in members]), style))
        if reference is None:
            reference = next(
                (dict(m["probes"]["retention"]["reference"]) for m in members if "retention" in m["probes"]),
                None,
            )
    return series, reference


def _series(records_or_results) -> tuple[list[tuple[str, Mapping, dict]], dict | None]:
    """[(label, result, style)], and the reference per-layer accuracies (from a retention) if any."""
    if isinstance(records_or_results, Mapping):
        if "tasks" in records_or_results or "spec" in records_or_results:
            items = [records_or_results]
        else:
            items = [{**v, "label": k} for k, v in records_or_results.items()]
    else:
        items = list(records_or_results)
    series: list[tuple[str, Mapping, dict]] = []
    reference = None
    is_records = any("spec" in item for item in items)
    if is_records:
        items = [
            r
            for r in items
            if r.get("status") == "done" and isinstance(r.get("probes"), Mapping) and "tasks" in r["probes"]
        ]
        series, reference = _record_series(items)
    else:
        for i, item in enumerate(items):
            label = str(item.get("label") or item.get("model", f"model {i}"))
            series.append((label, item, {"color": f"C{i % 10}", "marker": "o"}))
            if reference is None and "retention" in item:
                reference = dict(item["retention"]["reference"])
    return series, reference


def _draw_panel(ax, task: str, series, reference: dict | None, pooling: str, controls: bool) -> None:
    """One probe task's panel: every series' per-layer accuracy (and control), the reference, chance."""
    chance = None
    for label, result, style in series:
        entry = result["tasks"].get(task, {}).get("pooling", {}).get(pooling)
        if entry is None:
            continue
        xs = list(range(len(entry["layers"])))
        ax.plot(
            xs,
            [layer["acc"] for layer in entry["layers"]],
            markersize=3,
            label=label,
            **style,
        )
        if controls and "control_acc" in entry["layers"][0]:
            ax.plot(
                xs,
                [layer["control_acc"] for layer in entry["layers"]],
                linestyle=":",
                linewidth=1,
                color=style.get("color"),
                label=f"{label} control",
            )
        chance = entry["chance"]
        ax.set_xticks(xs, result.get("layer_names") or layer_names(len(xs)))
    if reference is not None:
        refs = reference.get("per_layer", {}).get(task, {}).get(pooling)
        if refs:
            ax.plot(range(len(refs)), refs, color="black", linestyle="--", linewidth=1.2, label="pre-trained")
        base = reference.get("baselines", {}).get(task)
        if (
            base and reference.get("pooling", pooling) == pooling
        ):  # retention reads every model at the reference layer, against the embeddings' accuracy
            ax.axhline(base["acc0"], color="black", linestyle="-.", linewidth=0.8, label="embeddings (acc0)")
            ax.axvline(base["layer"], color="black", linestyle=":", linewidth=0.8)
    if chance is not None:
        ax.axhline(chance, color="grey", linestyle=":", linewidth=0.8)
    ax.set_title(f"{task} ({pooling})", fontsize=10)
    ax.set_xlabel("layer")
    ax.set_ylabel("probe test accuracy")
    ax.grid(alpha=0.3)


def plot_layer_curves(
    records_or_results,
    path: str | Path,
    pooling: str | None = None,
    probes: Sequence[str] | None = None,
    controls: bool | None = None,
) -> Path:
    """Per-layer probe test accuracy, one panel per probe task: each record (method @ sparsity) or result
    as a line, the pre-trained reference dashed black (from a retention) with its embeddings-only accuracy
    (acc0, dash-dot) and the reference layer (dotted vertical) retention reads, chance dotted grey; control
    accuracy as thin dotted lines when there are at most two series (or `controls=True`).
    PNG, SVG or PDF by the file suffix; matplotlib's Agg canvas, no display needed."""
    from matplotlib.figure import Figure

    path = Path(path)
    if path.suffix.lower() not in (".png", ".svg", ".pdf"):
        raise CapbenchError(f"--plot {path}: use a .png, .svg or .pdf file name")
    series, reference = _series(records_or_results)
    if not series:
        raise CapbenchError("plot_layer_curves: no probe results to plot")
    pooling = pooling or series[0][1].get("primary_pooling", POOLINGS[0])
    names: list[str] = list(probes) if probes is not None else []
    if probes is None:
        for _, result, _ in series:
            names += [t for t in result["tasks"] if t not in names]
    controls = len(series) <= 2 if controls is None else controls
    ncols = min(3, len(names))
    nrows = math.ceil(len(names) / ncols)
    legend_rows = math.ceil((len(series) + 2) / min(4, len(series) + 2))
    fig = Figure(figsize=(4.2 * ncols, 3.2 * nrows + 0.2 * legend_rows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax in axes.flat[len(names) :]:
        ax.set_visible(False)
    for ax, task in zip(axes.flat, names, strict=False):
        _draw_panel(ax, task, series, reference, pooling, controls)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncols=min(4, len(labels)), fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
