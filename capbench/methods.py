"""Method names in the grid -> (pruner, loss composer, kd, cap): the one place a grid method is resolved.

A grid method is a registered pruning method (``capbench.pruning.pruners``: magnitude, movement, ...) or
``cap_<method>``: CAP (Xu et al. 2022) composed with any registered method, its losses wrapped around that
method's pruner. ``cap_soft`` is the published name of CAP over ``soft_movement`` (kept so that records keep
their row labels); ``cap_soft_movement`` is read as ``cap_soft``.
"""

from __future__ import annotations

from capbench.distill import DistillationLoss, KDConfig
from capbench.errors import CapbenchError
from capbench.registry import unknown_error
from capbench.spec import DENSE, CellSpec
from capbench.training import CrossEntropyLoss

CAP_PREFIX = "cap_"
# Published CAP names that are not cap_<method>: name -> the method it wraps.
CAP_ALIASES = {"cap_soft": "soft_movement"}


def _pruners():
    from capbench.pruning import pruners

    return pruners


def cap_name(criterion: str) -> str:
    """The grid name of CAP over ``criterion``: its alias if it has one, else cap_<criterion>."""
    aliases = {wrapped: name for name, wrapped in CAP_ALIASES.items()}
    return aliases.get(criterion, CAP_PREFIX + criterion)


def resolve(method: str) -> tuple[str, bool] | None:
    """(the pruning method, whether CAP wraps it) for a grid name; None when it names no registered method."""
    registered = _pruners().PRUNING_METHODS
    if method in registered:
        return method, False
    criterion = CAP_ALIASES.get(method) or (
        method[len(CAP_PREFIX) :] if method.startswith(CAP_PREFIX) else ""
    )
    return (criterion, True) if criterion in registered else None


def is_cap(method: str) -> bool:
    resolved = resolve(method)
    return bool(resolved and resolved[1])


def criterion_of(method: str) -> str:
    """The pruning method a grid method prunes with (itself, or the one CAP wraps)."""
    resolved = resolve(method)
    return resolved[0] if resolved else method


def canonical(method: str) -> str:
    """The grid name a method is recorded under (``cap_soft_movement`` -> ``cap_soft``)."""
    criterion, cap = resolve(method) or (method, False)
    return cap_name(criterion) if cap else method


def pruning_methods() -> dict[str, str]:
    return _pruners().descriptions()


def all_methods() -> dict[str, str]:
    """Every grid method -> its description: each registered method and CAP over each."""
    methods = pruning_methods()
    cap = {cap_name(name): f"CAP (contrastive pruning) over {name}" for name in methods}
    return {**methods, **cap}


def check_methods(names: list[str]) -> list[str]:
    """The canonical grid names of ``names`` (each once); an unknown name fails in one line."""
    for name in names:
        if resolve(name) is None:
            raise unknown_error("method", name, sorted(all_methods()))
    return list(dict.fromkeys(canonical(name) for name in names))


def grid_methods(names: list[str]) -> list[str]:
    """The pruning methods of a ``--methods`` list, canonical and each once (``check_methods``), with
    ``dense`` dropped: every (task, seed) of a grid gets its dense reference anyway, so ``--methods dense``
    runs only those. An unknown name fails in one line."""
    return check_methods([name for name in names if name != DENSE])


def cap_defaults(method: str) -> dict:
    """CAP's default settings for a grid method: the structured ones when its pruner is structured."""
    from capbench.cap.config import CapConfig

    resolved = resolve(method)
    structured = bool(resolved) and _pruners().get_method(resolved[0]).structured
    return CapConfig.defaults(structured).to_dict()


def method_spec(
    method: str, overrides: dict, kd: bool, cap_overrides: dict
) -> tuple[dict, dict | None, dict | None]:
    """Resolved (method_options, kd, cap) for a method: documented defaults plus the user's overrides.

    Raises CapbenchError, naming ``--method-option KEY=VALUE`` or ``--cap-option KEY=VALUE``, when an
    override is unknown to the method or outside its domain (the rules of its module in
    capbench.pruning.pruners, and RULES in capbench.cap.config)."""
    pruners = _pruners()
    criterion = criterion_of(method)
    overrides = pruners.coerce_options(criterion, overrides)
    options = {**pruners.method_defaults(criterion), **overrides}
    pruners.check_options(criterion, options, overrides, flag="--method-option", label=method)
    options = pruners.spec_options(criterion, options)  # new options at their default: digests unchanged
    if is_cap(method):
        from capbench.cap.config import CapConfig

        base = CapConfig.from_options(cap_defaults(method))
        cap = CapConfig.from_options(cap_overrides, base=base, flag="--cap-option").to_dict()
        return options, None, cap
    return options, (KDConfig().to_dict() if kd else None), None


def grid_method_specs(
    methods: list[str], overrides: dict, kd: bool, cap_overrides: dict, sparsities: list[float]
) -> dict[str, tuple[dict, dict | None, dict | None]]:
    """``method_spec`` of every method of a grid, every option checked before any cell runs."""
    pruners = _pruners()
    if cap_overrides and not any(is_cap(method) for method in methods):
        from capbench.cap.config import CapConfig

        CapConfig.from_options(cap_overrides, flag="--cap-option")  # a bad option says what is wrong first
        given = " ".join(f"{key}={value}" for key, value in cap_overrides.items())
        raise CapbenchError(
            f"--cap-option {given}: no CAP method in --methods, so it would be ignored; "
            f"add one of {', '.join(cap_name(name) for name in pruners.method_names())} or drop --cap-option"
        )
    specs = {method: method_spec(method, overrides, kd, cap_overrides) for method in methods}
    for method, (options, _, _) in specs.items():
        pruners.check_initial_sparsity(method, options, sparsities, overrides, flag="--method-option")
        pruners.check_pattern(method, options, sparsities, overrides, flag="--method-option")
    return specs


CONTROL = "magnitude"


def regime_controls(specs: dict, kd: bool) -> list[tuple[str, tuple[dict, dict | None, dict | None]]]:
    """The control rows a grid gets for its one-shot-on-fine-tuned cells (issue "Today's baselines"): one-shot
    magnitude (per matrix) on the same fine-tuned teacher with the same fine-tuning budget and KD, one per
    distinct ``finetune_steps`` among those cells.  Returns (grid method, (options, kd, cap)) pairs."""
    pruners = _pruners()
    budgets = []
    for method, (options, _, _) in specs.items():
        full = {**pruners.method_defaults(criterion_of(method)), **options}
        if pruners.start_of(full) == pruners.FINETUNED and full.get("finetune_steps") not in budgets:
            budgets.append(full.get("finetune_steps"))
    controls = []
    for steps in budgets:
        overrides = {"oneshot": True, "start": pruners.FINETUNED, "finetune_steps": steps}
        controls.append((CONTROL, method_spec(CONTROL, overrides, kd, {})))
    return controls


def cap_variant(spec: dict) -> str:
    """The CAP settings of a record that differ from its method's defaults, e.g. 'modules=prc,fic'."""
    cap = spec.get("cap")
    if not cap:
        return ""
    defaults = cap_defaults(spec["method"])
    if cap.get("snapshot_on") == "pruning_step":
        cap = {"snapshot_gap": "none", **cap}  # records from before the option took every pruning step
    # Records from before anchor dropout (issue 15) encoded the anchor without it: say so in their label.
    cap = {"anchor_dropout": False, **cap}
    changed = []
    for key in sorted(cap):
        value = cap[key]
        if value != defaults.get(key) and not (isinstance(value, list) and tuple(value) == defaults.get(key)):
            shown = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else value
            changed.append(f"{key}={shown}")
    return " ".join(changed)


def build_pruner(spec: CellSpec):
    return _pruners().make_pruner(criterion_of(spec.method), spec.sparsity, dict(spec.method_options))


def build_loss(spec: CellSpec, model, teacher, data, ctx, teacher_logits=None):
    """The loss composer of a cell; build it before the pruner touches `model` (CAP encodes PrC from it).
    ``teacher_logits``: the teacher's cached logits (``capbench.teacher_logits.TeacherLogits``) for KD."""
    if spec.method == DENSE:
        return CrossEntropyLoss()
    if spec.cap is not None:
        from capbench.cap.runtime import cap_loss_for_cell

        return cap_loss_for_cell(spec, model, teacher, data, ctx, teacher_logits)
    if spec.kd is not None:
        return DistillationLoss(teacher, KDConfig(**spec.kd), teacher_logits)
    return CrossEntropyLoss()
