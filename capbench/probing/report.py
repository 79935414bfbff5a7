"""Probe a model on every layer, compute retention against a reference, render tables and layer plots.

`probe_model(...)` returns a JSON-serialisable dict:

    {"model", "weights_hash", "n_layers", "layer_names", "poolings", "primary_pooling", "protocol",
     "tasks": {name: {"kind": "generated" | "transfer", "classes",
                      "pooling": {pooling: {"layers": [{"layer", "acc", "std", "accs", "dev_acc", "C",
                                                        "control_acc", "control_std", "selectivity", ...}],
                                            "best_layer", "best", "chance", "control_chance", ...}}}},
     "summary": {name: {"pooling", "best_layer", "acc", "std", "control_acc", "selectivity"}},
     "timings": {...}}

Control fields exist for generated probes only. `retention(result, reference_result)` divides accuracies
(best layer and per layer, every pooling); the run record keeps it at `record["probes"]["retention"]`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from capbench.errors import CapbenchError
from capbench.probing.corpus import corpus_digest, load_corpus
from capbench.probing.features import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_MAX_LENGTH,
    POOLINGS,
    extract_features,
    weights_hash,
)
from capbench.probing.probe import C_GRID, DEFAULT_SEEDS, MAX_ITER, probe_layers
from capbench.probing.tasks import DEFAULT_CONTROL, DEFAULT_N_WORDS, DEFAULT_SIZES, PROBE_TASKS, make_task
from capbench.probing.transfer import DEFAULT_TRANSFER_SIZES, TRANSFER_TASKS, make_transfer_task

KNOWN_PROBES = PROBE_TASKS + TRANSFER_TASKS


def split_probe_names(names: Iterable[str]) -> tuple[list[str], list[str]]:
    """(generated probes, transfer probes); a transfer probe may be written `sst2` or `transfer:sst2`."""
    generated: list[str] = []
    transfer: list[str] = []
    for raw in names:
        name = raw.strip()
        if not name:
            continue
        bare = name.removeprefix("transfer:")
        if name in PROBE_TASKS:
            target = generated
        elif bare in TRANSFER_TASKS:
            target, name = transfer, bare
        else:
            raise CapbenchError(
                f"unknown probe {raw!r}; known probes: {', '.join(PROBE_TASKS)} "
                f"and transfer probes {', '.join(TRANSFER_TASKS)}"
            )
        if name not in target:
            target.append(name)
    return generated, transfer


def _resolve(name_or_path: str) -> str:
    try:
        from capbench.models import resolve_model_path
    except ImportError:
        return str(name_or_path)
    return resolve_model_path(str(name_or_path))


def load_model(name_or_path: str | Path, tokenizer=None):
    """(model, tokenizer) from a hub id or directory. A saved classifier (e.g. a model `capbench run` saved)
    loads with its head, which feature extraction then ignores (see features.encoder_of)."""
    from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, AutoTokenizer

    path = _resolve(str(name_or_path))
    try:
        config = AutoConfig.from_pretrained(path)
        classifier = any(a.endswith("ForSequenceClassification") for a in (config.architectures or []))
        model = (AutoModelForSequenceClassification if classifier else AutoModel).from_pretrained(path)
        if tokenizer is None:
            tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise CapbenchError(f"--model {name_or_path}: could not load ({str(exc).splitlines()[0]})") from exc
    return model.eval(), tokenizer


def _task_options(name: str, n_words: int, control: str) -> dict:
    return {"n_words": n_words, "control": control} if name == "word_content" else {"control": control}


def probe_model(
    model_or_path,
    tokenizer=None,
    probes: Sequence[str] = PROBE_TASKS,
    corpus: Sequence[str] | str | Path | None = None,
    cache_dir: str | Path | None = None,
    seeds: Sequence[int] = DEFAULT_SEEDS,
    *,
    transfer: Sequence[str] = (),
    data_dir: str | Path | None = None,
    poolings: Sequence[str] = POOLINGS,
    sizes: Mapping[str, int] | None = None,
    transfer_sizes: Mapping[str, int] | None = None,
    data_seed: int = 0,
    n_words: int = DEFAULT_N_WORDS,
    control: str = DEFAULT_CONTROL,
    corpus_configs: Sequence[str] | None = None,
    max_length: int = DEFAULT_MAX_LENGTH,
    batch_size: int = DEFAULT_BATCH_SIZE,
    c_grid: Sequence[float] = C_GRID,
    max_iter: int = MAX_ITER,
    name: str | None = None,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Probe every layer of a model (object or hub id / directory) on generated and transfer probes.

    `corpus` is a list of sentences, a text file (one sentence per line) or a GLUE data dir; when it is
    None the sentences of `data_dir` are used. Transfer probes read `data_dir` (or `corpus` if it is a dir).
    Generated tasks come from `data_seed`; every seed in `seeds` re-partitions them (see ProbeTask.resplit).
    """
    started = time.perf_counter()
    say = log or (lambda message: None)
    generated, transfer_names = split_probe_names([*probes, *(f"transfer:{t}" for t in transfer)])
    if not generated and not transfer_names:
        raise CapbenchError("no probes requested; give at least one of " + ", ".join(KNOWN_PROBES))
    if isinstance(model_or_path, (str, Path)):
        name = name or str(model_or_path)
        model, tokenizer = load_model(model_or_path, tokenizer)
    else:
        model = model_or_path
        if tokenizer is None:
            raise CapbenchError("probe_model: a model object needs its tokenizer")
        name = name or str(
            getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__
        )
    poolings = list(poolings)
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise CapbenchError("probe_model: give at least one seed")

    corpus_info: dict = {}
    sentences: Sequence[str] | None = None
    if isinstance(corpus, (str, Path)) and Path(corpus).expanduser().is_dir() and data_dir is None:
        data_dir = corpus
    if generated:
        source = corpus if corpus is not None else data_dir
        if source is None:
            raise CapbenchError("generated probes need a corpus: give --probe-corpus FILE or --data-dir DIR")
        if isinstance(source, (str, Path)):
            sentences = load_corpus(source, corpus_configs)
            corpus_info["source"] = str(source)
        else:
            sentences = list(source)
            corpus_info["source"] = "sentences"
        corpus_info.update(n_sentences=len(sentences), digest=corpus_digest(sentences))
    if transfer_names and data_dir is None:
        raise CapbenchError("transfer probes need a GLUE data dir: give --data-dir DIR")

    tasks = []
    for task_name in generated:
        tasks.append(
            (
                "generated",
                make_task(
                    task_name, sentences, data_seed, sizes, **_task_options(task_name, n_words, control)
                ),
            )
        )
    for task_name in transfer_names:
        tasks.append(("transfer", make_transfer_task(task_name, data_dir, data_seed, transfer_sizes)))

    digest = weights_hash(model) if cache_dir is not None else None
    out_tasks: dict = {}
    cached: dict = {}
    feature_seconds = probe_seconds = 0.0
    n_layers = 0
    for kind, task in tasks:
        tick = time.perf_counter()
        info: dict = {}
        say(f"features: {task.name} ({len(task.texts)} texts)")
        features = extract_features(
            model,
            tokenizer,
            task.texts,
            poolings,
            max_length=max_length,
            batch_size=batch_size,
            cache_dir=cache_dir,
            weights=digest,
            info=info,
        )
        cached[task.name] = all(info.get("cached", {}).values()) if info.get("cached") else False
        tock = time.perf_counter()
        feature_seconds += tock - tick
        entry = {"kind": kind, "classes": list(task.classes), "pooling": {}}
        for pooling in poolings:
            say(f"probes: {task.name} {pooling}")
            entry["pooling"][pooling] = probe_layers(features[pooling], task, seeds, c_grid, max_iter)
            n_layers = features[pooling].shape[0]
        probe_seconds += time.perf_counter() - tock
        out_tasks[task.name] = entry

    primary = poolings[0]
    return {
        "model": name,
        "weights_hash": (digest or weights_hash(model))[:20],
        "n_layers": n_layers,
        "layer_names": layer_names(n_layers),
        "poolings": poolings,
        "primary_pooling": primary,
        "protocol": {
            "seeds": seeds,
            "data_seed": data_seed,
            "sizes": dict(DEFAULT_SIZES if sizes is None else sizes),
            "transfer_sizes": dict(transfer_sizes or DEFAULT_TRANSFER_SIZES),
            "n_words": n_words,
            "control": control,
            "c_grid": list(c_grid),
            "max_iter": max_iter,
            "max_length": max_length,
            "corpus": corpus_info,
            "data_dir": str(data_dir) if transfer_names else None,
        },
        "tasks": out_tasks,
        "summary": summarise(out_tasks, primary),
        "features_cached": cached,
        "timings": {
            "features_seconds": round(feature_seconds, 3),
            "probe_seconds": round(probe_seconds, 3),
            "total_seconds": round(time.perf_counter() - started, 3),
        },
    }


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


# ---------------------------------------------------------------------------------------------- text tables


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
            ret = None
            if retention_result is not None:
                ret = retention_result["tasks"].get(task, {}).get(pooling, {}).get("per_layer")
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
                lines.append("  ".join(f"{c:>7s}" for c in cells) + mark)
    if retention_result is not None:
        lines.append(
            f"\nretention vs {retention_result['reference']['model']} (best layer, {retention_result['pooling']}): "
            + ", ".join(f"{t} {_fmt(v)}" for t, v in retention_result["summary"].items())
            + f"; mean {_fmt(retention_result['mean'])}"
        )
    return "\n".join(lines) + "\n"


def _sparsity_label(value: float) -> str:
    return f"{100 * float(value):g}%"


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


# ---------------------------------------------------------------------------------------------- plots


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
        tasks = {r["spec"].get("task") for r in items}
        methods = sorted({str(r["spec"].get("method")) for r in items}, key=lambda m: (m != "dense", m))
        sparsities = sorted({float(r["spec"].get("sparsity", 0.0)) for r in items})
        for r in sorted(
            items,
            key=lambda r: (methods.index(str(r["spec"].get("method"))), float(r["spec"].get("sparsity", 0))),
        ):
            spec = r["spec"]
            label = f"{spec.get('method')} {_sparsity_label(spec.get('sparsity', 0.0))}"
            if len(tasks) > 1:
                label += f" ({spec.get('task')})"
            style = {
                "color": f"C{methods.index(str(spec.get('method'))) % 10}",
                "alpha": 0.45
                + 0.55 * (sparsities.index(float(spec.get("sparsity", 0.0))) + 1) / len(sparsities),
                "linestyle": ["-", "--", "-.", ":"][sparsities.index(float(spec.get("sparsity", 0.0))) % 4],
            }
            series.append((label, r["probes"], style))
            if reference is None and "retention" in r["probes"]:
                reference = dict(r["probes"]["retention"]["reference"])
    else:
        for i, item in enumerate(items):
            label = str(item.get("label") or item.get("model", f"model {i}"))
            series.append((label, item, {"color": f"C{i % 10}"}))
            if reference is None and "retention" in item:
                reference = dict(item["retention"]["reference"])
    return series, reference


def plot_layer_curves(
    records_or_results,
    path: str | Path,
    pooling: str | None = None,
    probes: Sequence[str] | None = None,
    controls: bool | None = None,
) -> Path:
    """Per-layer probe test accuracy, one panel per probe task: each record (method @ sparsity) or result
    as a line, the pre-trained reference dashed black (from a retention), chance dotted grey; control
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
    fig = Figure(figsize=(4.2 * ncols, 3.2 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax in axes.flat[len(names) :]:
        ax.set_visible(False)
    for ax, task in zip(axes.flat, names, strict=False):
        chance = None
        for label, result, style in series:
            entry = result["tasks"].get(task, {}).get("pooling", {}).get(pooling)
            if entry is None:
                continue
            xs = list(range(len(entry["layers"])))
            ax.plot(
                xs,
                [layer["acc"] for layer in entry["layers"]],
                marker="o",
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
                ax.plot(
                    range(len(refs)), refs, color="black", linestyle="--", linewidth=1.2, label="pre-trained"
                )
        if chance is not None:
            ax.axhline(chance, color="grey", linestyle=":", linewidth=0.8)
        ax.set_title(f"{task} ({pooling})", fontsize=10)
        ax.set_xlabel("layer")
        ax.set_ylabel("probe test accuracy")
        ax.grid(alpha=0.3)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncols=min(4, len(labels)), fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
