"""Method names in the grid -> (pruning criterion, loss composer). CAP wraps a criterion with its losses."""

from __future__ import annotations

from capbench.distill import DistillationLoss, KDConfig
from capbench.errors import CapbenchError
from capbench.spec import DENSE, CellSpec
from capbench.training import CrossEntropyLoss

# CAP over each criterion (Xu et al. 2022): the name in the grid -> the pruning criterion it wraps.
CAP_METHODS = {
    "cap_magnitude": "magnitude",
    "cap_movement": "movement",
    "cap_soft": "soft_movement",
    "cap_first_order": "first_order",
}


def pruning_methods() -> dict[str, str]:
    from capbench.pruning.methods import METHODS

    return dict(METHODS)


def all_methods() -> dict[str, str]:
    methods = pruning_methods()
    cap = {name: f"CAP (contrastive pruning) over {criterion}" for name, criterion in CAP_METHODS.items()}
    return {**methods, **cap}


def criterion_of(method: str) -> str:
    return CAP_METHODS.get(method, method)


def check_methods(names: list[str]) -> None:
    known = all_methods()
    for name in names:
        if name not in known:
            raise CapbenchError(f"unknown method {name!r}; known methods: {', '.join(sorted(known))}")


def method_spec(
    method: str, overrides: dict, kd: bool, cap_overrides: dict
) -> tuple[dict, dict | None, dict | None]:
    """Resolved (method_options, kd, cap) for a method: documented defaults plus the user's overrides.

    Raises CapbenchError, naming ``--method-option KEY=VALUE`` or ``--cap-option KEY=VALUE``, when an
    override is unknown to the method or outside its domain (see OPTIONS in capbench.pruning.methods and
    RULES in capbench.cap.config)."""
    from capbench.pruning.methods import check_options, method_defaults

    criterion = criterion_of(method)
    options = {**method_defaults(criterion), **overrides}
    check_options(criterion, options, overrides, flag="--method-option", label=method)
    if method in CAP_METHODS:
        from capbench.cap.config import CapConfig

        base = CapConfig.from_options(cap_defaults(method))
        cap = CapConfig.from_options(cap_overrides, base=base, flag="--cap-option").to_dict()
        return options, None, cap
    return options, (KDConfig().to_dict() if kd else None), None


def grid_method_specs(
    methods: list[str], overrides: dict, kd: bool, cap_overrides: dict, sparsities: list[float]
) -> dict[str, tuple[dict, dict | None, dict | None]]:
    """``method_spec`` of every method of a grid, every option checked before any cell runs."""
    from capbench.pruning.methods import check_initial_sparsity

    if cap_overrides and not any(method in CAP_METHODS for method in methods):
        from capbench.cap.config import CapConfig

        CapConfig.from_options(cap_overrides, flag="--cap-option")  # a bad option says what is wrong first
        given = " ".join(f"{key}={value}" for key, value in cap_overrides.items())
        raise CapbenchError(
            f"--cap-option {given}: no CAP method in --methods, so it would be ignored; "
            f"add one of {', '.join(CAP_METHODS)} or drop --cap-option"
        )
    specs = {method: method_spec(method, overrides, kd, cap_overrides) for method in methods}
    for method, (options, _, _) in specs.items():
        check_initial_sparsity(method, options, sparsities, overrides, flag="--method-option")
    return specs


def cap_defaults(method: str) -> dict:
    from capbench.cap.config import CapConfig

    return (
        CapConfig.structured_defaults() if criterion_of(method) == "first_order" else CapConfig()
    ).to_dict()


def cap_variant(spec: dict) -> str:
    """The CAP settings of a record that differ from its method's defaults, e.g. 'modules=prc,fic'."""
    cap = spec.get("cap")
    if not cap:
        return ""
    defaults = cap_defaults(spec["method"])
    if cap.get("snapshot_on") == "pruning_step":
        cap = {"snapshot_gap": "none", **cap}  # records from before the option took every pruning step
    changed = []
    for key in sorted(cap):
        value = cap[key]
        if value != defaults.get(key) and not (isinstance(value, list) and tuple(value) == defaults.get(key)):
            shown = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else value
            changed.append(f"{key}={shown}")
    return " ".join(changed)


def build_pruner(spec: CellSpec):
    from capbench.pruning.methods import make_pruner

    return make_pruner(criterion_of(spec.method), spec.sparsity, dict(spec.method_options))


def build_loss(spec: CellSpec, model, teacher, data, ctx):
    """The loss composer of a cell; build it before the pruner touches `model` (CAP encodes PrC from it)."""
    if spec.method == DENSE:
        return CrossEntropyLoss()
    if spec.cap is not None:
        from capbench.cap.runtime import cap_loss_for_cell

        return cap_loss_for_cell(spec, model, teacher, data, ctx)
    if spec.kd is not None:
        return DistillationLoss(teacher, KDConfig(**spec.kd))
    return CrossEntropyLoss()
