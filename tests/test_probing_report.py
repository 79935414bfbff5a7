"""probe_model results, retention, the probing leaderboard table and per-layer plots."""

import json
import random

import pytest

from capbench.errors import CapbenchError
from capbench.probing import ProbeOptions, plot_layer_curves, probe_model, render_probe_table, retention
from capbench.probing.report import format_layer_table
from capbench.testing import TINY_WORDS, tiny_bert, tiny_tokenizer

SIZES = {"train": 60, "dev": 30, "test": 30}


def tiny_corpus(n: int = 900, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(TINY_WORDS) for _ in range(rng.randint(5, 28))) for _ in range(n)]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    tokenizer = tiny_tokenizer(tmp_path_factory.mktemp("tok"))
    common = dict(
        probes=["sentlen", "bigram_shift"],
        corpus=tiny_corpus(),
        cache_dir=tmp_path_factory.mktemp("cache"),
        options=ProbeOptions(seeds=(0, 1), sizes=SIZES, poolings=("mean",), c_grid=(0.1, 1.0)),
    )
    reference = probe_model(tiny_bert(seed=0), tokenizer, name="pretrained", **common)
    pruned = probe_model(tiny_bert(seed=1), tokenizer, name="pruned", **common)
    return reference, pruned


def test_probe_model_result_is_json_and_complete(results):
    reference, _ = results
    json.dumps(reference)
    assert reference["n_layers"] == 3 and reference["layer_names"] == ["emb", "1", "2"]
    for task in ("sentlen", "bigram_shift"):
        entry = reference["tasks"][task]["pooling"]["mean"]
        assert len(entry["layers"]) == 3
        layer = entry["layers"][1]
        assert {"acc", "std", "control_acc", "selectivity", "dev_acc", "C"} <= set(layer)
        assert layer["selectivity"] == pytest.approx(layer["acc"] - layer["control_acc"])
        assert reference["summary"][task]["best_layer"] == entry["best_layer"]
    assert (
        reference["tasks"]["sentlen"]["pooling"]["mean"]["best"]["acc"] > 0.4
    )  # length is easy even at random init


def test_retention_is_one_for_the_reference_itself(results):
    reference, pruned = results
    own = retention(reference, reference)
    assert own["mean"] == 1.0 and set(own["summary"].values()) == {1.0}
    assert all(r == 1.0 for t in own["tasks"].values() for p in t.values() for r in p["per_layer"])
    assert own["protocol_match"]
    other = retention(pruned, reference)
    best = pruned["tasks"]["sentlen"]["pooling"]["mean"]["best"]["acc"]
    ref_best = reference["tasks"]["sentlen"]["pooling"]["mean"]["best"]["acc"]
    assert other["summary"]["sentlen"] == pytest.approx(best / ref_best)
    assert "retention" in format_layer_table(pruned, other)


def records(results):
    reference, pruned = results
    out = []
    for method, sparsity in (("magnitude", 0.5), ("magnitude", 0.9), ("cap", 0.9)):
        out.append(
            {
                "status": "done",
                "spec": {"task": "rte", "method": method, "sparsity": sparsity},
                "probes": {**pruned, "retention": retention(pruned, reference)},
            }
        )
    out.append({"status": "failed", "spec": {"task": "rte", "method": "movement", "sparsity": 0.9}})
    return out


def test_render_probe_table_rows_methods_columns_sparsities(results):
    table = render_probe_table(records(results))
    lines = table.splitlines()
    assert lines[0] == "| method | 50% retention | 50% selectivity | 90% retention | 90% selectivity |"
    assert lines[2].startswith("| pre-trained | 1.000 |")
    assert any(line.startswith("| cap | - | - | ") for line in lines)
    assert any(line.startswith("| magnitude | ") for line in lines) and "movement" not in table
    assert render_probe_table([{"status": "done", "spec": {}}]) == ""


def test_plot_layer_curves_png_and_svg(results, tmp_path):
    png = plot_layer_curves(records(results), tmp_path / "curves.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
    reference, pruned = results
    svg = plot_layer_curves({"pretrained": reference, "pruned": pruned}, tmp_path / "curves.svg")
    assert "<svg" in svg.read_text()
    with pytest.raises(CapbenchError, match=".png, .svg"):
        plot_layer_curves(records(results), tmp_path / "curves.gif")


def test_unknown_probe_lists_the_known_ones():
    with pytest.raises(CapbenchError, match="known probes: sentlen, word_content, bigram_shift"):
        probe_model(tiny_bert(), None, probes=["depth"])
