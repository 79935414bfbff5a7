"""Probe results compared: per-task summaries and retention (a result's accuracies over a reference's)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from capbench.errors import CapbenchError
from capbench.probing.features import POOLINGS


def layer_names(n_layers: int) -> list[str]:
    return ["emb"] + [str(i) for i in range(1, n_layers)]


def summarise(tasks: Mapping, pooling: str) -> dict:
    summary = {}
    for name, entry in tasks.items():
        result = entry["pooling"][pooling]
        summary[name] = {
            "pooling": pooling,
            "best_layer": result["best_layer"],
            **{k: v for k, v in result["best"].items() if k != "layer"},
        }
    return summary


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not b:
        return None
    return float(a) / float(b)


def retention(result: Mapping, reference_result: Mapping) -> dict:
    """Probe accuracy of `result` divided by `reference_result`'s, per task, pooling and layer.

    `summary[task]` is the best-layer retention at the primary pooling (each model's best layer chosen on
    dev); `mean` averages it over the tasks both results share.
    """
    shared = [t for t in result["tasks"] if t in reference_result["tasks"]]
    if not shared:
        raise CapbenchError("retention: the result and its reference share no probe task")
    primary = result.get("primary_pooling", POOLINGS[0])
    tasks: dict = {}
    reference_layers: dict = {}
    for task in shared:
        mine, theirs = result["tasks"][task]["pooling"], reference_result["tasks"][task]["pooling"]
        tasks[task] = {}
        reference_layers[task] = {}
        for pooling in (p for p in mine if p in theirs):
            a, b = mine[pooling], theirs[pooling]
            accs = [layer["acc"] for layer in a["layers"]]
            refs = [layer["acc"] for layer in b["layers"]]
            reference_layers[task][pooling] = refs
            per_layer = (
                [_ratio(x, y) for x, y in zip(accs, refs, strict=True)] if len(accs) == len(refs) else None
            )
            tasks[task][pooling] = {
                "best": _ratio(a["best"]["acc"], b["best"]["acc"]),
                "per_layer": per_layer,
                "mean_over_layers": float(np.mean(per_layer))
                if per_layer and None not in per_layer
                else None,
            }
    summary = {t: tasks[t].get(primary, {}).get("best") for t in shared}
    values = [v for v in summary.values() if v is not None]
    protocol_keys = (
        "seeds",
        "data_seed",
        "sizes",
        "transfer_sizes",
        "n_words",
        "c_grid",
        "max_length",
        "corpus",
    )
    mine_p, ref_p = result.get("protocol", {}), reference_result.get("protocol", {})
    return {
        "reference": {
            "model": reference_result.get("model"),
            "weights_hash": reference_result.get("weights_hash"),
            "summary": {
                t: reference_result["summary"][t] for t in shared if t in reference_result.get("summary", {})
            },
            "per_layer": reference_layers,
        },
        "pooling": primary,
        "tasks": tasks,
        "summary": summary,
        "mean": float(np.mean(values)) if values else None,
        "protocol_match": all(mine_p.get(k) == ref_p.get(k) for k in protocol_keys),
    }
