"""Probe results compared: per-task summaries and retention of what the encoder adds over its embeddings.

Retention of probe t (one pooling) against a reference result (the pre-trained model):

    retention = (acc - acc0) / (acc_ref - acc0)

- acc0: the *reference's* embeddings-only accuracy (layer 0, which pruning never touches): the baseline a
  model keeps with its encoder destroyed;
- acc_ref: the reference's accuracy at its best encoder layer (1..L, chosen on dev), the *reference layer*;
- acc: this model's accuracy at that same reference layer (so every model is read at one layer; a model's
  own best layer would pick the luckiest of L noisy layers).

A model at 1 keeps what the pre-trained encoder adds; at 0 it is no better than its embeddings. The per-layer
curves stay in the result (and the plots). Beside it, the chance-corrected accuracy (acc - chance) / (1 -
chance) at the same layer.

A probe is *valid* for a reference only when the reference clears both chance and its own embeddings by a
margin of `MARGIN_SDS` = 5 binomial standard deviations of its accuracy on the probe's test split,
sqrt(acc_ref (1 - acc_ref) / n_test) (0.098 for bigram_shift's 600 test rows at 0.64, 0.067 for qqp's 1,000
at 0.76); otherwise (acc_ref - acc0) is noise or negative, retention means nothing and the probe is left out
of the mean (`excluded` says why). Five sd: a model with no encoder signal (true retention 0) then reads
above the validity bar of 0.5 only if its accuracy errs by 2.5 sd.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from capbench.errors import CapbenchError
from capbench.probing.features import POOLINGS

MARGIN_SDS = 5.0


def layer_names(n_layers: int) -> list[str]:
    return ["emb"] + [str(i) for i in range(1, n_layers)]


def summarise(tasks: Mapping, pooling: str) -> dict:
    """{task: the best layer (chosen on dev, over every layer) and its scores} at one pooling."""
    summary = {}
    for name, entry in tasks.items():
        result = entry["pooling"][pooling]
        summary[name] = {
            "pooling": pooling,
            "best_layer": result["best_layer"],
            **{k: v for k, v in result["best"].items() if k != "layer"},
        }
    return summary


def reference_layer(entry: Mapping) -> int:
    """The reference's encoder layer of a probe: best mean dev accuracy over layers 1..L (ties: lower)."""
    layers = entry["layers"]
    if len(layers) < 2:
        raise CapbenchError("retention needs per-layer results with at least one encoder layer")
    return max(layers[1:], key=lambda e: (e["dev_acc"], -e["layer"]))["layer"]


def margin_of(entry: Mapping, acc_ref: float) -> float:
    """MARGIN_SDS binomial sd of an accuracy of `acc_ref` on the entry's test split (see the module doc)."""
    n_test = int((entry.get("sizes") or {}).get("test") or 0)
    if n_test < 1:
        raise CapbenchError("retention: the reference result does not record its test split size")
    return MARGIN_SDS * math.sqrt(acc_ref * (1 - acc_ref) / n_test)


def baseline(entry: Mapping, margin: float | None = None) -> dict:
    """What a reference probe result fixes for retention: layer, acc0, acc_ref, the margin (given, else
    `margin_of`), and whether the probe is valid."""
    layer = reference_layer(entry)
    acc0 = float(entry["layers"][0]["acc"])
    acc_ref = float(entry["layers"][layer]["acc"])
    chance = float(entry["chance"])
    margin = margin_of(entry, acc_ref) if margin is None else float(margin)
    reasons = []
    if acc_ref - chance < margin:
        reasons.append(f"reference {acc_ref:.3f} within {margin:.3f} of chance {chance:.3f}")
    if acc_ref - acc0 < margin:
        reasons.append(f"reference {acc_ref:.3f} within {margin:.3f} of its embeddings {acc0:.3f}")
    return {
        "layer": layer,
        "acc0": acc0,
        "acc_ref": acc_ref,
        "chance": chance,
        "gap": acc_ref - acc0,
        "margin": margin,
        "valid": not reasons,
        "reason": "; ".join(reasons),
    }


def _scaled(value: float | None, base: Mapping) -> float | None:
    if value is None or base["gap"] <= 0:
        return None
    return (float(value) - base["acc0"]) / base["gap"]


def probe_retention(mine: Mapping, theirs: Mapping, margin: float | None = None) -> dict:
    """Retention of one probe at one pooling (see the module doc): at the reference layer, per probe seed
    (`retentions`, the re-drawn train/dev splits on the fixed test split) and per layer (`per_layer`)."""
    base = baseline(theirs, margin)
    layer = base["layer"]
    if layer >= len(mine["layers"]):
        raise CapbenchError(
            f"retention: the model has {len(mine['layers'])} layers, the reference's layer is {layer}"
        )
    at = mine["layers"][layer]
    chance = base["chance"]
    per_seed = [_scaled(a, base) for a in at.get("accs", [at["acc"]])]
    per_seed = [r for r in per_seed if r is not None]
    return {
        **base,
        "acc": float(at["acc"]),
        "retention": _scaled(at["acc"], base),
        "retentions": per_seed,
        "retention_std": float(np.std(per_seed)) if per_seed else None,
        "chance_corrected": (float(at["acc"]) - chance) / (1 - chance) if chance < 1 else None,
        "selectivity": at.get("selectivity"),
        "control_train_acc": at.get("control_train_acc"),
        "per_layer": [_scaled(e["acc"], base) for e in mine["layers"]],
        "test_rows": _test_rows(at, theirs, layer),
    }


def _test_rows(at: Mapping, theirs: Mapping, layer: int) -> dict | None:
    """Per-row test correctness at the reference layer for a paired bootstrap (capbench.report.probe_table):
    this model's (``mine``), the reference's (``ref``) and its embeddings' (``emb``), each a list over probe
    seeds of ``pack_correct`` strings, and the test size ``n``; None for results from before they were kept."""
    mine, ref, emb = (
        at.get("test_correct"),
        theirs["layers"][layer].get("test_correct"),
        theirs["layers"][0].get("test_correct"),
    )
    n = int((theirs.get("sizes") or {}).get("test") or 0)
    if not (mine and ref and emb and n) or not len(mine) == len(ref) == len(emb):
        return None
    return {"n": n, "mine": list(mine), "ref": list(ref), "emb": list(emb)}


def retention(result: Mapping, reference_result: Mapping, margin: float | None = None) -> dict:
    """Retention of `result` against `reference_result` (the pre-trained model), per task and pooling.

    `summary[task]` is the retention at the primary pooling; `mean` averages it over the valid probes both
    results share (`excluded`: the others, with the reason); `chance_corrected` and `selectivity` give the
    same probes' chance-corrected accuracy and selectivity at the reference layer. Raises CapbenchError when
    the two results share no probe.
    """
    shared = [t for t in result["tasks"] if t in reference_result["tasks"]]
    if not shared:
        raise CapbenchError("retention: the result and its reference share no probe task")
    primary = result.get("primary_pooling", POOLINGS[0])
    tasks: dict = {}
    for task in shared:
        mine, theirs = result["tasks"][task]["pooling"], reference_result["tasks"][task]["pooling"]
        tasks[task] = {
            pooling: probe_retention(mine[pooling], theirs[pooling], margin)
            for pooling in mine
            if pooling in theirs
        }
    headline = {t: tasks[t][primary] for t in shared if primary in tasks[t]}
    valid = [t for t, entry in headline.items() if entry["valid"]]

    def _mean(key: str) -> float | None:
        values = [headline[t][key] for t in valid if headline[t].get(key) is not None]
        return float(np.mean(values)) if values else None

    protocol_keys = ("seeds", "data_seed", "sizes", "transfer_sizes", "n_words", "c_grid", "max_length")
    mine_p, ref_p = result.get("protocol", {}), reference_result.get("protocol", {})
    corpus_match = (mine_p.get("corpus") or {}).get("digest") == (ref_p.get("corpus") or {}).get("digest")
    return {
        "reference": {
            "model": reference_result.get("model"),
            "weights_hash": reference_result.get("weights_hash"),
            "pooling": primary,
            "baselines": {
                t: {
                    k: headline[t][k]
                    for k in ("layer", "acc0", "acc_ref", "chance", "gap", "margin", "valid", "reason")
                }
                for t in headline
            },
            "per_layer": {
                t: {
                    p: [e["acc"] for e in theirs["layers"]]
                    for p, theirs in reference_result["tasks"][t]["pooling"].items()
                }
                for t in shared
            },
        },
        "pooling": primary,
        "margin_sds": MARGIN_SDS if margin is None else None,
        "tasks": tasks,
        "summary": {t: entry["retention"] for t, entry in headline.items()},
        "test_rows": {t: headline[t]["test_rows"] for t in valid if headline[t].get("test_rows")},
        "valid": valid,
        "excluded": {t: entry["reason"] for t, entry in headline.items() if not entry["valid"]},
        "mean": _mean("retention"),
        "chance_corrected": _mean("chance_corrected"),
        "selectivity": _mean("selectivity"),
        "protocol_match": corpus_match and all(mine_p.get(k) == ref_p.get(k) for k in protocol_keys),
    }
