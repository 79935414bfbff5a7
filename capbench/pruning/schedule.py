"""The cubic sparsity schedule of Zhu & Gupta (2017), in the form used by movement pruning.

Sanh et al. (2020), ``examples/research_projects/movement-pruning/masked_run_glue.py::schedule_threshold``
keeps the initial value for ``initial_warmup * warmup_steps`` steps, ramps it cubically, and holds the final
value for the last ``final_warmup * warmup_steps`` steps.  Written in terms of sparsity ``s`` (their top-k
"threshold" is the kept fraction ``1 - s``):

    step <= w                      : s = initial
    step >  T - c                  : s = target
    otherwise, with t = (step - w) / (T - w - c):
                                     s = target + (initial - target) * (1 - t) ** 3

which is exactly the Zhu & Gupta formula.  The movement-pruning README runs use ``warmup_steps=5400`` with
``initial_warmup=1`` and ``final_warmup=2`` on about 55k SQuAD steps (10 epochs, batch 16), i.e. a warmup of
about 10% and a cool-down of about 20% of training: those fractions are our defaults.
"""

from __future__ import annotations

from capbench.errors import CapbenchError

# Fractions of training, from the movement-pruning README commands (see module docstring).
DEFAULT_WARMUP = 0.1
DEFAULT_COOLDOWN = 0.2


def resolve_steps(value: int | float, total_steps: int, what: str = "value") -> int:
    """Steps from an int (steps) or a float < 1 (fraction of ``total_steps``)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CapbenchError(f"{what} must be a number of steps (int) or a fraction of training (float < 1)")
    if value < 0:
        raise CapbenchError(f"{what} must be >= 0, got {value}")
    if isinstance(value, float) and value < 1:
        return int(round(value * total_steps))
    if isinstance(value, float) and not value.is_integer():
        raise CapbenchError(f"{what}={value}: give a whole number of steps or a fraction below 1")
    return int(value)


def schedule_window(total_steps: int, warmup: int | float, cooldown: int | float) -> tuple[int, int]:
    """(warmup_steps, cooldown_steps) resolved against ``total_steps``; the ramp may be empty."""
    if total_steps < 1:
        raise CapbenchError(f"total_steps must be >= 1, got {total_steps}")
    w = resolve_steps(warmup, total_steps, "warmup")
    c = resolve_steps(cooldown, total_steps, "cooldown")
    if w + c > total_steps:
        raise CapbenchError(
            f"pruning warmup ({w} steps) + cooldown ({c} steps) exceed the {total_steps} training steps; "
            "use smaller warmup/cooldown fractions"
        )
    return w, c


def cubic_ramp(
    step: int, total_steps: int, initial: float, final: float, warmup_steps: int, cooldown_steps: int
) -> float:
    """Value of a cubic ramp from ``initial`` to ``final`` (used for sparsity and for soft-movement tau)."""
    if step <= warmup_steps:
        return float(initial)
    if step > total_steps - cooldown_steps:
        return float(final)
    ramp = total_steps - warmup_steps - cooldown_steps
    if ramp <= 0:
        return float(final)
    t = (step - warmup_steps) / ramp
    return float(final + (initial - final) * (1.0 - t) ** 3)


def cubic_sparsity(
    step: int,
    total_steps: int,
    target: float,
    initial: float = 0.0,
    warmup: int | float = DEFAULT_WARMUP,
    cooldown: int | float = DEFAULT_COOLDOWN,
) -> float:
    """Scheduled sparsity after ``step`` optimizer steps (``cubic_sparsity(total_steps, ...) == target``).

    ``warmup``/``cooldown``: steps (int) or fractions of ``total_steps`` (float < 1).
    """
    w, c = schedule_window(total_steps, warmup, cooldown)
    return cubic_ramp(step, total_steps, initial, target, w, c)
