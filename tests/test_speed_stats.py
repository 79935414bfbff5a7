"""The interval of the median and the stopping rule on spread (fake clocks only)."""

import numpy as np
import pytest
from scipy.stats import binom
from speed_fakes import FakeClock

from capbench.speed.stats import median_ci, relative_spread, summarize
from capbench.speed.timing import Rounds, time_interleaved


def test_median_interval_from_order_statistics_on_known_samples():
    # n = 10: the 2nd and 9th order statistics, coverage 1 - 2 * 11/1024 (the textbook table's pair)
    low, high, coverage = median_ci(list(range(10, 0, -1)))
    assert (low, high) == (2, 9)
    assert coverage == pytest.approx(1 - 2 * 11 / 1024)
    # n = 20: the 6th and 15th, coverage 1 - 2 P(B <= 5), B ~ Bin(20, 1/2)
    low, high, coverage = median_ci(np.arange(1.0, 21.0))
    assert (low, high) == (6, 15)
    assert coverage == pytest.approx(1 - 2 * binom.cdf(5, 20, 0.5)) and coverage >= 0.95
    # the 7th and 14th would not reach 95%
    assert 1 - 2 * binom.cdf(6, 20, 0.5) < 0.95
    # n = 5 cannot reach 95%: [min, max], and the coverage says so
    low, high, coverage = median_ci([3.0, 1.0, 2.0, 5.0, 4.0])
    assert (low, high) == (1, 5) and coverage == pytest.approx(1 - 2 / 32)
    assert median_ci([7.0])[:2] == (7.0, 7.0)
    with pytest.raises(ValueError):
        median_ci([])


def test_summarize_carries_the_interval_and_spread_is_iqr_over_median():
    s = summarize(np.arange(1.0, 11.0))
    assert (s["ci_low"], s["ci_high"]) == (2, 9) and s["median"] == 5.5
    assert relative_spread([1.0, 2.0, 3.0, 4.0, 5.0]) == pytest.approx(2.0 / 3.0)


def _timed(clock, costs, rounds):
    fns = {"dense": clock.costing("dense", [2.0]), "sparse": clock.costing("sparse", costs)}
    return time_interleaved(fns, rounds, baseline="dense", number=1, clock=clock)


def test_tight_sample_stops_at_the_minimum_rounds():
    clock = FakeClock()
    r = _timed(clock, [1.0], Rounds(repeats=50, warmup=0, min_repeats=6, target_spread=0.03))
    assert r["rounds"] == 6
    assert r["stop"]["reason"] == "spread" and r["stop"]["spread"] == 0
    assert r["speedup"]["sparse"]["median"] == 2.0


def test_noisy_sample_runs_to_the_round_cap_or_the_time_cap():
    clock = FakeClock()
    noisy = [1.0, 2.0, 0.5, 1.5] * 20  # ratios 2, 1, 4, 1.33: IQR/median far above 3%
    r = _timed(clock, noisy, Rounds(repeats=12, warmup=0, min_repeats=6, target_spread=0.03))
    assert r["rounds"] == 12 and r["stop"]["reason"] == "max_rounds"
    assert r["stop"]["spread"] > 0.03
    clock = FakeClock()
    r = _timed(clock, noisy, Rounds(repeats=100, warmup=0, min_repeats=6, target_spread=0.03, budget=30))
    assert r["stop"]["reason"] == "max_seconds"
    assert r["rounds"] == 10  # rounds of 3, 4, 2.5, 3.5 s: the 10th ends at 33 s, past the 30 s cap


def test_a_tight_sample_still_runs_for_the_minimum_seconds_even_past_the_round_cap():
    clock = FakeClock()
    rounds = Rounds(repeats=5, warmup=0, min_repeats=2, target_spread=0.03, min_seconds=30)
    r = _timed(clock, [1.0], rounds)  # 3 s a round: spread 0 from the start, but 30 s come first
    assert r["rounds"] == 10 and r["stop"]["reason"] == "spread" and r["stop"]["seconds"] == 30
    clock = FakeClock()
    r = _timed(clock, [1.0], Rounds(repeats=5, warmup=0, min_repeats=2, min_seconds=30, budget=12))
    assert r["stop"]["reason"] == "max_seconds" and r["rounds"] == 5  # the cap in seconds still wins


def test_the_minimum_holds_even_when_the_cap_in_seconds_is_spent():
    clock = FakeClock()
    r = _timed(clock, [1.0], Rounds(repeats=50, warmup=0, min_repeats=8, target_spread=None, budget=1))
    assert r["rounds"] == 8 and r["stop"]["reason"] == "max_seconds"


def test_warmup_calls_are_not_timed():
    clock = FakeClock()
    fns = {"a": clock.costing("a", [100.0, 100.0, 1.0]), "b": clock.costing("b", [1.0])}
    r = time_interleaved(fns, Rounds(repeats=3, warmup=2, min_repeats=3), number=1, clock=clock)
    assert clock.calls[:4] == ["a", "b", "a", "b"]
    assert r["times"]["a"]["max"] == 1.0  # the slow first calls were warm-ups
