"""Registered measurements: one registration adds a record section; probes read the core loaders and data."""

import json
from pathlib import Path

import pytest

from capbench.cli import main
from capbench.measure import MEASUREMENTS, missing_measurements, register_measurement
from capbench.records import load_records
from tests.test_runner import run_args


@pytest.fixture
def layer_count():
    """The name of a measurement a test registers; unregistered afterwards."""
    yield "layer_count"
    MEASUREMENTS.unregister("layer_count")


def count_layers(record, spec, ctx):
    """A new measurement in a few lines: the number of encoder layers of the cell's saved model."""
    config = json.loads(Path(record["model_dir"], "config.json").read_text())
    return {"layers": config["num_hidden_layers"]}


def test_builtin_measurements_are_registered():
    assert MEASUREMENTS.names()[:2] == ["probes", "speed"]
    with pytest.raises(Exception, match="unknown measurement 'sped'; known measurements: probes, speed"):
        MEASUREMENTS.get("sped")


def test_a_registered_measurement_reaches_finished_records(
    layer_count, tiny_model_dir, tiny_glue, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "run"
    args = run_args(
        tiny_model_dir, tiny_glue, out, tmp_path / "cache", "--methods", "magnitude", "--sparsity", "0.5"
    )
    assert main(args) == 0  # the first run predates the measurement
    assert all(layer_count not in r for r in load_records(out))
    register_measurement(
        layer_count,
        needs=lambda spec, record: layer_count not in record,
        measure=count_layers,
    )
    capsys.readouterr()
    assert main([*args, "--dry-run"]) == 0
    plan = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in plan[:2]] == ["measure", "measure"]
    assert all(line.endswith(f"(finished; missing: {layer_count})") for line in plan[:2])

    from capbench import runner

    monkeypatch.setattr(runner, "run_cell", lambda spec, ctx: pytest.fail(f"retrained {spec.cell_id}"))
    assert main(args) == 0
    records = load_records(out)
    assert [r[layer_count] for r in records] == [{"layers": 2}, {"layers": 2}]
    assert all(r["status"] == "done" for r in records)
    assert "0 run, 2 already finished" in capsys.readouterr().out
    assert not missing_measurements(_spec_of(records[0]), records[0])


def _spec_of(record):
    from types import SimpleNamespace

    spec = record["spec"]
    return SimpleNamespace(
        probes=tuple(spec.get("probes") or ()), speed=spec.get("speed"), method=spec["method"]
    )


def write_tiny_tsv(hub_dir: Path, root: Path) -> Path:
    """The tiny hub-schema GLUE copy rewritten in the glue_data TSV layout (RTE, SST-2)."""
    rte_labels = ("entailment", "not_entailment")
    for config, directory, header in (
        ("rte", "RTE", ("index", "sentence1", "sentence2", "label")),
        ("sst2", "SST-2", ("sentence", "label")),
    ):
        (root / directory).mkdir(parents=True, exist_ok=True)
        for split, name in (("train", "train.tsv"), ("validation", "dev.tsv")):
            lines = ["\t".join(header)]
            for line in (hub_dir / config / f"{split}.jsonl").read_text().splitlines():
                row = json.loads(line)
                if config == "rte":
                    lines.append(
                        f"{row['idx']}\t{row['sentence1']}\t{row['sentence2']}\t{rte_labels[row['label']]}"
                    )
                else:
                    lines.append(f"{row['sentence']}\t{row['label']}")
            (root / directory / name).write_text("\n".join(lines) + "\n")
    return root


def test_probes_run_with_a_tsv_data_dir(tiny_model_dir, tiny_glue, tmp_path, capsys):
    from capbench.data.sources import detect_source
    from capbench.probing.corpus import source_sentences

    tsv = write_tiny_tsv(tiny_glue, tmp_path / "glue_data")
    assert detect_source(tsv).kind == "tsv"
    # the same sentences, whichever layout holds them
    assert source_sentences(tsv) == source_sentences(tiny_glue)
    out = tmp_path / "run"
    args = run_args(
        tiny_model_dir, tsv, out, tmp_path / "cache", "--methods", "magnitude", "--sparsity", "0.5"
    )
    assert main([*args, "--probes", "bigram_shift,rte,sst2", "--probe-sizes", "30,15,15"]) == 0
    records = load_records(out)
    assert len(records) == 2
    for record in records:
        # an rte cell: no transfer probe on rte, and the probe corpus is the other tasks' (sst2's) sentences
        assert set(record["probes"]["tasks"]) == {"bigram_shift", "sst2"}
        corpus = record["probes"]["protocol"]["corpus"]
        assert corpus["source"] == str(tsv.resolve())
        assert corpus["n_sentences"] == len(source_sentences(tsv, ["sst2"]))
        assert set(record["probes"]["retention"]["summary"]) == {"bigram_shift", "sst2"}
        assert set(record["probes"]["floors"]) == {"random weights", "zeroed encoder"}
    capsys.readouterr()
    assert main(["leaderboard", "--runs", str(out)]) == 0
    assert "## Linear probes" in capsys.readouterr().out


def test_probe_reference_cache_is_keyed_by_content(tiny_glue, tmp_path):
    import shutil
    from types import SimpleNamespace

    from capbench.data.sources import detect_source
    from capbench.probing.corpus import corpus_of
    from capbench.probing.runner_hook import probe_options, reference_key

    spec = SimpleNamespace(model="m", model_identity={"weights_sha256": "abc"}, probe_sizes="60,30,30")
    moved = tmp_path / "elsewhere"
    shutil.copytree(tiny_glue, moved)
    options = probe_options(spec)
    here = reference_key(spec, ["sentlen"], corpus_of(detect_source(tiny_glue)), options)
    there = reference_key(spec, ["sentlen"], corpus_of(detect_source(moved)), options)
    assert here == there  # another path, same sentences
    (moved / "sst2" / "train.jsonl").write_text(
        '{"sentence": "one two three four five", "label": 0, "idx": 0}\n'
    )
    assert reference_key(spec, ["sentlen"], corpus_of(detect_source(moved)), options) != here


def test_a_compacted_first_order_model_is_probed(tiny_model_dir, tiny_glue, tmp_path):
    out = tmp_path / "run"
    args = run_args(
        tiny_model_dir, tiny_glue, out, tmp_path / "cache", "--methods", "first_order", "--sparsity", "0.5"
    )
    assert main([*args, "--probes", "bigram_shift", "--probe-sizes", "30,15,15"]) == 0
    pruned = next(r for r in load_records(out) if r["spec"]["method"] == "first_order")
    config = json.loads(Path(pruned["model_dir"], "config.json").read_text())
    assert config.get("capbench_structure"), "first_order should save a compacted model"
    assert set(pruned["probes"]["tasks"]) == {"bigram_shift"}
    layers = pruned["probes"]["tasks"]["bigram_shift"]["pooling"]["mean"]["layers"]
    assert len(layers) == config["num_hidden_layers"] + 1

    from capbench.models import load_classifier
    from capbench.probing.features import weights_hash
    from capbench.probing.run import load_model

    model, _ = load_model(pruned["model_dir"])  # the core loader: per-layer shapes restored
    assert pruned["probes"]["weights_hash"] == weights_hash(load_classifier(pruned["model_dir"], 2))[:20]
    assert weights_hash(model) == weights_hash(load_classifier(pruned["model_dir"], 2))


@pytest.mark.slow
def test_offline_model_probes_on_the_raw_glue_tsv(offline_model_dir, shared_glue_raw, tmp_path, all_threads):
    """The offline MiniLM probed on the glue_raw TSV files: a real corpus through the core TSV reader."""
    from capbench.probing import ProbeOptions, probe_model
    from capbench.probing.corpus import corpus_of

    corpus = corpus_of(shared_glue_raw)
    assert len(corpus.sentences) > 10_000 and Path(corpus.source).resolve() == shared_glue_raw.resolve()
    options = ProbeOptions(seeds=(0,), poolings=("mean",), sizes={"train": 300, "dev": 120, "test": 120})
    result = probe_model(
        str(offline_model_dir),
        probes=["sentlen", "sst2"],
        corpus=corpus,
        options=options,
        data=shared_glue_raw,
        cache_dir=tmp_path / "features",
    )
    assert result["n_layers"] == 7 and result["protocol"]["corpus"]["digest"] == corpus.digest
    # sentence length is linearly decodable from MiniLM: 6 balanced length bins (chance 1/6); the test split
    # has 120 rows (sd about 0.045), and the dev-chosen layer's test accuracy moved from above 0.5 to 0.475
    # with the library versions of 2026-12-01, so the bar is twice chance, about 3 sd under that
    assert result["summary"]["sentlen"]["acc"] > 2 / 6
    assert result["summary"]["sst2"]["acc"] > 0.6


def test_probes_run_with_the_hub_source(tiny_model_dir, tiny_glue, tmp_path, monkeypatch):
    """No --data-dir: the run, its probing corpus and its transfer probes all read the hub loader."""
    import datasets

    from capbench.tasks import all_tasks

    by_config = {task.config: task for task in all_tasks().values()}
    sentences = [
        json.loads(line)["sentence"] for line in (tiny_glue / "sst2" / "train.jsonl").read_text().splitlines()
    ]
    calls = []

    def fake_load_dataset(path, name=None, split=None, **kwargs):
        calls.append((name, split))
        if name in ("rte", "sst2"):  # the tiny copy, in the hub schema
            file = tiny_glue / name / f"{split}.jsonl"
            rows = [json.loads(line) for line in file.read_text().splitlines()]
        else:  # every other task: a few rows of its own fields
            fields = by_config[name].text_fields
            rows = [
                {**{f: text for f in fields}, "label": 0, "idx": i} for i, text in enumerate(sentences[:8])
            ]
        return datasets.Dataset.from_list(rows)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    monkeypatch.delenv("CAPBENCH_DATA_DIR", raising=False)
    out = tmp_path / "run"
    args = run_args(
        tiny_model_dir, tiny_glue, out, tmp_path / "cache", "--methods", "magnitude", "--sparsity", "0.5"
    )
    at = args.index("--data-dir")
    del args[at : at + 2]
    assert main([*args, "--probes", "bigram_shift,sst2", "--probe-sizes", "30,15,15"]) == 0
    records = load_records(out)
    assert len(records) == 2 and all(set(r["probes"]["tasks"]) == {"bigram_shift", "sst2"} for r in records)
    assert records[0]["probes"]["protocol"]["corpus"]["source"] == "Hugging Face hub"
    assert ("cola", "train") in calls and ("sst2", "validation") in calls  # corpus and transfer probe


def test_a_finished_cell_whose_model_is_gone_is_trained_again_to_measure_it(
    tiny_model_dir, tiny_glue, tmp_path, capsys, monkeypatch
):
    """Saved models are not versioned with the records: a record that arrives on a new machine without its
    model is trained again when a measurement needs the model, instead of crashing the run; otherwise it
    stays finished."""
    import shutil

    from capbench import runner

    out = tmp_path / "run"
    args = run_args(
        tiny_model_dir, tiny_glue, out, tmp_path / "cache", "--methods", "magnitude", "--sparsity", "0.5"
    )
    assert main(args) == 0
    pruned = next(r for r in load_records(out) if r["spec"]["method"] == "magnitude")
    shutil.rmtree(pruned["model_dir"])
    capsys.readouterr()
    assert main([*args, "--dry-run"]) == 0  # nothing asks for the model: still finished
    assert capsys.readouterr().out.splitlines()[-1].endswith("0 to run, 2 already finished (dry run)")

    probed = [*args, "--probes", "bigram_shift", "--probe-sizes", "30,15,15"]
    assert main([*probed, "--dry-run"]) == 0
    plan = {line[10:].split()[0]: line for line in capsys.readouterr().out.splitlines()[:-1]}
    assert plan[pruned["cell_id"]].startswith("to run")
    assert f"its saved model is gone or was replaced ({pruned['model_dir']})" in plan[pruned["cell_id"]]
    dense_id = next(cell for cell in plan if cell != pruned["cell_id"])
    assert plan[dense_id].startswith("measure")  # the dense model (the cached teacher) is there

    trained = []
    real_run_cell = runner.run_cell
    monkeypatch.setattr(
        runner, "run_cell", lambda spec, ctx: trained.append(spec.cell_id) or real_run_cell(spec, ctx)
    )
    assert main(probed) == 0
    assert trained == [pruned["cell_id"]]
    assert (
        f"cell {pruned['cell_id']}: finished, but its saved model is gone or was replaced"
        in capsys.readouterr().out
    )
    records = load_records(out)
    assert all(r["status"] == "done" and set(r["probes"]["tasks"]) == {"bigram_shift"} for r in records)
    assert Path(pruned["model_dir"]).is_dir()
    assert main([*probed, "--dry-run"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].endswith("0 to run, 2 already finished (dry run)")


def test_a_dense_cell_whose_cached_teacher_was_retrained_is_evaluated_again_before_probing(
    tiny_model_dir, tiny_glue, tmp_path, capsys
):
    """A dense cell's model is the cached teacher; on another machine the cache holds a retrained teacher
    with other weights. Probing it would attach another model's probes to the record's accuracy, so the
    cell is evaluated again on the teacher that is there (and a record without the teacher's hash, which
    cannot be checked, likewise)."""
    from capbench.records import record_path, write_json

    out = tmp_path / "run"
    args = run_args(
        tiny_model_dir, tiny_glue, out, tmp_path / "cache", "--methods", "magnitude", "--sparsity", "0.5"
    )
    assert main(args) == 0
    dense = next(r for r in load_records(out) if r["spec"]["method"] == "dense")
    probed = [*args, "--probes", "bigram_shift", "--probe-sizes", "30,15,15"]
    capsys.readouterr()
    assert main([*probed, "--dry-run"]) == 0
    assert all(line.startswith("measure") for line in capsys.readouterr().out.splitlines()[:-1])

    for teacher_hash in ("0" * 20, None):  # another teacher's weights; an older record without the hash
        changed = {**dense, "teacher": {**dense["teacher"], "weights_sha256": teacher_hash}}
        write_json(record_path(out, dense["cell_id"]), changed)
        assert main([*probed, "--dry-run"]) == 0
        plan = capsys.readouterr().out
        assert f"to run    {dense['cell_id']}  (finished, but its saved model is gone or was replaced" in plan
    assert main(probed) == 0
    again = next(r for r in load_records(out) if r["spec"]["method"] == "dense")
    assert (
        again["teacher"]["cached"]
        and again["teacher"]["weights_sha256"] == dense["teacher"]["weights_sha256"]
    )
    assert set(again["probes"]["tasks"]) == {"bigram_shift"}
    assert main([*probed, "--dry-run"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].endswith("0 to run, 2 already finished (dry run)")


def test_speed_taken_on_a_busy_machine_without_a_quiet_window_is_taken_again():
    """Before capbench.quiet a grid's speed measurements ran while the other worker trained (busy); such a
    reading is taken again. A busy reading from inside a quiet window stands, so a run always ends."""
    from types import SimpleNamespace

    from capbench.measure import needs_speed

    spec = SimpleNamespace(speed=True, method="magnitude")
    assert needs_speed(spec, {})
    assert not needs_speed(spec, {"speed": {"busy": False}})
    assert needs_speed(spec, {"speed": {"busy": True}})
    assert MEASUREMENTS.get("speed").label(spec, {"speed": {"busy": True}}) == (
        "speed (its last timing ran on a busy machine)"
    )
    assert not needs_speed(
        spec, {"speed": {"busy": True, "quiet_window": {"requested": True, "idle": False}}}
    )
    assert not needs_speed(SimpleNamespace(speed=False, method="magnitude"), {})
    assert not needs_speed(SimpleNamespace(speed=True, method="dense"), {})
