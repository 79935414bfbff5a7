"""Leaderboard plots (matplotlib, PNG and SVG): metric vs sparsity, and metric vs measured speedup."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from capbench.spec import DENSE  # noqa: E402


def _save(fig, base: Path) -> list[Path]:
    paths = []
    for suffix in (".png", ".svg"):
        path = base.with_suffix(suffix)
        # A fixed salt and no date: the same records give byte-identical SVGs (element ids are hashed).
        with matplotlib.rc_context({"svg.hashsalt": "capbench"}):
            fig.savefig(
                path, dpi=120, bbox_inches="tight", metadata={"Date": None} if suffix == ".svg" else None
            )
        paths.append(path)
    plt.close(fig)
    return paths


_MARKERS = ("o", "s", "^", "D", "v")
_LINES = ("-", "--", ":", "-.", (0, (5, 1)))


def series_style(i: int) -> dict:
    """The i-th series' colour, marker and line: tab10's 10 colours, then the same colours with the next
    marker and dash, so a board with 20 rows (the CAP ablations beside every method) never repeats a style."""
    colours = plt.get_cmap("tab10").colors
    turn = (i // len(colours)) % len(_MARKERS)
    return {"color": colours[i % len(colours)], "marker": _MARKERS[turn], "linestyle": _LINES[turn]}


def _outside_legend(ax) -> None:
    """The legend to the right of the axes, so it never hides a point however many rows there are."""
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)


def metric_vs_sparsity(summary: dict, task: str, base: Path) -> list[Path]:
    info = summary["tasks"][task]
    fig, ax = plt.subplots(figsize=(6, 4))
    series = 0
    for label, cells in info["rows"].items():
        # undefined cells (constant predictions) have no point to plot
        done = [(float(k), c) for k, c in cells.items() if c["status"] == "done" and c["mean"] is not None]
        if label == DENSE:
            for _, cell in done:
                ax.axhline(100 * cell["mean"], color="black", linestyle="--", label="dense")
            continue
        done.sort()
        if not done:
            continue
        xs = [x for x, _ in done]
        ax.errorbar(
            xs,
            [100 * c["mean"] for _, c in done],
            yerr=[100 * c["std"] for _, c in done],
            capsize=3,
            label=label,
            **series_style(series),
        )
        series += 1
    ax.set_xlabel("sparsity (fraction of prunable weights removed)")
    ax.set_ylabel(f"{info['metric']} ×100 ({info['split']})")
    ax.set_title(f"{task}: {info['metric']} vs sparsity (mean ± std over seeds)")
    _outside_legend(ax)
    ax.grid(alpha=0.3)
    return _save(fig, base)


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points no other point beats on both speedup and metric, by increasing speedup."""
    front, best = [], float("-inf")
    for speed, metric in sorted(points, key=lambda p: (-p[0], -p[1])):
        if metric > best:
            front.append((speed, metric))
            best = metric
    return sorted(front)


def metric_vs_speedup(frame, task: str, base: Path) -> list[Path] | None:
    """Main metric vs measured speedup of a task's finished records (`frame`: capbench.report's)."""
    groups = defaultdict(list)
    for _, row in frame[(frame["task"] == task) & (frame["status"] == "done")].iterrows():
        speed = 1.0 if row["method"] == DENSE else row["speed_measured"]
        if not math.isnan(speed) and not math.isnan(row["value"]):
            groups[row["row"]].append((speed, 100 * row["value"]))
    if len(groups) < 2:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (label, points) in enumerate(sorted(groups.items())):
        style = series_style(i)
        ax.scatter(*zip(*points), label=label, s=18, color=style["color"], marker=style["marker"])
    front = pareto_front([p for points in groups.values() for p in points])
    ax.plot(*zip(*front), color="gray", linestyle=":", label="Pareto front")
    ax.set_xlabel("measured end-to-end speedup vs dense (this machine)")
    ax.set_ylabel("main metric ×100")
    ax.set_title(f"{task}: accuracy vs measured speedup")
    _outside_legend(ax)
    ax.grid(alpha=0.3)
    return _save(fig, base)


def write_plots(
    summary: dict, records: list[dict], folder: Path, stem: str, frame=None
) -> list[tuple[str, str]]:
    """Write every plot beside the markdown; returns (title, relative path of the PNG) for linking.
    `frame`: the records' frame (capbench.report.records_frame), when the caller has it."""
    from capbench.report import records_frame

    frame = records_frame(records) if frame is None else frame
    folder.mkdir(parents=True, exist_ok=True)
    links = []
    for task in summary["tasks"]:
        png = metric_vs_sparsity(summary, task, folder / f"{stem}-{task}-sparsity")[0]
        links.append((f"{task}: metric vs sparsity", png.name))
        pareto = metric_vs_speedup(frame, task, folder / f"{stem}-{task}-pareto")
        if pareto:
            links.append((f"{task}: metric vs measured speedup", pareto[0].name))
    return links
