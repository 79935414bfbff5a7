"""Pruning methods: one module per method, each holding its pruner, its cited defaults, its option rules and
one ``register_method`` call. This module is the registry and what every method shares: the sparsity
schedule's defaults and rules, option checking, and ``make_pruner``.

Adding a method (see README "Methods")::

    from capbench.pruning.base import UnstructuredPruner
    from capbench.pruning.criteria import Criterion
    from capbench.pruning.pruners import SCHEDULE, register_method

    class AbsSum(Criterion):          # a score per weight, higher = kept
        name = "abs_sum"
        def scores(self, module):
            return module.weight.detach().abs().sum(1, keepdim=True).expand_as(module.weight)

    class AbsSumPruner(UnstructuredPruner):
        name = "abs_sum"
        def __init__(self, sparsity, options):
            super().__init__(sparsity, options, AbsSum(), hard=True)

    register_method(AbsSumPruner, "rows by the sum of |w|", {**SCHEDULE, "scope": "local", "update_every": 1})

after which ``--methods abs_sum`` and ``--methods cap_abs_sum`` run, and ``capbench ls methods`` lists both.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from capbench.errors import CapbenchError
from capbench.options import OptionRule, coerce, shown, yaml_text_hint
from capbench.pruning.base import Pruner, parse_pattern
from capbench.pruning.schedule import DEFAULT_COOLDOWN, DEFAULT_WARMUP
from capbench.registry import Registry

BUILTIN = ("magnitude", "movement", "soft_movement", "first_order", "random", "wanda", "sparsegpt", "obert")

# Shared by every method: the sparsity schedule of the movement-pruning README commands (Sanh et al. 2020,
# huggingface/transformers examples/research_projects/movement-pruning: initial_threshold=1 i.e. no initial
# sparsity, initial_warmup=1 and final_warmup=2 times warmup_steps=5400 of about 55k steps: 10% warmup, 20%
# cool-down).
SCHEDULE = {"warmup": DEFAULT_WARMUP, "cooldown": DEFAULT_COOLDOWN, "initial_sparsity": 0.0}

# Starting points (issue "Today's baselines"): prune during fine-tuning from the pre-trained model, or prune
# the dense fine-tuned model once and fine-tune it with KD.  Results of the two regimes are never averaged.
PRETRAINED, FINETUNED = "pretrained", "finetuned"
STARTS = (PRETRAINED, FINETUNED)
# Sparsity patterns of the one-shot post-training methods (Wanda main.py ``--sparsity_type``; SparseGPT
# opt.py ``--prunen --prunem``).
PATTERNS = ("unstructured", "2:4", "4:8")

# Rules of the options several methods share; a method's own options declare their rules at registration.
SHARED_RULES: dict[str, OptionRule] = {
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
    "start": OptionRule(
        "choice",
        "the starting point: prune during fine-tuning from the pre-trained model (pretrained), or prune the "
        "dense fine-tuned model (the cached teacher) once, then fine-tune it with KD (finetuned)",
        choices=STARTS,
    ),
    "finetune_steps": OptionRule(
        "optional_int",
        "optimizer steps of KD fine-tuning after a one-shot pruning (none: the preset's steps; 0: none)",
        0,
    ),
    "calibration_size": OptionRule("int", "rows of the train split sampled (seeded) for calibration", 1),
    "pattern": OptionRule(
        "choice",
        "unstructured, or N:M (N of every M consecutive weights of a row pruned; the sparsity must be N/M)",
        choices=PATTERNS,
    ),
}


@dataclass(frozen=True)
class PruningMethod:
    """A registered method: its pruner class, one-line description, documented defaults, option rules."""

    name: str
    pruner: type[Pruner]
    description: str
    defaults: dict
    rules: dict[str, OptionRule] = field(default_factory=dict)
    # Options added after cells were published: left out of a cell's spec while at their default (which
    # reproduces the behaviour from before they existed), so those cells keep their digests.
    omit_at_default: tuple[str, ...] = ()
    # Where the method and its defaults come from (paper and code), shown by `capbench ls methods`.
    source: str = ""

    @property
    def structured(self) -> bool:
        """Removes whole heads / neurons (``Pruner.structured``): CAP's structured defaults, global scope."""
        return bool(getattr(self.pruner, "structured", False))

    def rule(self, key: str) -> OptionRule:
        return self.rules.get(key) or SHARED_RULES[key]


def _load_builtins(_registry) -> None:
    import importlib

    for name in BUILTIN:
        importlib.import_module(f"capbench.pruning.pruners.{name}")


PRUNING_METHODS: Registry[PruningMethod] = Registry(
    "pruning method", "methods", loader=_load_builtins, first=BUILTIN
)


def register_method(
    pruner: type[Pruner],
    description: str,
    defaults: dict,
    rules: dict[str, OptionRule] | None = None,
    name: str | None = None,
    replace: bool = False,
    omit_at_default: tuple[str, ...] = (),
    source: str = "",
) -> PruningMethod:
    """Register a pruning method; every default needs a rule (its own in ``rules`` or a SHARED_RULES one).
    ``omit_at_default``: options left out of cell specs while at their default (see ``spec_options``)."""
    name = name or pruner.name
    if name.startswith("cap_"):
        raise CapbenchError(
            f"pruning method {name!r}: cap_ names are CAP over a method; name the method only"
        )
    rules = dict(rules or {})
    missing = [key for key in defaults if key not in rules and key not in SHARED_RULES]
    if missing:
        raise CapbenchError(f"pruning method {name!r}: no rule for option(s) {', '.join(missing)}")
    unknown = [key for key in omit_at_default if key not in defaults]
    if unknown:
        raise CapbenchError(f"pruning method {name!r}: omit_at_default names no option {', '.join(unknown)}")
    method = PruningMethod(
        name, pruner, description, copy.deepcopy(defaults), rules, tuple(omit_at_default), source
    )
    return PRUNING_METHODS.register(name, method, replace=replace)


def get_method(name: str) -> PruningMethod:
    return PRUNING_METHODS.get(name)


def method_names() -> list[str]:
    return PRUNING_METHODS.names()


def descriptions() -> dict[str, str]:
    return {name: method.description for name, method in PRUNING_METHODS.items()}


def option_rules() -> dict[str, OptionRule]:
    """Every option any registered method takes -> its rule."""
    rules = dict(SHARED_RULES)
    for _, method in PRUNING_METHODS.items():
        rules.update({key: method.rule(key) for key in method.defaults})
    return rules


def method_defaults(name: str) -> dict:
    """The documented default options of a method (a copy)."""
    return copy.deepcopy(get_method(name).defaults)


def spec_options(name: str, options: dict) -> dict:
    """A method's resolved options as a cell spec holds them: those of ``omit_at_default`` left out while at
    their default (``make_pruner`` fills them back in), so cells from before such an option keep their digest."""
    method = get_method(name)
    return {
        key: value
        for key, value in options.items()
        if not (key in method.omit_at_default and value == method.defaults[key])
    }


def start_of(options: dict) -> str:
    """The starting point of a cell's method options: ``finetuned`` or ``pretrained`` (the default)."""
    return options.get("start", PRETRAINED)


def is_oneshot(name: str, options: dict) -> bool:
    """True when the method prunes once and then keeps its masks (Wanda, SparseGPT, ``oneshot=true``)."""
    return bool(getattr(get_method(name).pruner, "post_training", False) or options.get("oneshot", False))


def regime(name: str, options: dict) -> str:
    """The regime a cell's rows are labelled with and never averaged across: ``gradual`` (pruned during
    fine-tuning from the pre-trained model), ``one-shot`` (pruned once at the pre-trained model, then
    fine-tuned) or ``one-shot on fine-tuned`` (the dense fine-tuned model pruned once, then KD)."""
    if start_of(options) == FINETUNED:
        return "one-shot on fine-tuned"
    return "one-shot" if is_oneshot(name, options) else "gradual"


def coerce_options(name: str, overrides: dict) -> dict:
    """``--method-option`` values typed by the method's rules (unknown keys left for ``check_options``)."""
    method = get_method(name)
    return {
        key: coerce(value, method.rule(key).kind) if key in method.defaults else value
        for key, value in overrides.items()
    }


def check_options(
    name: str, options: dict, overrides: dict | None = None, flag: str | None = None, label: str | None = None
) -> dict:
    """Check a method's resolved options (defaults plus overrides) against its rules; return them with
    whole-number options as ints. With ``flag`` (the command line), errors name ``flag KEY=VALUE`` for the
    keys in ``overrides``; ``label`` is the method's name in the grid (e.g. cap_magnitude)."""
    method = get_method(name)
    defaults = method.defaults
    label = label or name
    overrides = overrides or {}

    def where(key) -> str:
        if flag and key in overrides:
            return f"{flag} {key}={shown(overrides[key])}"
        return f"{label}: option {key}={shown(options[key])}"

    unknown = [key for key in options if key not in defaults]
    if unknown and not flag:
        raise CapbenchError(
            f"unknown option(s) {', '.join(sorted(unknown))} for pruning method {name}; "
            f"valid: {', '.join(defaults)}"
        )
    for key in unknown:
        elsewhere = [m for m, other in PRUNING_METHODS.items() if key in other.defaults]
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
        rule = method.rule(key)
        if not rule.accepts(value):
            got = "an empty value" if value is None else repr(value)
            about = "" if rule.kind == "choice" else f" ({key}: {rule.doc})"
            raise CapbenchError(
                f"{where(key)}: {label}'s {key} must be {rule.describe()}; got {got}{about}"
                f"{yaml_text_hint(value, rule.kind)}"
            )
        if rule.kind == "int":
            resolved[key] = int(value)
    _check_window(resolved, overrides, flag, label)
    _check_start(name, resolved, overrides, flag, label)
    return resolved


def _check_start(name: str, resolved: dict, overrides: dict, flag: str | None, label: str) -> None:
    """start=finetuned prunes the fine-tuned model once: the method must be one-shot."""
    if start_of(resolved) == FINETUNED and not is_oneshot(name, resolved):
        if "oneshot" in resolved:
            fix = "add --method-option oneshot=true"
        else:
            fix = f"{name} prunes gradually during fine-tuning: use start=pretrained"
        where = f"{flag} start=finetuned" if flag and "start" in overrides else f"{label}: start=finetuned"
        raise CapbenchError(f"{where}: {label} is not one-shot here; {fix}")


def check_pattern(
    name: str, options: dict, sparsities, overrides: dict | None = None, flag: str | None = None
) -> None:
    """An N:M pattern fixes the sparsity at N/M: every target of the grid must equal it."""
    pattern = options.get("pattern", "unstructured")
    if pattern == "unstructured":
        return
    n, m = parse_pattern(pattern)
    wrong = [s for s in sparsities if abs(s - n / m) > 1e-9]
    if wrong:
        given = flag and "pattern" in (overrides or {})
        where = f"{flag} pattern={pattern}" if given else f"{name}: pattern {pattern}"
        raise CapbenchError(
            f"{where}: prunes exactly {n / m:g} of the weights, but --sparsity has "
            f"{', '.join(f'{s:g}' for s in wrong)}; run it with --sparsity {n / m:g}"
        )


def _check_window(resolved: dict, overrides: dict, flag: str | None, label: str) -> None:
    warmup, cooldown = resolved.get("warmup", 0), resolved.get("cooldown", 0)
    if isinstance(warmup, float) and isinstance(cooldown, float) and warmup < 1 and cooldown < 1:
        if warmup + cooldown > 1:
            pair = f"warmup={shown(warmup)} cooldown={shown(cooldown)}"
            given = flag and ("warmup" in overrides or "cooldown" in overrides)
            raise CapbenchError(
                f"{f'{flag} {pair}' if given else f'{label}: {pair}'}: the pruning warmup and cooldown "
                f"fractions add up to {warmup + cooldown:g}; together they must be at most 1, "
                "e.g. warmup=0.1 cooldown=0.2"
            )


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
    method = get_method(name)
    if isinstance(sparsity, bool) or not isinstance(sparsity, int | float) or not 0 <= sparsity < 1:
        raise CapbenchError(f"sparsity must be in [0, 1), got {sparsity!r} (0.9 means 90% of weights pruned)")
    given = {k: v for k, v in (options or {}).items() if v is not None}
    resolved = check_options(name, {**method.defaults, **given})
    if resolved.get("scope") == "auto":  # one-shot on the fine-tuned model: per matrix, as Wanda/SparseGPT
        oneshot_global = resolved.get("oneshot") and start_of(resolved) != FINETUNED
        resolved["scope"] = "global" if oneshot_global or method.structured else "local"
    if resolved.get("initial_sparsity", 0.0) > sparsity:
        raise CapbenchError(f"initial_sparsity {resolved['initial_sparsity']} exceeds the target {sparsity}")
    return method.pruner(float(sparsity), resolved)
