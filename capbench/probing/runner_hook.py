"""`capbench run --probes ...`: probe a finished cell's model and compare it with the pre-trained model.

The model loads through the core loader (compacted structured models included) and the corpus comes from
the run's data source (hub, hub-schema dir or GLUE TSV dir) through the core loaders, *without the cell's
own task*: a probe corpus holding the fine-tuned task's sentences, or a transfer probe on that task, would
measure the fine-tuning rather than what survived of the pre-trained encoder. The pre-trained reference and
the two floor models (capbench.probing.floors) are fitted once and cached by content: the model's identity,
the corpus digest and the options.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from capbench.data.identity import data_identity
from capbench.data.sources import split_file
from capbench.errors import CapbenchError
from capbench.models import load_classifier, load_tokenizer, resolve_model_path
from capbench.probing.corpus import DEFAULT_SPLITS, Corpus, corpus_of, corpus_tasks
from capbench.probing.floors import FLOORS
from capbench.probing.options import ProbeOptions, probe_names, split_probe_names
from capbench.probing.retention import retention
from capbench.probing.run import load_model, probe_model
from capbench.records import write_json
from capbench.tasks import get_task


def probe_options(spec) -> ProbeOptions:
    """The run's probing protocol: the default options at `--probe-sizes` train,dev,test."""
    try:
        train, dev, test = (int(part) for part in spec.probe_sizes.split(","))
    except ValueError:
        raise CapbenchError(
            f"--probe-sizes {spec.probe_sizes!r}: expected train,dev,test such as 1200,300,600"
        ) from None
    return ProbeOptions(sizes={"train": train, "dev": dev, "test": test})


_CORPORA: dict = {}


def _stamp(source) -> tuple:
    """The split files a corpus reads, by (path, size, mtime): a file edited in place reads again."""
    if source.kind == "hub":
        return ()
    files = [
        split_file(source, task, split)
        for task, splits in corpus_tasks(source, None, DEFAULT_SPLITS)
        for split in splits
    ]
    return tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files)


def corpus_configs(source, task: str | None) -> list[str]:
    """The GLUE configs of the source whose train splits form the probe corpus: all but `task`'s own."""
    own = get_task(task).config if task else None
    return [t.config for t, _ in corpus_tasks(source, None, DEFAULT_SPLITS) if t.config != own]


def probe_corpus(ctx, task: str | None = None) -> Corpus:
    """The sentences of the run's data source (the train splits of every task it holds but `task`), read
    once a process per excluded task."""
    key = (ctx.source, _stamp(ctx.source), task)
    if key not in _CORPORA:
        if len(_CORPORA) > 8:
            _CORPORA.clear()
        _CORPORA[key] = corpus_of(ctx.source, corpus_configs(ctx.source, task))
    return _CORPORA[key]


def cell_probes(spec) -> list[str]:
    """The probes of a cell, as probe_model takes them: `spec.probes` less a transfer probe on the cell's
    own task (a classifier fine-tuned on it trivially carries it)."""
    generated, transfer = split_probe_names(spec.probes)
    own = get_task(spec.task).config if getattr(spec, "task", None) else None
    return probe_names(generated, [t for t in transfer if t != own])


def result_names(probes) -> list[str]:
    """The task names a probe result holds for these probe names, in order (`transfer:sst2` is stored as
    `sst2`)."""
    generated, transfer = split_probe_names(probes)
    return [*generated, *transfer]


def _model_identity(spec) -> dict:
    identity = getattr(spec, "model_identity", None)
    if identity:
        return dict(identity)
    from capbench.model_identity import model_identity

    return model_identity(spec.model)


def reference_key(spec, probes: list[str], corpus: Corpus, options: ProbeOptions, source=None) -> str:
    """The reference cache key: what the model, corpus, transfer data and protocol *are*, not where they live."""
    _, transfer = split_probe_names(probes)
    data_facts = {t: data_identity(source, get_task(t)) for t in transfer} if source is not None else {}
    # "test-rows": references cached before per-row test correctness was kept are fitted again
    facts = [_model_identity(spec), probes, corpus.digest, options.to_dict(), data_facts, "test-rows"]
    return hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _reference(spec, ctx, probes: list[str], corpus: Corpus, options: ProbeOptions) -> tuple[dict, dict]:
    """(the pre-trained model's probe result, {floor name: its retention}), fitted once per (model, probes,
    corpus, options) and cached."""
    key = reference_key(spec, probes, corpus, options, ctx.source)
    path = Path(ctx.cache_dir) / "probe_reference" / f"{key}.json"
    if path.is_file():
        cached = json.loads(path.read_text())
        if "floors" in cached:
            return cached["reference"], cached["floors"]
    reference, floor_results = reference_and_floors(
        spec.model, probes, corpus, options, ctx.source, Path(ctx.cache_dir) / "probe_features"
    )
    floors = {name: floor_summary(retention(floor, reference)) for name, floor in floor_results.items()}
    write_json(path, {"reference": reference, "floors": floors})
    return reference, floors


def reference_and_floors(
    model: str, probes, corpus, options: ProbeOptions, data, cache_dir, log=None
) -> tuple[dict, dict[str, dict]]:
    """(the pre-trained model's probe result, {floor name: the floor model's probe result}) on the same
    probes, corpus, options and data (see capbench.probing.floors)."""
    pretrained, tokenizer = load_model(resolve_model_path(model))
    inputs = dict(probes=probes, corpus=corpus, options=options, data=data, cache_dir=cache_dir, log=log)
    reference = probe_model(pretrained, tokenizer, name=f"{model} (pre-trained)", **inputs)
    floors = {
        name: probe_model(make(pretrained), tokenizer, name=f"{model} ({name})", **inputs)
        for name, make in FLOORS.items()
    }
    return reference, floors


def floor_summary(ret: dict) -> dict:
    """What a record keeps of a floor model's retention: per probe and the means (see retention)."""
    return {k: ret[k] for k in ("summary", "mean", "chance_corrected", "selectivity", "valid", "excluded")}


def probe_record(record: dict, spec, ctx) -> dict:
    """The record's `probes` section: the cell model's probe result, its retention vs the reference, and the
    floor models' retention (`floors`)."""
    probes = cell_probes(spec)
    options = probe_options(spec)
    corpus = probe_corpus(ctx, spec.task)
    model_dir = record["model_dir"]
    model = load_classifier(model_dir, get_task(spec.task).num_labels)
    result = probe_model(
        model,
        load_tokenizer(model_dir),
        probes=probes,
        corpus=corpus,
        options=options,
        data=ctx.source,
        cache_dir=Path(ctx.cache_dir) / "probe_features",
        name=record["cell_id"],
    )
    reference, floors = _reference(spec, ctx, probes, corpus, options)
    result["retention"] = retention(result, reference)
    result["floors"] = floors
    return result
