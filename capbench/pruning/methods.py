"""The pruning methods, their documented defaults, and ``make_pruner``.

Defaults come from the public scripts of the papers:

* movement pruning, Sanh et al. 2020, huggingface/transformers
  ``examples/research_projects/movement-pruning`` (README commands, ``masked_run_glue.py`` argparse
  defaults, ``emmental/modules/binarizer.py``);
* Zhu & Gupta 2017, "To prune, or not to prune" (cubic schedule, gradual magnitude pruning);
* Michel et al. 2019, "Are Sixteen Heads Really Better than One?" (first-order head importance);
* Blalock et al. 2020, ShrinkBench (random pruning baseline).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

from capbench.errors import CapbenchError
from capbench.pruning.base import Pruner, UnstructuredPruner
from capbench.pruning.criteria import MagnitudeCriterion, MovementCriterion, RandomCriterion
from capbench.pruning.schedule import DEFAULT_COOLDOWN, DEFAULT_WARMUP
from capbench.pruning.soft import SoftMovementPruner
from capbench.pruning.structured import FirstOrderPruner

METHODS = {
    "magnitude": "gradual magnitude pruning on the cubic schedule (Zhu & Gupta 2017); oneshot: global "
    "magnitude at the start, then a fixed mask",
    "movement": "top-k movement pruning: learned scores, straight-through estimator (Sanh et al. 2020)",
    "soft_movement": "soft movement pruning: sigmoid threshold + L1 on the scores (Sanh et al. 2020); the "
    "threshold is calibrated to the sparsity schedule",
    "first_order": "structured: heads and FFN neurons by first-order Taylor importance, pruned in steps, "
    "then compacted (Michel et al. 2019)",
    "random": "random masks on the same schedule: the floor (ShrinkBench)",
}

# Shared by every method: the sparsity schedule of the movement-pruning README commands
# (initial_threshold=1 i.e. no initial sparsity, initial_warmup=1 and final_warmup=2 times warmup_steps=5400
# of about 55k steps: 10% warmup, 20% cool-down).
_SCHEDULE = {"warmup": DEFAULT_WARMUP, "cooldown": DEFAULT_COOLDOWN, "initial_sparsity": 0.0}

_DEFAULTS: dict[str, dict] = {
    "magnitude": {
        **_SCHEDULE,
        # auto = local for the gradual method (MagnitudeBinarizer thresholds each matrix on its own), global
        # for oneshot (one-shot global magnitude, the classic one-shot baseline).
        "scope": "auto",
        # masked_run_glue.py recomputes masks at every step (Zhu & Gupta suggest every 100-1000 steps).
        "update_every": 1,
        # oneshot: prune to the target once before training, then a fixed mask.
        "oneshot": False,
    },
    "movement": {
        **_SCHEDULE,
        "scope": "local",  # TopKBinarizer per matrix; masked_run_glue.py --global_topk is off by default
        "score_lr": 1e-2,  # --mask_scores_learning_rate 1e-2 (README and argparse default)
        "score_init": 0.0,  # --mask_init constant --mask_scale 0.
        "update_every": 1,  # masks follow the scores at every step
    },
    "soft_movement": {
        **_SCHEDULE,
        "score_lr": 1e-2,  # --mask_scores_learning_rate 1e-2
        "score_init": 0.0,  # --mask_init constant --mask_scale 0.
        "tau_initial": 0.0,  # --initial_threshold 0
        "tau_final": 0.1,  # --final_threshold 0.1 (sigmoid space)
        "final_lambda": 400.0,  # --regularization l1 --final_lambda 400. (README, SQuAD)
        "min_keep": 0.005,  # ThresholdBinarizer keeps at least 0.5% of each matrix
        # capbench's calibration: the threshold follows the sparsity schedule (see capbench/pruning/soft.py);
        # calibrate=false is the paper's method, whose sparsity is whatever final_lambda gives.
        "calibrate": True,
        "update_every": 1,
    },
    "first_order": {
        **_SCHEDULE,
        "scope": "global",  # Michel et al.: heads ranked across layers after per-layer L2 normalisation
        "prune_steps": 10,  # Michel et al. prune 10% of the heads per iteration, re-estimating importance
        "min_heads_per_layer": 1,
        "min_ffn_per_layer": 1,
        "ffn_multiple": 1,  # 16 gives kernel-friendly widths (../shared/notes/cpu-speed-facts.md)
    },
    "random": {
        **_SCHEDULE,
        "scope": "auto",  # as magnitude: local when gradual, global when oneshot
        "seed": 0,
        "update_every": 1,
        "oneshot": False,
    },
}


class MagnitudePruner(UnstructuredPruner):
    name = "magnitude"

    def __init__(self, sparsity: float, options: dict):
        super().__init__(sparsity, options, MagnitudeCriterion(), hard=True)


class MovementPruner(UnstructuredPruner):
    name = "movement"

    def __init__(self, sparsity: float, options: dict):
        super().__init__(sparsity, options, MovementCriterion(options["score_init"]), hard=False)


class RandomPruner(UnstructuredPruner):
    name = "random"

    def __init__(self, sparsity: float, options: dict):
        super().__init__(sparsity, options, RandomCriterion(options["seed"]), hard=True)


_CLASSES: dict[str, type[Pruner]] = {
    "magnitude": MagnitudePruner,
    "movement": MovementPruner,
    "soft_movement": SoftMovementPruner,
    "first_order": FirstOrderPruner,
    "random": RandomPruner,
}


@dataclass(frozen=True)
class OptionRule:
    """What values a method option takes. ``kind``: bool, int, float, steps (a fraction of training below 1
    or a whole number of steps) or choice; ``low``/``high`` bound numbers (``open_low``/``open_high``: the
    bound itself is excluded)."""

    kind: str
    doc: str
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False
    choices: tuple[str, ...] = ()

    def describe(self) -> str:
        """What the value must be, as the end of 'KEY must be ...'."""
        if self.kind == "bool":
            return "true or false"
        if self.kind == "choice":
            return f"one of {', '.join(self.choices)}"
        if self.kind == "steps":
            return "a fraction of training in [0, 1) or a whole number of steps, e.g. 0.1"
        noun = "a whole number" if self.kind == "int" else "a finite number"
        if self.low is not None and self.high is not None:
            left, right = "(" if self.open_low else "[", ")" if self.open_high else "]"
            return f"{noun} in {left}{_number(self.low)}, {_number(self.high)}{right}"
        if self.low is not None:
            return f"{noun} {'>' if self.open_low else '>='} {_number(self.low)}"
        return noun

    def accepts(self, value) -> bool:
        if self.kind == "bool":
            return isinstance(value, bool)
        if self.kind == "choice":
            return isinstance(value, str) and value in self.choices
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            return False
        if self.kind == "steps":
            return value >= 0 and (value < 1 or float(value).is_integer())
        if self.kind == "int" and not float(value).is_integer():
            return False
        if self.low is not None and (value <= self.low if self.open_low else value < self.low):
            return False
        if self.high is not None and (value >= self.high if self.open_high else value > self.high):
            return False
        return True


# The schema of every method option (which methods take which option: their _DEFAULTS keys).
OPTIONS: dict[str, OptionRule] = {
    "warmup": OptionRule("steps", "pruning starts after this much training"),
    "cooldown": OptionRule("steps", "the target sparsity holds for this much training at the end"),
    "initial_sparsity": OptionRule("float", "sparsity during warmup", 0, 1, open_high=True),
    "scope": OptionRule(
        "choice",
        "masks ranked per matrix (local) or across matrices (global); auto: global when oneshot",
        choices=("local", "global", "auto"),
    ),
    "update_every": OptionRule("int", "optimizer steps between mask updates", 1),
    "oneshot": OptionRule("bool", "prune to the target before training, then keep the mask"),
    "score_lr": OptionRule("float", "learning rate of the movement scores", 0, open_low=True),
    "score_init": OptionRule("float", "initial movement score"),
    "tau_initial": OptionRule("float", "initial sigmoid threshold", 0, 1, open_high=True),
    "tau_final": OptionRule("float", "final sigmoid threshold", 0, 1, open_high=True),
    "final_lambda": OptionRule("float", "final L1 weight on the scores", 0),
    "min_keep": OptionRule("float", "fraction of each matrix always kept", 0, 1),
    "calibrate": OptionRule("bool", "the threshold follows the sparsity schedule"),
    "prune_steps": OptionRule("int", "pruning events over the ramp", 1),
    "min_heads_per_layer": OptionRule("int", "heads kept in every layer (BERT attention needs one)", 1),
    "min_ffn_per_layer": OptionRule("int", "FFN neurons kept in every layer", 0),
    "ffn_multiple": OptionRule("int", "kept FFN widths are multiples of this", 1),
    "seed": OptionRule("int", "seed of the random masks", 0, 2**32 - 1),
}


def _unknown(name: str) -> CapbenchError:
    return CapbenchError(f"unknown pruning method {name!r}; known methods: {', '.join(METHODS)}")


def method_defaults(name: str) -> dict:
    """The documented default options of a method (a copy)."""
    if name not in _DEFAULTS:
        raise _unknown(name)
    return copy.deepcopy(_DEFAULTS[name])


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _shown(value) -> str:
    """A value as it is written after KEY= on the command line."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    return str(value)


def check_options(
    name: str, options: dict, overrides: dict | None = None, flag: str | None = None, label: str | None = None
) -> dict:
    """Check a method's resolved options (defaults plus overrides) against ``OPTIONS``; return them with
    whole-number options as ints. With ``flag`` (the command line), errors name ``flag KEY=VALUE`` for the
    keys in ``overrides``; ``label`` is the method's name in the grid (e.g. cap_magnitude)."""
    defaults = method_defaults(name)
    label = label or name
    overrides = overrides or {}

    def where(key) -> str:
        if flag and key in overrides:
            return f"{flag} {key}={_shown(overrides[key])}"
        return f"{label}: option {key}={_shown(options[key])}"

    unknown = [key for key in options if key not in defaults]
    if unknown and not flag:
        raise CapbenchError(
            f"unknown option(s) {', '.join(sorted(unknown))} for pruning method {name}; "
            f"valid: {', '.join(defaults)}"
        )
    for key in unknown:
        elsewhere = [m for m, values in _DEFAULTS.items() if key in values]
        hint = (
            f"; {key} is an option of {', '.join(elsewhere)}: run those methods in a command of their own"
            if elsewhere
            else ""
        )
        raise CapbenchError(
            f"{where(key)}: unknown option for {label}; its options are {', '.join(defaults)}{hint}"
        )
    resolved = dict(options)
    for key, value in options.items():
        if value is None and not (flag and key in overrides):
            resolved[key] = defaults[key]  # make_pruner: None means the default
            continue
        rule = OPTIONS[key]
        if not rule.accepts(value):
            hint = ""
            if isinstance(value, str) and rule.kind not in ("choice", "bool"):
                try:
                    hint = (
                        f"; YAML reads {value} as text: write it with a decimal point, e.g. {float(value)!r}"
                    )
                except ValueError:
                    pass
            got = "an empty value" if value is None else repr(value)
            about = "" if rule.kind == "choice" else f" ({key}: {rule.doc})"
            raise CapbenchError(
                f"{where(key)}: {label}'s {key} must be {rule.describe()}; got {got}{about}{hint}"
            )
        if rule.kind == "int":
            resolved[key] = int(value)
    warmup, cooldown = resolved.get("warmup", 0), resolved.get("cooldown", 0)
    if isinstance(warmup, float) and isinstance(cooldown, float) and warmup < 1 and cooldown < 1:
        if warmup + cooldown > 1:
            pair = f"warmup={_shown(warmup)} cooldown={_shown(cooldown)}"
            given = flag and ("warmup" in overrides or "cooldown" in overrides)
            raise CapbenchError(
                f"{f'{flag} {pair}' if given else f'{label}: {pair}'}: the pruning warmup and cooldown "
                f"fractions add up to {warmup + cooldown:g}; together they must be at most 1, "
                "e.g. warmup=0.1 cooldown=0.2"
            )
    return resolved


def check_initial_sparsity(
    name: str, options: dict, sparsities, overrides: dict | None = None, flag: str | None = None
) -> None:
    """initial_sparsity may not exceed any target sparsity of the grid."""
    initial = options.get("initial_sparsity")
    if initial is None:
        return
    for sparsity in sparsities:
        if initial > sparsity:
            given = flag and "initial_sparsity" in (overrides or {})
            where = (
                f"{flag} initial_sparsity={initial:g}" if given else f"{name}: initial_sparsity {initial:g}"
            )
            raise CapbenchError(
                f"{where}: exceeds the target sparsity {sparsity:g}; give an initial_sparsity at most "
                f"the smallest --sparsity ({min(sparsities):g})"
            )


def make_pruner(name: str, sparsity: float, options: dict | None = None) -> Pruner:
    """A fresh pruner for ``name`` at ``sparsity`` in [0, 1); ``options`` override ``method_defaults``."""
    if name not in _CLASSES:
        raise _unknown(name)
    if isinstance(sparsity, bool) or not isinstance(sparsity, int | float) or not 0 <= sparsity < 1:
        raise CapbenchError(f"sparsity must be in [0, 1), got {sparsity!r} (0.9 means 90% of weights pruned)")
    given = {k: v for k, v in (options or {}).items() if v is not None}
    resolved = check_options(name, {**method_defaults(name), **given})
    if resolved.get("scope") == "auto":
        resolved["scope"] = "global" if resolved.get("oneshot") or name == "first_order" else "local"
    if resolved.get("initial_sparsity", 0.0) > sparsity:
        raise CapbenchError(f"initial_sparsity {resolved['initial_sparsity']} exceeds the target {sparsity}")
    return _CLASSES[name](float(sparsity), resolved)
