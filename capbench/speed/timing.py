"""Timing harness: warm-up, interleaved rounds, a stopping rule on spread, an injectable clock.

Every candidate is timed once per round, in a rotating order, so slow drift of the machine (other jobs,
frequency changes) hits all candidates alike. Speedups are taken *within* a round (baseline time / candidate
time) and summarised across rounds by their median, IQR and a distribution-free interval of the median
(`capbench.speed.stats`): ratios stay meaningful even when absolute times drift. Rounds go on until every
ratio's spread (IQR / median) is at most `Rounds.target_spread`, or a cap (rounds or seconds) is reached,
never fewer than `Rounds.min_repeats`; why they stopped is part of the result.
The clock is a plain callable returning seconds; tests pass a fake one, so the arithmetic is checked without
the wall clock.
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from capbench.speed.stats import CONFIDENCE, quantile, relative_spread, summarize

Clock = Callable[[], float]

__all__ = [
    "DEFAULT_ROUNDS",
    "Clock",
    "Rounds",
    "cuda_event_clock",
    "quantile",
    "resolve_clock",
    "summarize",
    "time_interleaved",
]


def cuda_event_clock(device: torch.device | int | None = None) -> Clock:
    """A clock on the GPU's timeline: each reading records a CUDA event on the current stream and waits for
    it, so every kernel queued before the reading is counted (CUDA launches return before the work is done;
    a host clock alone would time the launches).  Seconds since the clock was made, from
    ``torch.cuda.Event.elapsed_time`` (milliseconds, resolution about 0.5 microseconds)."""
    with torch.cuda.device(device):
        origin = torch.cuda.Event(enable_timing=True)
        origin.record()
        origin.synchronize()

    def clock() -> float:
        with torch.cuda.device(device):
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            event.synchronize()
        return origin.elapsed_time(event) / 1000.0

    return clock


def resolve_clock(clock: Clock | None) -> Clock:
    """``clock``, or the default: CUDA events once this process has used CUDA (kernels may be queued on
    the GPU), else ``time.perf_counter``."""
    if clock is not None:
        return clock
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return cuda_event_clock()
    return time.perf_counter


# Why rounds stopped (the result's stop["reason"]).
STOP_SPREAD = "spread"  # every watched ratio's IQR / median reached the target
STOP_ROUNDS = "max_rounds"
STOP_SECONDS = "max_seconds"


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
    """How a set of candidates is timed: `warmup` calls each, then interleaved rounds until the stopping rule.

    - at least `min_repeats` rounds (capped by `repeats`) and `min_seconds` of rounds, at most `repeats`
      rounds once `min_seconds` are spent (the time floor comes first: a short window samples one moment of
      a drifting machine however tight its spread);
    - in between, stop as soon as every watched speedup ratio has IQR / median <= `target_spread` (None:
      no spread rule), or once `budget` seconds of rounds are spent (None: no time cap);
    - calibrated candidates run often enough per measurement to last `min_time` seconds;
    - statistics carry the `confidence` interval of each median (`capbench.speed.stats.median_ci`).
    """

    repeats: int = 7
    warmup: int = 1
    budget: float | None = None
    min_repeats: int = 3
    min_time: float = 2e-3
    target_spread: float | None = None
    confidence: float = CONFIDENCE
    min_seconds: float = 0.0

    def __post_init__(self):
        if self.repeats < 1:
            raise ValueError("repeats must be at least 1")
        if self.min_repeats < 1:
            raise ValueError("min_repeats must be at least 1")
        if self.warmup < 0:
            raise ValueError("warmup must be at least 0")
        if self.target_spread is not None and self.target_spread <= 0:
            raise ValueError("target_spread must be positive (or None)")

    def settings(self) -> dict:
        """The stopping rule as recorded beside a measurement."""
        return {
            "warmup": self.warmup,
            "min_rounds": min(self.min_repeats, self.repeats),
            "max_rounds": self.repeats,
            "max_seconds": self.budget,
            "min_seconds": self.min_seconds,
            "target_spread": self.target_spread,
            "confidence": self.confidence,
        }


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


def _ratios(samples: dict[str, list[float]], baseline: str, name: str) -> list[float]:
    return [b / t if t > 0 else math.inf for b, t in zip(samples[baseline], samples[name], strict=True)]


def _spread(samples: dict[str, list[float]], baseline: str, watch: list[str]) -> float:
    """The largest IQR / median over the watched candidates' per-round speedup ratios (0 when none)."""
    return max((relative_spread(_ratios(samples, baseline, name)) for name in watch), default=0.0)


def _run_rounds(
    fns: Mapping[str, Callable[[], object]],
    numbers: dict[str, int],
    rounds: Rounds,
    clock: Clock,
    baseline: str,
    watch: list[str],
) -> tuple[int, dict[str, list[float]], dict]:
    """(rounds done, seconds per call of each callable per round, why rounds stopped), the order rotating by
    one each round."""
    names = list(fns)
    samples: dict[str, list[float]] = {name: [] for name in names}
    gc_was_enabled = gc.isenabled()  # no gc.collect(): it costs ~0.2 s with transformers imported
    gc.disable()
    done, reason, spread = 0, STOP_ROUNDS, None
    minimum = min(rounds.min_repeats, rounds.repeats)
    start = clock()
    try:
        while True:
            k = done % len(names)
            for name in names[k:] + names[:k]:
                fn, n = fns[name], numbers[name]
                t0 = clock()
                for _ in range(n):
                    fn()
                samples[name].append((clock() - t0) / n)
            done += 1
            elapsed = clock() - start
            if rounds.budget is not None and elapsed > rounds.budget and done >= minimum:
                reason = STOP_SECONDS
                break
            if done < minimum or elapsed < rounds.min_seconds:
                continue
            if rounds.target_spread is not None:
                spread = _spread(samples, baseline, watch)
                if spread <= rounds.target_spread:
                    reason = STOP_SPREAD
                    break
            if done >= rounds.repeats:
                reason = STOP_ROUNDS
                break
    finally:
        if gc_was_enabled:
            gc.enable()
    if spread is None and watch and done > 0:
        spread = _spread(samples, baseline, watch)
    return done, samples, {"reason": reason, "spread": spread, "seconds": clock() - start}


def time_interleaved(
    fns: Mapping[str, Callable[[], object]],
    rounds: Rounds = DEFAULT_ROUNDS,
    *,
    baseline: str | None = None,
    number: int | Mapping[str, int] | None = None,
    clock: Clock | None = None,
    keep_samples: bool = False,
    watch: list[str] | None = None,
) -> dict:
    """Time each callable in `fns` over interleaved `rounds`.

    Per round every callable runs `number` times back to back (the per-call time is the elapsed time divided
    by `number`); the order rotates by one position each round.  `clock=None`: ``resolve_clock`` (CUDA
    events after CUDA is in use, so GPU work is synchronised before each reading). `number=None` picks it per callable from the
    first warm-up call so a measurement lasts at least `rounds.min_time`. `watch` names the candidates whose
    speedup spread the stopping rule reads (default: all but the baseline).

    Returns ``{"rounds", "threads", "number", "baseline", "stop", "times": {name: stats},
    "speedup": {name: stats}}``: times are seconds per call; `speedup` holds, for every callable, the
    statistics (`capbench.speed.stats.summarize`, with the interval of the median) over rounds of
    ``time[baseline] / time[name]`` (greater than 1 means faster than the baseline); `stop` is
    ``{"reason": "spread" | "max_rounds" | "max_seconds", "spread": largest IQR/median, "seconds"}``.
    """
    names = list(fns)
    if not names:
        raise ValueError("nothing to time")
    clock = resolve_clock(clock)
    baseline = names[0] if baseline is None else baseline
    if baseline not in fns:
        raise ValueError(f"baseline {baseline!r} is not one of {names}")
    watch = [n for n in names if n != baseline] if watch is None else list(watch)
    numbers = _call_counts(fns, rounds, number, clock)
    done, samples, stop = _run_rounds(fns, numbers, rounds, clock, baseline, watch)
    result = {
        "rounds": done,
        "threads": torch.get_num_threads(),
        "number": numbers,
        "baseline": baseline,
        "stop": stop,
        "times": {name: summarize(samples[name], rounds.confidence) for name in names},
        "speedup": {name: summarize(_ratios(samples, baseline, name), rounds.confidence) for name in names},
    }
    if keep_samples:
        result["samples"] = samples
    return result
