"""Leaderboard plots (matplotlib, PNG and SVG): metric vs sparsity, and metric vs measured speedup."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from capbench.leaderboard import row_label  # noqa: E402
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


def metric_vs_sparsity(summary: dict, task: str, base: Path) -> list[Path]:
    info = summary["tasks"][task]
    fig, ax = plt.subplots(figsize=(6, 4))
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
            marker="o",
            capsize=3,
            label=label,
        )
    ax.set_xlabel("sparsity (fraction of prunable weights removed)")
    ax.set_ylabel(f"{info['metric']} ×100 ({info['split']})")
    ax.set_title(f"{task}: {info['metric']} vs sparsity (mean ± std over seeds)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return _save(fig, base)


def measured_speedup(record: dict) -> float | None:
    return (record.get("speed") or {}).get("summary", {}).get("measured_speedup")


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points no other point beats on both speedup and metric, by increasing speedup."""
    front, best = [], float("-inf")
    for speed, metric in sorted(points, key=lambda p: (-p[0], -p[1])):
        if metric > best:
            front.append((speed, metric))
            best = metric
    return sorted(front)


def metric_vs_speedup(records: list[dict], task: str, base: Path) -> list[Path] | None:
    groups = defaultdict(list)
    for record in records:
        if record["spec"]["task"] != task or record.get("status") != "done":
            continue
        speed = 1.0 if record["spec"]["method"] == DENSE else measured_speedup(record)
        if speed is not None and record["main_metric"]["value"] is not None:
            groups[row_label(record["spec"])].append((speed, 100 * record["main_metric"]["value"]))
    if len(groups) < 2:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, points in sorted(groups.items()):
        ax.scatter(*zip(*points), label=label, s=18)
    front = pareto_front([p for points in groups.values() for p in points])
    ax.plot(*zip(*front), color="gray", linestyle=":", label="Pareto front")
    ax.set_xlabel("measured end-to-end speedup vs dense (this machine)")
    ax.set_ylabel("main metric ×100")
    ax.set_title(f"{task}: accuracy vs measured speedup")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return _save(fig, base)


def write_plots(summary: dict, records: list[dict], folder: Path, stem: str) -> list[tuple[str, str]]:
    """Write every plot beside the markdown; returns (title, relative path of the PNG) for linking."""
    folder.mkdir(parents=True, exist_ok=True)
    links = []
    for task in summary["tasks"]:
        png = metric_vs_sparsity(summary, task, folder / f"{stem}-{task}-sparsity")[0]
        links.append((f"{task}: metric vs sparsity", png.name))
        pareto = metric_vs_speedup(records, task, folder / f"{stem}-{task}-pareto")
        if pareto:
            links.append((f"{task}: metric vs measured speedup", pareto[0].name))
    return links
