"""Probe a model on every layer: `probe_model(model, tokenizer, probes, corpus, options)`.

It returns a JSON-serialisable dict:

    {"model", "weights_hash", "n_layers", "layer_names", "poolings", "primary_pooling", "protocol",
     "tasks": {name: {"kind": "generated" | "transfer", "classes",
                      "pooling": {pooling: {"layers": [{"layer", "acc", "std", "accs", "dev_acc", "C",
                                                        "control_acc", "control_std", "selectivity", ...}],
                                            "best_layer", "best", "chance", "control_chance", ...}}}},
     "summary": {name: {"pooling", "best_layer", "acc", "std", "control_acc", "selectivity"}},
     "timings": {...}}

Control fields exist for generated probes only. `retention(result, reference_result)` (probing.retention)
divides accuracies (best layer and per layer, every pooling); the run record keeps it at
`record["probes"]["retention"]`. Models load through the core loader (capbench.models), so every supported
family and compacted structured models probe alike.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from capbench.data.sources import DataSource
from capbench.errors import CapbenchError
from capbench.probing.corpus import Corpus, corpus_of, describe
from capbench.probing.features import extract_features, weights_hash
from capbench.probing.options import KNOWN_PROBES, ProbeOptions, split_probe_names
from capbench.probing.probe import probe_layers
from capbench.probing.retention import layer_names, summarise
from capbench.probing.tasks import PROBE_TASKS, ProbeTask, make_task
from capbench.probing.transfer import make_transfer_task


def load_model(name_or_path: str | Path, tokenizer=None):
    """(model, tokenizer) from a hub id or directory, by the core loader (`capbench.models.load_classifier`):
    a saved classifier keeps its head (which feature extraction ignores, see features.encoder_of), a bare
    encoder gets a fresh one, a compacted structured model loads with its per-layer shapes."""
    from capbench.models import load_classifier, load_config, load_tokenizer, resolve_model_path

    path = resolve_model_path(str(name_or_path))
    model = load_classifier(path, load_config(path).num_labels)
    return model.eval(), tokenizer if tokenizer is not None else load_tokenizer(path)


def _model_and_name(model_or_path, tokenizer, name: str | None):
    if isinstance(model_or_path, (str, Path)):
        model, tokenizer = load_model(model_or_path, tokenizer)
        return model, tokenizer, name or str(model_or_path)
    if tokenizer is None:
        raise CapbenchError("probe_model: a model object needs its tokenizer")
    config_name = getattr(getattr(model_or_path, "config", None), "_name_or_path", "")
    return model_or_path, tokenizer, name or str(config_name or type(model_or_path).__name__)


def _is_data(value) -> bool:
    """A GLUE source: a DataSource or a directory (a text file or a sentence list is only a corpus)."""
    return isinstance(value, DataSource) or (
        isinstance(value, (str, os.PathLike)) and Path(value).expanduser().is_dir()
    )


def build_tasks(
    generated: Sequence[str], transfer: Sequence[str], corpus: Corpus | None, data, options: ProbeOptions
) -> list[tuple[str, ProbeTask]]:
    """[(kind, task)]: generated probes from the corpus sentences, transfer probes from the GLUE data."""
    tasks = []
    for name in generated:
        task = make_task(
            name, list(corpus.sentences), options.data_seed, options.sizes, **options.task_options(name)
        )
        tasks.append(("generated", task))
    for name in transfer:
        tasks.append(("transfer", make_transfer_task(name, data, options.data_seed, options.transfer_sizes)))
    return tasks


def probe_task(
    model, tokenizer, task: ProbeTask, options: ProbeOptions, cache_dir, weights: str, say
) -> dict:
    """Features of one task's texts (cached), then a probe per layer and pooling; timings and cache hits."""
    tick = time.perf_counter()
    info: dict = {}
    say(f"features: {task.name} ({len(task.texts)} texts)")
    features = extract_features(
        model,
        tokenizer,
        task.texts,
        options.poolings,
        max_length=options.max_length,
        batch_size=options.batch_size,
        cache_dir=cache_dir,
        weights=weights,
        info=info,
    )
    tock = time.perf_counter()
    pooled = {}
    for pooling in options.poolings:
        say(f"probes: {task.name} {pooling}")
        pooled[pooling] = probe_layers(
            features[pooling], task, options.seeds, options.c_grid, options.max_iter
        )
    return {
        "pooling": pooled,
        "n_layers": features[options.poolings[0]].shape[0],
        "cached": all(info["cached"].values()) if info.get("cached") else False,
        "feature_seconds": tock - tick,
        "probe_seconds": time.perf_counter() - tock,
    }


def protocol(options: ProbeOptions, corpus: Corpus | None, data, transfer: Sequence[str]) -> dict:
    """The protocol a result records (and retention compares)."""
    return {
        "seeds": list(options.seeds),
        "data_seed": options.data_seed,
        "sizes": dict(options.sizes),
        "transfer_sizes": dict(options.transfer_sizes),
        "n_words": options.n_words,
        "control": options.control,
        "c_grid": list(options.c_grid),
        "max_iter": options.max_iter,
        "max_length": options.max_length,
        "corpus": corpus.info() if corpus is not None else {},
        "data_dir": describe(data) if transfer else None,
    }


def probe_model(
    model_or_path,
    tokenizer=None,
    probes: Sequence[str] = PROBE_TASKS,
    corpus: Corpus | Sequence[str] | DataSource | str | Path | None = None,
    options: ProbeOptions | None = None,
    *,
    data: DataSource | str | Path | None = None,
    cache_dir: str | Path | None = None,
    name: str | None = None,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Probe every layer of a model (object or hub id / directory) on generated and transfer probes.

    `probes` names generated probes and transfer probes (`transfer:sst2` or `sst2`). `corpus` is a list of
    sentences, a Corpus, a text file (one sentence per line), a GLUE data dir or a DataSource; when it is
    None the sentences of `data` are used. Transfer probes read `data` (or `corpus` if it is GLUE data).
    Generated tasks come from `options.data_seed`; every seed re-partitions them (see ProbeTask.resplit).
    """
    started = time.perf_counter()
    options = options or ProbeOptions()
    say = log or (lambda message: None)
    generated, transfer = split_probe_names(probes)
    if not generated and not transfer:
        raise CapbenchError("no probes requested; give at least one of " + ", ".join(KNOWN_PROBES))
    model, tokenizer, name = _model_and_name(model_or_path, tokenizer, name)
    if data is None and _is_data(corpus):
        data = corpus
    sentences = None  # the Corpus generated probes are drawn from
    if generated:
        if corpus is None and data is None:
            raise CapbenchError("generated probes need a corpus: give --probe-corpus FILE or --data-dir DIR")
        sentences = corpus_of(corpus if corpus is not None else data, options.corpus_configs)
    if transfer and data is None:
        raise CapbenchError("transfer probes need a GLUE data dir: give --data-dir DIR")
    tasks = build_tasks(generated, transfer, sentences, data, options)
    result = probe_all(model, tokenizer, tasks, options, cache_dir, say)
    result["protocol"] = protocol(options, sentences, data, transfer)
    result["timings"]["total_seconds"] = round(time.perf_counter() - started, 3)
    return {"model": name, **result}


def probe_all(
    model, tokenizer, tasks: list[tuple[str, ProbeTask]], options: ProbeOptions, cache_dir, say
) -> dict:
    """Every task probed (see probe_task), assembled into a result (less its model name and protocol)."""
    weights = weights_hash(model)
    out_tasks, cached = {}, {}
    seconds = {"feature_seconds": 0.0, "probe_seconds": 0.0}
    n_layers = 0
    for kind, task in tasks:
        done = probe_task(model, tokenizer, task, options, cache_dir, weights, say)
        out_tasks[task.name] = {"kind": kind, "classes": list(task.classes), "pooling": done["pooling"]}
        cached[task.name], n_layers = done["cached"], done["n_layers"]
        for key in seconds:
            seconds[key] += done[key]
    primary = options.poolings[0]
    return {
        "weights_hash": weights[:20],
        "n_layers": n_layers,
        "layer_names": layer_names(n_layers),
        "poolings": list(options.poolings),
        "primary_pooling": primary,
        "protocol": None,  # filled by probe_model; kept here so the keys keep their order
        "tasks": out_tasks,
        "summary": summarise(out_tasks, primary),
        "features_cached": cached,
        "timings": {
            "features_seconds": round(seconds["feature_seconds"], 3),
            "probe_seconds": round(seconds["probe_seconds"], 3),
        },
    }
