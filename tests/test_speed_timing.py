import numpy as np
import pytest
import torch

from capbench.speed.formats import KernelFormat
from capbench.speed.kernels import parse_token_count, time_formats, token_count_label
from capbench.speed.timing import Rounds, quantile, summarize, time_interleaved
from tests.speed_fakes import FakeClock


def test_summarize_matches_numpy():
    values = [5.0, 1.0, 4.0, 2.0, 3.0, 10.0]
    s = summarize(values)
    arr = np.array(values)
    assert s["n"] == 6
    assert s["median"] == pytest.approx(np.median(arr))
    assert s["q1"] == pytest.approx(np.percentile(arr, 25))
    assert s["q3"] == pytest.approx(np.percentile(arr, 75))
    assert s["iqr"] == pytest.approx(np.percentile(arr, 75) - np.percentile(arr, 25))
    assert s["mad"] == pytest.approx(np.median(np.abs(arr - np.median(arr))))
    assert (s["min"], s["max"], s["mean"]) == (1.0, 10.0, pytest.approx(arr.mean()))
    assert quantile([7.0], 0.5) == 7.0
    with pytest.raises(ValueError):
        summarize([])


def test_interleaved_stats_and_per_round_ratios_on_stub_clock():
    clock = FakeClock()
    fns = {"a": clock.costing("a", [1, 2, 3, 4, 5]), "b": clock.costing("b", [2])}
    r = time_interleaved(fns, Rounds(repeats=5, warmup=0), baseline="a", number=1, clock=clock)
    assert r["rounds"] == 5
    assert r["threads"] == torch.get_num_threads()
    a = r["times"]["a"]
    assert (a["median"], a["q1"], a["q3"], a["iqr"], a["mad"], a["min"], a["max"]) == (3, 2, 4, 2, 1, 1, 5)
    assert r["times"]["b"]["median"] == 2 and r["times"]["b"]["iqr"] == 0
    # speedup of b = a_time / b_time per round: 0.5, 1, 1.5, 2, 2.5
    assert r["speedup"]["b"]["median"] == pytest.approx(1.5)
    assert r["speedup"]["b"]["min"] == pytest.approx(0.5) and r["speedup"]["b"]["max"] == pytest.approx(2.5)
    assert r["speedup"]["a"]["median"] == 1.0
    # order rotates each round
    assert clock.calls[:6] == ["a", "b", "b", "a", "a", "b"]


def test_number_warmup_and_calibration():
    clock = FakeClock()
    r = time_interleaved({"x": clock.costing("x", [3])}, Rounds(repeats=2, warmup=2), number=4, clock=clock)
    assert r["times"]["x"]["median"] == 3  # per call, not per 4 calls
    assert len(clock.calls) == 2 + 2 * 4
    clock = FakeClock()
    r = time_interleaved(
        {"y": clock.costing("y", [2])}, Rounds(repeats=1, warmup=1, min_time=10), number=None, clock=clock
    )
    assert r["number"]["y"] == 5  # ceil(10 / 2)
    assert r["times"]["y"]["median"] == 2


def test_budget_stops_after_min_repeats():
    clock = FakeClock()
    r = time_interleaved(
        {"x": clock.costing("x", [10])},
        Rounds(repeats=10, warmup=0, budget=15, min_repeats=3),
        number=1,
        clock=clock,
    )
    assert r["rounds"] == 3


def test_bad_arguments():
    with pytest.raises(ValueError):
        time_interleaved({})
    with pytest.raises(ValueError):
        time_interleaved({"a": lambda: None}, baseline="b")
    with pytest.raises(ValueError, match="at least 1"):
        Rounds(repeats=0)


class _FakeFormat(KernelFormat):
    def __init__(self, name, clock, cost):
        super().__init__(4, 4)
        self.name, self.clock, self.cost = name, clock, cost
        self.weight = torch.zeros(4, 4)

    def _forward2d(self, x):
        self.clock.t += self.cost
        return x


def test_best_format_and_min_gain_on_stub_clock():
    clock = FakeClock()
    formats = {
        "dense": _FakeFormat("dense", clock, 4.0),
        "csr": _FakeFormat("csr", clock, 1.0),
        "bsr4": _FakeFormat("bsr4", clock, 8.0),
    }
    out = time_formats(formats, ["1x8", "2x8"], Rounds(repeats=3, warmup=0), clock=clock)
    row = out["1x8"]
    assert row["tokens"] == 8
    assert row["results"]["csr"]["speedup"] == pytest.approx(4.0)
    assert row["results"]["bsr4"]["speedup"] == pytest.approx(0.5)
    assert row["results"]["dense"]["median_s"] == pytest.approx(4.0)
    assert (row["best"], row["best_speedup"]) == ("csr", pytest.approx(4.0))
    out = time_formats(formats, ["1x8"], Rounds(repeats=3, warmup=0), clock=clock, min_gain=5.0)
    assert out["1x8"]["best"] == "dense"


def test_parse_token_count():
    assert parse_token_count("32x128") == (32, 128)
    assert parse_token_count("4096") == (1, 4096)
    assert parse_token_count((2, 8)) == (2, 8)
    assert token_count_label("1X128") == "1x128"
    for bad in ("axb", "0x5", "3x"):
        with pytest.raises(ValueError):
            parse_token_count(bad)
