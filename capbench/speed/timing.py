"""Timing harness: warm-up, interleaved rounds, robust statistics, an injectable clock.

Every candidate is timed once per round, in a rotating order, so slow drift of the machine (other jobs,
frequency changes) hits all candidates alike. Speedups are taken *within* a round (baseline time / candidate
time) and summarised across rounds by their median: ratios stay meaningful even when absolute times drift.
The clock is a plain callable returning seconds; tests pass a fake one, so the arithmetic is checked without
the wall clock.
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

Clock = Callable[[], float]


def quantile(sorted_values: Sequence[float], p: float) -> float:
    """Quantile with linear interpolation between order statistics (numpy's default method)."""
    if not sorted_values:
        raise ValueError("quantile of an empty sample")
    pos = p * (len(sorted_values) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    frac = pos - lo
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * frac


def summarize(samples: Sequence[float]) -> dict:
    """Median, spread (IQR and MAD), min, max and mean of a sample."""
    values = sorted(float(v) for v in samples)
    if not values:
        raise ValueError("no samples to summarize")
    median = quantile(values, 0.5)
    q1, q3 = quantile(values, 0.25), quantile(values, 0.75)
    mad = quantile(sorted(abs(v - median) for v in values), 0.5)
    return {
        "n": len(values),
        "median": median,
        "q1": q1,
        "q3": q3,
        "iqr": q3 - q1,
        "mad": mad,
        "min": values[0],
        "max": values[-1],
        "mean": sum(values) / len(values),
    }


def _calibrate(fn: Callable[[], object], clock: Clock, min_time: float) -> int:
    """Calls per measurement so one measurement lasts at least `min_time` (clock resolution, call overhead)."""
    start = clock()
    fn()
    elapsed = clock() - start
    if elapsed <= 0:
        return 1
    return max(1, math.ceil(min_time / elapsed)) if elapsed < min_time else 1


@dataclass(frozen=True)
class Rounds:
    """How a set of candidates is timed: `repeats` interleaved rounds after `warmup` calls each; with a
    `budget` (seconds of timing) rounds stop early once it is spent and `min_repeats` rounds are done;
    calibrated candidates run often enough per measurement to last `min_time`."""

    repeats: int = 7
    warmup: int = 1
    budget: float | None = None
    min_repeats: int = 3
    min_time: float = 2e-3

    def __post_init__(self):
        if self.repeats < 1:
            raise ValueError("repeats must be at least 1")


DEFAULT_ROUNDS = Rounds()


def _call_counts(fns: Mapping[str, Callable[[], object]], rounds: Rounds, number, clock: Clock) -> dict:
    """Calls per measurement of each callable (calibrating from its first warm-up call when `number` is None),
    then the remaining warm-up calls."""
    numbers: dict[str, int] = {}
    for name, fn in fns.items():
        if isinstance(number, Mapping):
            numbers[name] = int(number.get(name, 1))
        elif number is not None:
            numbers[name] = int(number)
        else:
            numbers[name] = _calibrate(fn, clock, rounds.min_time) if rounds.warmup > 0 else 1
    for _ in range(max(0, rounds.warmup - (1 if number is None else 0))):
        for fn in fns.values():
            fn()
    return numbers


def _run_rounds(
    fns: Mapping[str, Callable[[], object]], numbers: dict[str, int], rounds: Rounds, clock: Clock
) -> tuple[int, dict[str, list[float]]]:
    """(rounds done, seconds per call of each callable per round), the order rotating by one each round."""
    names = list(fns)
    samples: dict[str, list[float]] = {name: [] for name in names}
    gc_was_enabled = gc.isenabled()  # no gc.collect(): it costs ~0.2 s with transformers imported
    gc.disable()
    done = 0
    try:
        start = clock()
        for r in range(rounds.repeats):
            k = r % len(names)
            for name in names[k:] + names[:k]:
                fn, n = fns[name], numbers[name]
                t0 = clock()
                for _ in range(n):
                    fn()
                samples[name].append((clock() - t0) / n)
            done += 1
            if rounds.budget is not None and done >= rounds.min_repeats and clock() - start > rounds.budget:
                break
    finally:
        if gc_was_enabled:
            gc.enable()
    return done, samples


def time_interleaved(
    fns: Mapping[str, Callable[[], object]],
    rounds: Rounds = DEFAULT_ROUNDS,
    *,
    baseline: str | None = None,
    number: int | Mapping[str, int] | None = None,
    clock: Clock = time.perf_counter,
    keep_samples: bool = False,
) -> dict:
    """Time each callable in `fns` over interleaved `rounds`.

    Per round every callable runs `number` times back to back (the per-call time is the elapsed time divided
    by `number`); the order rotates by one position each round. `number=None` picks it per callable from the
    first warm-up call so a measurement lasts at least `rounds.min_time`.

    Returns ``{"rounds", "threads", "number", "times": {name: stats}, "speedup": {name: stats}}``, where
    times are seconds per call and `speedup` holds, for every callable, the statistics over rounds of
    ``time[baseline] / time[name]`` (greater than 1 means faster than the baseline).
    """
    names = list(fns)
    if not names:
        raise ValueError("nothing to time")
    baseline = names[0] if baseline is None else baseline
    if baseline not in fns:
        raise ValueError(f"baseline {baseline!r} is not one of {names}")
    numbers = _call_counts(fns, rounds, number, clock)
    done, samples = _run_rounds(fns, numbers, rounds, clock)
    base = samples[baseline]
    result = {
        "rounds": done,
        "threads": torch.get_num_threads(),
        "number": numbers,
        "baseline": baseline,
        "times": {name: summarize(samples[name]) for name in names},
        "speedup": {
            name: summarize([b / t if t > 0 else math.inf for b, t in zip(base, samples[name], strict=True)])
            for name in names
        },
    }
    if keep_samples:
        result["samples"] = samples
    return result
