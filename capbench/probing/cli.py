"""`capbench probe`: linear probes on every layer of any model, with the pre-trained model as reference."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from capbench.errors import CapbenchError
from capbench.probing.probe_task import DEFAULT_CONTROL, DEFAULT_N_WORDS

DEFAULT_REFERENCE_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
PRUNED_ZERO_FRACTION = 0.05


def _ints(text: str, flag: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise CapbenchError(f"{flag} {text!r}: expected comma-separated integers, e.g. {flag} 0,1,2") from exc


def _names(text: str | None) -> list[str]:
    return [x.strip() for x in (text or "").split(",") if x.strip()]


def _default_cache_dir() -> Path:
    return Path(os.environ.get("CAPBENCH_CACHE", Path.home() / ".cache" / "capbench")) / "probe_features"


def _default_data_dir() -> Path | None:
    for candidate in (Path("..") / "shared" / "glue", Path("shared") / "glue"):
        if candidate.is_dir():
            return candidate
    return None


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "probe",
        help="linear probes (sentlen, word_content, bigram_shift, GLUE transfer) on every layer of a model",
        description="Probe the frozen features of every layer; with a reference, report retention.",
    )
    p.add_argument(
        "--model", required=True, help="hub id or local directory (e.g. a model `capbench run` saved)"
    )
    p.add_argument(
        "--reference",
        default="auto",
        help="pre-trained model to probe as the reference row for retention; 'auto' (default): the record's "
        "spec.model for a model saved by `capbench run`, else the default model if --model looks pruned; 'none'",
    )
    p.add_argument(
        "--probes",
        default="default",
        help="comma-separated probe names; 'default': bigram_shift and transfer qnli, qqp (docs/probes.md)",
    )
    p.add_argument(
        "--probe-corpus", help="text file with one sentence per line (default: the --data-dir sentences)"
    )
    p.add_argument(
        "--data-dir",
        help="GLUE data dir (hub-schema jsonl or glue_data TSV): the corpus (unless --probe-corpus) and transfer probes; default ../shared/glue",
    )
    p.add_argument(
        "--corpus-configs", help="GLUE configs whose sentences form the corpus (default: all in --data-dir)"
    )
    p.add_argument("--transfer", default="", help="GLUE tasks for transfer probes, e.g. sst2,cola,rte")
    p.add_argument("--seeds", default="0,1,2", help="probe seeds (re-partitions of each task)")
    p.add_argument(
        "--pooling", default="mean,cls", help="poolings: mean, cls (the first one is the headline)"
    )
    p.add_argument("--sizes", default="1200,300,600", help="train,dev,test examples per generated probe")
    p.add_argument(
        "--transfer-sizes", default="2000,500,1000", help="train,dev,test examples per transfer probe"
    )
    p.add_argument(
        "--words", type=int, default=DEFAULT_N_WORDS, help="number of word_content words (classes)"
    )
    p.add_argument(
        "--control",
        choices=("chosen", "first"),
        default=DEFAULT_CONTROL,
        help=f"control word per sentence: the first word or a generator-chosen word (default {DEFAULT_CONTROL})",
    )
    p.add_argument("--data-seed", type=int, default=0, help="seed of the generated probe data")
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument(
        "--cache-dir", type=Path, default=None, help="feature cache (default $CAPBENCH_CACHE/probe_features)"
    )
    p.add_argument(
        "--floors",
        action="store_true",
        help="also probe the reference's floor models (random weights; encoder linears zeroed) and print "
        "the validity table: pre-trained, random weights and zeroed encoder retention per probe",
    )
    p.add_argument("--out", help="write the result JSON here")
    p.add_argument("--plot", help="write per-layer curves here (.png, .svg or .pdf)")
    p.add_argument("--quiet", action="store_true", help="no progress messages")
    p.set_defaults(handler=cmd_probe)


def _sizes(text: str, flag: str) -> dict[str, int]:
    values = _ints(text, flag)
    if len(values) != 3:
        raise CapbenchError(f"{flag} {text!r}: expected train,dev,test, e.g. {flag} 1200,300,600")
    return dict(zip(("train", "dev", "test"), values, strict=True))


def _record_spec(model_dir: Path, key: str) -> str | None:
    """spec[key] of the record `capbench run` wrote beside a saved model (<out>/models/<cell> ->
    records/<cell>.json), or None."""
    record = model_dir.parent.parent / "records" / f"{model_dir.name}.json"
    try:
        return json.loads(record.read_text())["spec"][key]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _record_model(model_dir: Path) -> str | None:
    """spec.model of the record `capbench run` wrote beside a saved model."""
    return _record_spec(model_dir, "model")


def fine_tuned_task(model: str) -> str | None:
    """The task a model saved by `capbench run` was fine-tuned on (its record's spec.task), else None."""
    local = Path(model).expanduser()
    return _record_spec(local.resolve(), "task") if local.is_dir() else None


def looks_pruned(model) -> bool:
    """True when at least 5% of the encoder's linear weights are exactly zero."""
    import torch

    from capbench.probing.features import encoder_of

    zeros = total = 0
    for module in encoder_of(model).modules():
        if isinstance(module, torch.nn.Linear):
            zeros += int((module.weight == 0).sum())
            total += module.weight.numel()
    return total > 0 and zeros / total >= PRUNED_ZERO_FRACTION


def _same_architecture(model, reference: str) -> bool:
    from transformers import AutoConfig

    from capbench.models import resolve_model_path

    try:
        config = AutoConfig.from_pretrained(resolve_model_path(reference))
    except (OSError, ValueError, CapbenchError):
        return False
    keys = ("model_type", "hidden_size", "num_hidden_layers", "vocab_size")
    return all(getattr(config, k, None) == getattr(model.config, k, None) for k in keys)


def choose_reference(args, model) -> str | None:
    choice = (args.reference or "auto").strip()
    if choice.lower() == "none":
        return None
    if choice.lower() != "auto":
        return choice
    local = Path(args.model).expanduser()
    if local.is_dir():
        spec_model = _record_model(local.resolve())
        if spec_model:
            return spec_model
    if looks_pruned(model):
        if _same_architecture(model, DEFAULT_REFERENCE_MODEL):
            return DEFAULT_REFERENCE_MODEL
        print(
            "capbench probe: the model looks pruned but no reference is known; give --reference MODEL for retention",
            file=sys.stderr,
        )
    return None


def _probes(args, task: str | None = None) -> list[str]:
    """The probes of the command line; without a transfer probe on `task` (the model's own fine-tuning
    task), as `capbench run --probes` does."""
    from capbench.probing.options import probe_names, split_probe_names
    from capbench.tasks import get_task

    generated, transfer = split_probe_names(probe_names(_names(args.probes), _names(args.transfer)))
    own = get_task(task).config if task else None
    return probe_names(generated, [t for t in transfer if t != own])


def _corpus_inputs(args) -> tuple[str | None, str | None]:
    """(corpus file, data dir) of the command line, checked before any model loads."""
    corpus = args.probe_corpus
    if corpus is not None and not Path(corpus).expanduser().is_file():
        raise CapbenchError(
            f"--probe-corpus {corpus}: no such file; give a text file with one sentence per line"
        )
    data_dir = args.data_dir or _default_data_dir()
    if data_dir is not None and not Path(data_dir).expanduser().is_dir():
        raise CapbenchError(f"--data-dir {data_dir}: no such directory")
    if corpus is None and data_dir is None:
        raise CapbenchError(
            "no probe corpus: give --probe-corpus FILE or --data-dir DIR (a local GLUE jsonl dir)"
        )
    return corpus, data_dir


def _options(args, task: str | None = None, data_dir=None):
    """The probing protocol of the command line (`ProbeOptions`); a GLUE corpus leaves out `task`'s
    sentences unless --corpus-configs names the configs."""
    from capbench.probing.options import ProbeOptions

    poolings = _names(args.pooling)
    bad = [p for p in poolings if p not in ("mean", "cls")]
    if bad or not poolings:
        raise CapbenchError(f"--pooling {args.pooling!r}: choose from mean, cls")
    return ProbeOptions(
        seeds=_ints(args.seeds, "--seeds"),
        poolings=poolings,
        sizes=_sizes(args.sizes, "--sizes"),
        transfer_sizes=_sizes(args.transfer_sizes, "--transfer-sizes"),
        data_seed=args.data_seed,
        n_words=args.words,
        control=args.control,
        corpus_configs=_names(args.corpus_configs) or _corpus_configs(task, data_dir),
        max_length=args.max_length,
        batch_size=args.batch_size,
    )


def _corpus_configs(task: str | None, data_dir) -> list[str] | None:
    if task is None or data_dir is None:
        return None
    from capbench.data.sources import detect_source
    from capbench.probing.runner_hook import corpus_configs

    return corpus_configs(detect_source(data_dir), task)


def _write_outputs(args, result: dict, reference_result: dict | None) -> None:
    """The per-layer tables on stdout; the result JSON (--out) and the layer curves (--plot)."""
    from capbench.probing.plots import plot_layer_curves
    from capbench.probing.report import format_layer_table

    if reference_result is not None:
        sys.stdout.write("reference (pre-trained)\n" + format_layer_table(reference_result) + "\n")
    sys.stdout.write(format_layer_table(result, result.get("retention")))
    if args.out:
        out = Path(args.out)
        from capbench.records import atomic_write_text, dumps_json

        atomic_write_text(out, dumps_json(result, str(out)))
    if args.plot:
        # the reference curve comes from result["retention"] (dashed black)
        plot_layer_curves({args.model: result}, args.plot)


def cmd_probe(args) -> int:
    from capbench.probing.retention import retention
    from capbench.probing.run import load_model, probe_model

    started = time.perf_counter()
    task = fine_tuned_task(args.model)
    probes = _probes(args, task)
    corpus, data_dir = _corpus_inputs(args)
    options = _options(args, task, data_dir if corpus is None else None)
    if args.floors and (args.reference or "").strip().lower() == "none":
        raise CapbenchError("--floors needs a reference model: give --reference MODEL, not none")
    log = None if args.quiet else (lambda message: print(f"[probe] {message}", file=sys.stderr, flush=True))
    inputs = dict(
        probes=probes,
        corpus=corpus,
        options=options,
        data=data_dir,
        cache_dir=args.cache_dir or _default_cache_dir(),
        log=log,
    )
    model, tokenizer = load_model(args.model)
    reference = choose_reference(args, model)
    if log:
        log(f"model {args.model}" + (f", reference {reference}" if reference else ""))
    result = probe_model(model, tokenizer, name=args.model, **inputs)
    reference_result = None
    if args.floors and reference is None:
        raise CapbenchError("--floors needs a reference model: give --reference MODEL")
    if reference is not None:
        from capbench.probing.runner_hook import floor_summary, reference_and_floors

        floors: dict = {}
        if args.floors:
            reference_result, floors = reference_and_floors(reference, **inputs)
        else:
            ref_model, ref_tokenizer = load_model(reference)
            reference_result = probe_model(ref_model, ref_tokenizer, name=reference, **inputs)
        result["retention"] = retention(result, reference_result)
        if floors:
            result["floors"] = {n: floor_summary(retention(f, reference_result)) for n, f in floors.items()}
    _write_outputs(args, result, reference_result)
    if args.floors and reference_result is not None:
        from capbench.probing.report import render_validity_table

        sys.stdout.write("\nvalidity (pre-trained reference and floor models):\n\n")
        sys.stdout.write(render_validity_table(reference_result, floors))
    if log:
        log(f"done in {time.perf_counter() - started:.1f}s")
    return 0
