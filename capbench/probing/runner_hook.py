"""`capbench run --probes ...`: probe a finished cell's model and compare it with the pre-trained model.

The model loads through the core loader (compacted structured models included) and the corpus comes from
the run's data source (hub, hub-schema dir or GLUE TSV dir) through the core loaders. The pre-trained
reference is fitted once and cached by content: the model's identity, the corpus digest and the options.
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
from capbench.probing.options import ProbeOptions, split_probe_names
from capbench.probing.retention import retention
from capbench.probing.run import probe_model
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


def probe_corpus(ctx) -> Corpus:
    """The sentences of the run's data source (the train splits of every task it holds), read once a process."""
    key = (ctx.source, _stamp(ctx.source))
    if key not in _CORPORA:
        _CORPORA.clear()  # one source a run
        _CORPORA[key] = corpus_of(ctx.source)
    return _CORPORA[key]


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
    facts = [_model_identity(spec), probes, corpus.digest, options.to_dict(), data_facts]
    return hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _reference(spec, ctx, probes: list[str], corpus: Corpus, options: ProbeOptions) -> dict:
    """The pre-trained model's probe result, fitted once per (model, probes, corpus, options) and cached."""
    path = (
        Path(ctx.cache_dir)
        / "probe_reference"
        / f"{reference_key(spec, probes, corpus, options, ctx.source)}.json"
    )
    if path.is_file():
        return json.loads(path.read_text())
    result = probe_model(
        resolve_model_path(spec.model),
        probes=probes,
        corpus=corpus,
        options=options,
        data=ctx.source,
        cache_dir=Path(ctx.cache_dir) / "probe_features",
        name=f"{spec.model} (pre-trained)",
    )
    write_json(path, result)
    return result


def probe_record(record: dict, spec, ctx) -> dict:
    """The record's `probes` section: the cell model's probe result and its retention vs the reference."""
    probes = list(spec.probes)
    options = probe_options(spec)
    corpus = probe_corpus(ctx)
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
    result["retention"] = retention(result, _reference(spec, ctx, probes, corpus, options))
    return result
