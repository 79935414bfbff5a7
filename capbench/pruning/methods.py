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

_CHOICES = {"scope": ("local", "global", "auto")}
_SIGNED = {"score_init"}
_AT_LEAST_ONE = {"update_every", "prune_steps", "ffn_multiple"}


def _unknown(name: str) -> CapbenchError:
    return CapbenchError(f"unknown pruning method {name!r}; known methods: {', '.join(METHODS)}")


def method_defaults(name: str) -> dict:
    """The documented default options of a method (a copy)."""
    if name not in _DEFAULTS:
        raise _unknown(name)
    return copy.deepcopy(_DEFAULTS[name])


def _check(name: str, key: str, value, default):
    if key in _CHOICES:
        if value not in _CHOICES[key]:
            raise CapbenchError(f"{name}: {key} must be one of {', '.join(_CHOICES[key])}, got {value!r}")
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise CapbenchError(f"{name}: {key} must be true or false, got {value!r}")
        return value
    if isinstance(default, int | float) and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise CapbenchError(f"{name}: {key} must be a number, got {value!r}")
    if isinstance(default, int) and key not in ("warmup", "cooldown") and not float(value).is_integer():
        raise CapbenchError(f"{name}: {key} must be a whole number, got {value!r}")
    if isinstance(default, int | float) and key not in _SIGNED and value < 0:
        raise CapbenchError(f"{name}: {key} must be >= 0, got {value!r}")
    if key in _AT_LEAST_ONE and value < 1:
        raise CapbenchError(f"{name}: {key} must be >= 1, got {value!r}")
    if isinstance(default, int) and key not in ("warmup", "cooldown"):
        return int(value)
    return value


def make_pruner(name: str, sparsity: float, options: dict | None = None) -> Pruner:
    """A fresh pruner for ``name`` at ``sparsity`` in [0, 1); ``options`` override ``method_defaults``."""
    if name not in _CLASSES:
        raise _unknown(name)
    if isinstance(sparsity, bool) or not isinstance(sparsity, int | float) or not 0 <= sparsity < 1:
        raise CapbenchError(f"sparsity must be in [0, 1), got {sparsity!r} (0.9 means 90% of weights pruned)")
    defaults = method_defaults(name)
    given = {k: v for k, v in (options or {}).items() if v is not None}
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise CapbenchError(
            f"unknown option(s) {', '.join(unknown)} for pruning method {name}; valid: {', '.join(defaults)}"
        )
    resolved = dict(defaults)
    for key, value in given.items():
        resolved[key] = _check(name, key, value, defaults[key])
    if resolved.get("scope") == "auto":
        resolved["scope"] = "global" if resolved.get("oneshot") or name == "first_order" else "local"
    if resolved.get("initial_sparsity", 0.0) > sparsity:
        raise CapbenchError(f"initial_sparsity {resolved['initial_sparsity']} exceeds the target {sparsity}")
    if name == "soft_movement" and not 0 <= resolved["tau_final"] < 1:
        raise CapbenchError(f"soft_movement: tau_final must be in [0, 1), got {resolved['tau_final']}")
    if name == "first_order" and resolved["min_heads_per_layer"] < 1:
        raise CapbenchError("first_order: min_heads_per_layer must be >= 1 (BERT attention needs one head)")
    return _CLASSES[name](float(sparsity), resolved)
