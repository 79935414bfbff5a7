"""`capbench run --probes ...`: probe a finished cell's model and compare it with the pre-trained model."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from capbench.errors import CapbenchError
from capbench.models import load_classifier, load_tokenizer, resolve_model_path
from capbench.probing.report import probe_model, retention
from capbench.records import write_json
from capbench.tasks import get_task


def probe_corpus_dir(ctx) -> str:
    if ctx.source.kind != "local":
        raise CapbenchError(
            "--probes builds its probing corpus from a local GLUE copy in the hub schema; pass --data-dir DIR"
        )
    return ctx.source.root


def _sizes(spec) -> dict[str, int]:
    try:
        train, dev, test = (int(part) for part in spec.probe_sizes.split(","))
    except ValueError:
        raise CapbenchError(
            f"--probe-sizes {spec.probe_sizes!r}: expected train,dev,test such as 1200,300,600"
        ) from None
    return {"train": train, "dev": dev, "test": test}


def _reference(spec, ctx, probes: list[str]) -> dict:
    """The pre-trained model's probe result, fitted once per (model, probes, corpus) and cached."""
    corpus = probe_corpus_dir(ctx)
    key = hashlib.sha256(json.dumps([spec.model, probes, corpus, spec.probe_sizes]).encode()).hexdigest()[:20]
    path = Path(ctx.cache_dir) / "probe_reference" / f"{key}.json"
    if path.is_file():
        return json.loads(path.read_text())
    result = probe_model(
        resolve_model_path(spec.model),
        probes=probes,
        corpus=corpus,
        cache_dir=Path(ctx.cache_dir) / "probe_features",
        name=f"{spec.model} (pre-trained)",
        sizes=_sizes(spec),
    )
    write_json(path, result)
    return result


def probe_record(record: dict, spec, ctx) -> dict:
    probes = list(spec.probes)
    model_dir = record["model_dir"]
    model = load_classifier(model_dir, get_task(spec.task).num_labels)
    result = probe_model(
        model,
        load_tokenizer(model_dir),
        probes=probes,
        corpus=probe_corpus_dir(ctx),
        cache_dir=Path(ctx.cache_dir) / "probe_features",
        name=record["cell_id"],
        sizes=_sizes(spec),
    )
    result["retention"] = retention(result, _reference(spec, ctx, probes))
    return result
