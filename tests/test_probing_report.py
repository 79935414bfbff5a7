"""probe_model results, retention, the probing leaderboard table and per-layer plots."""

import json
import random

import numpy as np
import pytest

from capbench.errors import CapbenchError
from capbench.probing import ProbeOptions, plot_layer_curves, probe_model, render_probe_table, retention
from capbench.probing.probe import pack_correct
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


def test_retention_of_the_reference_itself_is_one_where_it_is_defined(results):
    reference, pruned = results
    own = retention(reference, reference, margin=-1.0)  # tiny random models: accept every probe
    for task, value in own["summary"].items():
        base = own["reference"]["baselines"][task]
        assert value == pytest.approx(1.0) if base["gap"] > 0 else value is None
    assert own["protocol_match"]
    other = retention(pruned, reference, margin=-1.0)
    assert "retention" in format_layer_table(pruned, other)


def _layers(accs, devs=None, **extra):
    devs = devs or accs
    return [
        {"layer": i, "acc": a, "accs": [a], "dev_acc": d, **extra} for i, (a, d) in enumerate(zip(accs, devs))
    ]


def _result(per_task: dict) -> dict:
    return {
        "primary_pooling": "mean",
        "tasks": {
            t: {"pooling": {"mean": {"layers": layers, "chance": 0.5, "sizes": {"test": 10000}}}}
            for t, layers in per_task.items()
        },
        "summary": {},
    }


def test_retention_is_what_the_encoder_adds_at_the_reference_layer():
    reference = _result(
        {"bigram_shift": _layers([0.50, 0.70, 0.80, 0.75]), "sentlen": _layers([0.72, 0.70, 0.66, 0.60])}
    )
    # the model's own best layer (1, by dev) is ignored: it is read at the reference's layer 2
    model = _result(
        {
            "bigram_shift": _layers([0.50, 0.66, 0.65, 0.52], devs=[0.5, 0.7, 0.6, 0.5]),
            "sentlen": _layers([0.72, 0.71, 0.71, 0.71]),
        }
    )
    out = retention(model, reference)
    bigram = out["tasks"]["bigram_shift"]["mean"]
    assert bigram["layer"] == 2 and bigram["acc0"] == 0.5 and bigram["acc_ref"] == 0.8
    assert bigram["retention"] == pytest.approx((0.65 - 0.5) / 0.3)
    assert bigram["chance_corrected"] == pytest.approx((0.65 - 0.5) / 0.5)
    assert bigram["per_layer"][1] == pytest.approx((0.66 - 0.5) / 0.3)
    # sentlen: the reference's encoder adds nothing over its embeddings, so it cannot measure retention
    assert out["valid"] == ["bigram_shift"] and "embeddings" in out["excluded"]["sentlen"]
    assert out["mean"] == pytest.approx(bigram["retention"])
    assert bigram["margin"] == pytest.approx(5 * (0.8 * 0.2 / 10000) ** 0.5)
    # a model at its embeddings scores 0, whatever its raw accuracy
    flat = retention(_result({"bigram_shift": _layers([0.5, 0.5, 0.5, 0.5])}), reference)
    assert flat["mean"] == pytest.approx(0.0)


def _probe_section(value: float, floors=(0.05, 0.02)) -> dict:
    return {
        "tasks": {"bigram_shift": {}},
        "summary": {},
        "retention": {
            "pooling": "mean",
            "valid": ["bigram_shift"],
            "excluded": {"sentlen": "reference 0.700 within 0.098 of its embeddings 0.717"},
            "mean": value,
            "chance_corrected": value / 2,
            "selectivity": 0.1,
            "reference": {"baselines": {"bigram_shift": {"acc_ref": 0.65, "chance": 0.5}}},
        },
        "floors": {"random weights": {"mean": floors[0]}, "zeroed encoder": {"mean": floors[1]}},
    }


def records(values: dict) -> list[dict]:
    """Done records of rte with probe sections: {(method, sparsity): [retention per seed]}."""
    out = []
    for (method, sparsity), per_seed in values.items():
        for seed, value in enumerate(per_seed):
            out.append(
                {
                    "status": "done",
                    "cell_id": f"{method}-{sparsity}-{seed}",
                    "spec": {"task": "rte", "method": method, "sparsity": sparsity, "seed": seed},
                    "probes": _probe_section(value),
                }
            )
    out.append({"status": "failed", "spec": {"task": "rte", "method": "movement", "sparsity": 0.9}})
    return out


def test_probe_table_shows_reference_floors_spread_and_paired_calls():
    table = render_probe_table(
        records(
            {
                ("magnitude", 0.5): [0.80, 0.82, 0.81],
                ("magnitude", 0.9): [0.40, 0.45, 0.50],
                ("cap_magnitude", 0.9): [0.60, 0.66, 0.70],
                ("random", 0.9): [0.44, 0.40, 0.52],
            }
        )
    )
    lines = table.splitlines()
    header = next(line for line in lines if line.startswith("| row"))
    assert "50% retention" in header and "90% chance-corr." in header and "90% select." in header
    assert any(line.startswith("| pre-trained | 1.000 |") for line in lines)
    assert any(line.startswith("| floor: random weights | 0.050 |") for line in lines)
    assert any(line.startswith("| floor: zeroed encoder | 0.020 |") for line in lines)
    assert "| magnitude | 0.810 ± 0.010 (3) |" in table
    assert "movement" not in table and "sentlen: reference 0.700" in table
    assert "rte 90%: cap_magnitude − magnitude: +0.203" in table and "cap_magnitude keeps more" in table
    assert "rte 90%: random − magnitude: +0.003" in table and "not distinguishable from 0" in table
    assert render_probe_table([{"status": "done", "spec": {}}]) == ""


def test_probe_table_never_calls_a_single_seed_and_flags_outdated_records():
    recs = records({("magnitude", 0.9): [0.4], ("cap_magnitude", 0.9): [0.9]})
    old = {"status": "done", "cell_id": "old", "spec": {"task": "rte", "method": "random", "sparsity": 0.9}}
    old["probes"] = {"tasks": {}, "summary": {}, "retention": {"summary": {"sentlen": 1.02}, "mean": 1.02}}
    table = render_probe_table([*recs, old])
    assert "n = 1 seed, no interval; not called" in table
    assert "1 record(s) hold probe results from before" in table and "1.020" not in table


def test_probe_table_pairs_one_seed_by_test_rows_when_records_keep_them():
    """A single fine-tuning seed gets an interval from the probe's test rows (paired bootstrap)."""
    rng = np.random.default_rng(0)
    n = 600
    ref, emb = [rng.random(n) < 0.8 for _ in range(3)], [rng.random(n) < 0.5 for _ in range(3)]
    ones = np.ones(n, dtype=int)

    def kept(p: float) -> dict:
        mine = [rng.random(n) < p for _ in range(3)]
        return {
            "n": n,
            **{
                w: [pack_correct(v.astype(int), ones) for v in vs]
                for w, vs in (("mine", mine), ("ref", ref), ("emb", emb))
            },
        }

    recs = records({("magnitude", 0.9): [0.4], ("cap_magnitude", 0.9): [0.9], ("random", 0.9): [0.41]})
    for record, p in zip(recs, (0.6, 0.78, 0.6)):
        record["probes"]["retention"]["test_rows"] = {"bigram_shift": kept(p)}
    table = render_probe_table(recs)
    line = next(x for x in table.splitlines() if "cap_magnitude − magnitude" in x)
    assert "95% bootstrap over probe test rows, paired, 1 seed" in line and "cap_magnitude keeps more" in line
    line = next(x for x in table.splitlines() if "random − magnitude" in x)
    assert "95% bootstrap over probe test rows" in line and "not distinguishable from 0" in line


def _plot_records(results):
    reference, pruned = results
    out = []
    for method, sparsity in (("magnitude", 0.5), ("magnitude", 0.9), ("cap", 0.9)):
        probes = {**pruned, "retention": retention(pruned, reference, margin=-1.0), "floors": {}}
        out.append(
            {
                "status": "done",
                "spec": {"task": "rte", "method": method, "sparsity": sparsity},
                "probes": probes,
            }
        )
    return out


def test_plot_layer_curves_png_and_svg(results, tmp_path):
    png = plot_layer_curves(_plot_records(results), tmp_path / "curves.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
    reference, pruned = results
    svg = plot_layer_curves({"pretrained": reference, "pruned": pruned}, tmp_path / "curves.svg")
    assert "<svg" in svg.read_text()
    with pytest.raises(CapbenchError, match=".png, .svg"):
        plot_layer_curves(_plot_records(results), tmp_path / "curves.gif")


def test_unknown_probe_lists_the_known_ones():
    with pytest.raises(CapbenchError, match="known probes: sentlen, word_content, bigram_shift"):
        probe_model(tiny_bert(), None, probes=["depth"])


def test_layer_curves_plot_one_line_per_row_and_sparsity_averaged_over_seeds():
    """Three seeds of one cell are one line (their mean, labelled n=3), named as the tables name the row;
    another sparsity of the same row is its own line."""
    from capbench.probing.plots import _series

    def record(seed, sparsity, accs):
        layers = [{"acc": a} for a in accs]
        return {
            "status": "done",
            "spec": {"task": "mnli", "method": "magnitude", "kd": True, "sparsity": sparsity, "seed": seed},
            "probes": {"tasks": {"qnli": {"pooling": {"mean": {"layers": layers, "chance": 0.5}}}}},
        }

    recs = [
        record(0, 0.97, [0.5, 0.6]),
        record(1, 0.97, [0.5, 0.7]),
        record(2, 0.97, [0.5, 0.8]),
        record(0, 0.9, [0.6, 0.9]),
    ]
    series, _ = _series(recs)
    assert [label for label, _, _ in series] == ["magnitude +KD 90%", "magnitude +KD 97% (n=3)"]
    mean = series[1][1]["tasks"]["qnli"]["pooling"]["mean"]["layers"]
    assert [layer["acc"] for layer in mean] == pytest.approx([0.5, 0.7])
