"""bench_model's protocol on tiny models and a fake clock: calibration apart from the reported measurement,
the input layout each layer is calibrated on, the free-linears ceiling, machine load and pinned threads."""

from dataclasses import replace

import pytest
import torch
from speed_fakes import Costs, FakeClock, FakeProbe, busy_probe, idle_probe, prune

from capbench.speed.bench import bench_model
from capbench.speed.ceiling import FreeLinear, attainable, free_linears
from capbench.speed.kernels import iter_encoder_linears
from capbench.speed.load import busy_verdict
from capbench.speed.options import BenchOptions
from capbench.speed.report import render_model_table
from capbench.testing import random_batch, tiny_bert

FAKE = BenchOptions(
    token_counts=["1x8"],
    model_token_counts=["2x8"],
    repeats=5,
    min_repeats=5,
    warmup=1,
    layer_budget=None,
    model_budget=None,
    breakdown=False,
    compact=False,
    threads=1,
)


def _bench(monkeypatch, probe=None, options=FAKE, **costs):
    """bench_model of a 90%-sparse tiny BERT against its dense twin, every cost charged to a fake clock, on
    what reads as a 1-core machine (the measurement's one thread uses every core)."""
    monkeypatch.setattr("capbench.speed.bench.available_cores", lambda: 1)
    clock = FakeClock()
    charge = Costs(monkeypatch, clock, **costs)
    dense = charge.hook_model(charge.hook_dense(tiny_bert()))
    pruned = charge.hook_model(prune(tiny_bert(), 0.9))
    speed = bench_model(pruned, dense, options, clock=clock, load_probe=probe or idle_probe())
    return speed, charge


def test_reported_numbers_come_from_a_measurement_after_the_choice(monkeypatch):
    # calibration: CSR 4x faster per layer; in the whole model CSR costs twice as much as it did then
    speed, charge = _bench(monkeypatch, dense=1.0, csr=0.25, csr_in_model=0.5, other=3.0)
    assert {layer["best"]["1x8"] for layer in speed["layers"]} == {"csr"}
    assert speed["layers"][0]["token_counts"]["1x8"]["results"]["csr"]["speedup"] == pytest.approx(4.0)
    phases = [phase for phase, _ in charge.events]
    first_forward = charge.events.index(("model", "model forward"))
    assert "model" not in phases[:first_forward] and "calibration" not in phases[first_forward:]
    row = speed["model"]["2x8"]
    # dense 12 x 1 + 3 = 15 s; pruned 12 x 0.5 + 3 = 9 s; free linears 3 s
    assert row["models"]["pruned"]["speedup"] == pytest.approx(15 / 9)
    assert row["models"]["dense"]["latency_s"]["median"] == pytest.approx(15.0)
    assert row["rounds"] == 5 and row["stop"]["reason"] in ("spread", "max_rounds")
    assert speed["summary"]["measured_speedup"] == pytest.approx(15 / 9)


def test_ceiling_and_attainable_arithmetic_on_a_fake_clock(monkeypatch):
    speed, _ = _bench(monkeypatch, dense=1.0, csr=0.25, other=3.0)
    s = speed["summary"]
    assert s["ceiling"] == pytest.approx(5.0)  # 15 s dense / 3 s with the linears free
    assert s["linear_fraction"] == pytest.approx(0.8)
    sparsity = s["sparsity"]
    expected = 1 / (0.2 + 0.8 * (1 - sparsity))
    assert s["attainable_speedup"] == pytest.approx(expected)
    assert s["measured_speedup"] == pytest.approx(2.5)  # 15 / (12 x 0.25 + 3)
    assert s["fraction_of_attainable"] == pytest.approx(2.5 / expected)
    assert s["theoretical_speedup"] == pytest.approx(1 / (1 - sparsity))  # kept in the record
    assert s["measured_speedup_ci"] == [pytest.approx(2.5), pytest.approx(2.5)]
    assert speed["schema"] == 2 and speed["settings"]["model_rounds"]["max_rounds"] == 5


def test_attainable_formula():
    assert attainable(5.0, 0.9) == {
        "linear_fraction": pytest.approx(0.8),
        "attainable_speedup": pytest.approx(1 / 0.28),
    }
    assert attainable(5.0, 0.0)["attainable_speedup"] == pytest.approx(1.0)
    assert attainable(0.9, 0.9)["linear_fraction"] == 0.0  # a ceiling below 1 is noise: nothing to gain
    assert attainable(None, 0.9) == {"linear_fraction": None, "attainable_speedup": None}


def test_ffn_output_is_calibrated_on_the_layout_its_ffn_input_hands_over(monkeypatch):
    speed, charge = _bench(monkeypatch, dense=1.0, csr=0.25)  # CSR wins everywhere
    by_name = {layer["name"]: layer["token_counts"]["1x8"] for layer in speed["layers"]}
    ffn_in = by_name["bert.encoder.layer.0.intermediate.dense"]
    ffn_out = by_name["bert.encoder.layer.0.output.dense"]
    assert ffn_in["best"] == "csr" and ffn_in["output_layout"] == "column-major"
    assert ffn_out["input_layout"] == "column-major"
    assert by_name["bert.encoder.layer.0.attention.self.query"]["input_layout"] == "row-major"
    # the tensors themselves: the FFN output's (32 x 64) dense kernel saw 8 tokens with strides (1, 8)
    calibration = [(o, i, st) for o, i, st in charge.inputs if st in ((1, 8), (64, 1), (32, 1))]
    assert {st for o, i, st in calibration if (o, i) == (32, 64)} == {(1, 8)}
    assert {st for o, i, st in calibration if (o, i) == (64, 32)} == {(32, 1)}


def test_ffn_output_gets_a_row_major_input_when_its_ffn_input_stays_dense(monkeypatch):
    speed, _ = _bench(monkeypatch, dense=1.0, csr=2.0)  # CSR slower: dense everywhere
    assert {layer["best"]["1x8"] for layer in speed["layers"]} == {"dense"}
    assert {layer["token_counts"]["1x8"]["input_layout"] for layer in speed["layers"]} == {"row-major"}


def test_a_win_inside_the_noise_does_not_choose_the_format():
    from capbench.speed.kernels import _best

    noisy = {"dense": {"speedup": 1.0}, "csr": {"speedup": 1.10, "speedup_ci": [0.95, 1.3]}}
    assert _best(noisy, 1.02) == ("dense", 1.0)
    clear = {"dense": {"speedup": 1.0}, "csr": {"speedup": 1.10, "speedup_ci": [1.05, 1.2]}}
    assert _best(clear, 1.02) == ("csr", 1.10)


def test_free_linears_model_returns_outputs_of_the_right_shape():
    model = tiny_bert()
    free = free_linears(model)
    assert all(isinstance(m, FreeLinear) for _, m in iter_encoder_linears(free))
    assert not any(isinstance(m, FreeLinear) for _, m in iter_encoder_linears(model))  # a copy
    batch = random_batch(model)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    calls = []
    linear = free.bert.encoder.layer[0].intermediate.dense
    linear.linear.register_forward_hook(lambda *args: calls.append(1))
    with torch.inference_mode():
        want = model(**inputs).logits
        first, second = free(**inputs).logits, free(**inputs).logits
    assert first.shape == second.shape == want.shape
    assert len(calls) == 1  # the real linear ran once for this shape; later calls return its output
    assert linear(torch.zeros(3, 5, 32)).shape == (3, 5, 64)


def test_busy_flag_flips_with_a_busy_load_reading(monkeypatch):
    speed, _ = _bench(monkeypatch, probe=busy_probe())
    assert speed["busy"] is True and speed["summary"]["busy"] is True
    assert "other processes used 1.00 cores (limit 0.25; 1 threads on 1 cores)" in speed["busy_reason"]
    assert speed["load"]["phases"]["measurement"]["other_cores"] == pytest.approx(1.0)
    assert "BUSY machine" in render_model_table(speed)


def test_busy_flag_stays_off_with_an_idle_load_reading(monkeypatch):
    speed, _ = _bench(monkeypatch, probe=idle_probe())
    assert speed["busy"] is False and speed["summary"]["busy"] is False
    assert speed["load"]["phases"]["calibration"]["other_cores"] == pytest.approx(0.02)
    assert "BUSY" not in render_model_table(speed)


def test_busy_verdict_threshold_and_fallbacks():
    # 2 threads on 2 cores: anything above a quarter core is busy
    assert busy_verdict({"other_cores": 0.3}, threads=2, cores=2)[0] is True
    assert busy_verdict({"other_cores": 0.1}, threads=2, cores=2)[0] is False
    # 1 thread on 2 cores: a process on the free core still shares memory bandwidth and caches
    assert busy_verdict({"other_cores": 1.0}, threads=1, cores=2)[0] is True
    assert busy_verdict({"other_cores": 0.1}, threads=1, cores=2)[0] is False
    # no /proc/stat: the load average after, less our threads
    no_stat = FakeProbe(proc_stat=False, loadavg=(3.5, 1.0, 0.5))
    from capbench.speed.load import LoadMonitor

    reading = LoadMonitor(no_stat).start().stop()
    assert reading["other_cores"] is None
    busy, why = busy_verdict(reading, threads=2, cores=2)
    assert busy is True and "load average 3.50" in why
    assert busy_verdict({"other_cores": None, "loadavg_after": None}, 2, 2)[0] is None


def test_this_machine_gives_a_load_reading():
    from capbench.speed.load import LoadMonitor, LoadProbe

    reading = LoadMonitor().start().stop()
    assert reading["wall_s"] > 0 and reading["own_cores"] >= 0
    if LoadProbe().busy_cpu_seconds() is None:
        pytest.skip("no /proc/stat here")
    assert reading["other_cores"] is not None and reading["other_cores"] >= 0


def test_threads_are_pinned_recorded_and_restored(monkeypatch):
    seen = []
    torch.set_num_threads(3)
    monkeypatch.setattr(
        "capbench.speed.bench.bench_linears", lambda *a, **k: seen.append(torch.get_num_threads()) or []
    )
    options = BenchOptions(threads=None, model_token_counts=[], compact=False)
    speed = bench_model(prune(tiny_bert()), None, options, load_probe=idle_probe())
    assert seen == [1] and torch.get_num_threads() == 3  # the default, 1; the caller's count restored
    assert speed["settings"]["threads"] == 1 and speed["settings"]["threads_source"] == "default"
    assert speed["machine"]["threads"] == 1
    seen.clear()
    speed = bench_model(prune(tiny_bert()), None, replace(options, threads=2), load_probe=idle_probe())
    assert seen == [2] and speed["settings"]["threads_source"] == "given"
    torch.set_num_threads(1)


def test_identical_layers_choose_one_format_by_group():
    from capbench.speed.kernels import COLUMN_MAJOR, ROW_MAJOR, _choose_by_group

    def layer(name, csr, own_best):
        row = {
            "input_layout": ROW_MAJOR,
            "best": own_best,
            "results": {"dense": {"speedup": 1.0}, "csr": {"speedup": csr}},
        }
        return {
            "name": name,
            "shape": [8, 8],
            "sparsity": 0.9,
            "contiguous": False,
            "token_counts": {"1x8": row},
            "best": {"1x8": own_best},
        }

    # per layer, noise split them: two chose CSR, one (at 1.01) stayed dense
    layers = [layer("a", 1.06, "csr"), layer("b", 1.01, "dense"), layer("c", 1.05, "csr")]
    _choose_by_group(layers, "ffn_in", min_gain=1.02)
    assert [entry["best"]["1x8"] for entry in layers] == ["csr"] * 3  # group median 1.05 clears 1.02
    row = layers[1]["token_counts"]["1x8"]
    assert row["layer_best"] == "dense" and row["group_size"] == 3 and row["output_layout"] == COLUMN_MAJOR
    slow = [layer("a", 1.03, "csr"), layer("b", 1.0, "dense"), layer("c", 0.98, "dense")]
    _choose_by_group(slow, "query", min_gain=1.02)
    assert [entry["best"]["1x8"] for entry in slow] == ["dense"] * 3  # median 1.00: within the gain
    other = [layer("a", 1.5, "csr"), {**layer("b", 1.5, "csr"), "shape": [8, 16]}]
    _choose_by_group(other, "query", min_gain=1.02)
    assert other[1]["token_counts"]["1x8"]["group_size"] == 1  # another shape: a group of its own
