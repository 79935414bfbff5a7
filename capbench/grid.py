"""Expand `--tasks x --methods x --sparsity x --seeds` into cell specs, dense references first."""

from __future__ import annotations

from capbench.errors import CapbenchError
from capbench.spec import DENSE, CellSpec


def parse_sparsities(text: str) -> list[float]:
    values = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            value = float(part)
        except ValueError:
            raise CapbenchError(
                f"--sparsity {part!r} is not a number; give fractions such as 0.5,0.9"
            ) from None
        if not 0.0 <= value < 1.0:
            raise CapbenchError(
                f"--sparsity {value:g} is outside [0, 1); sparsity is the fraction of weights removed, e.g. 0.9"
            )
        values.append(value)
    if not values:
        raise CapbenchError("--sparsity is empty; give fractions such as 0.5,0.9")
    return values


def parse_seeds(text: str) -> list[int]:
    try:
        return [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise CapbenchError(f"--seeds {text!r}: give comma-separated integers such as 0,1,2") from None


def expand_grid(base: dict, data: dict, methods, sparsities, seeds, method_specs) -> list[CellSpec]:
    """`data` maps each task to its data identity; `method_specs[name]` gives (method_options, kd, cap)
    for each method; `base` holds the shared fields."""
    cells = []
    for task, identity in data.items():
        for seed in seeds:
            cells.append(CellSpec(task=task, method=DENSE, sparsity=0.0, seed=seed, data=identity, **base))
            for method in methods:
                options, kd, cap = method_specs[method]
                for sparsity in sparsities:
                    cells.append(
                        CellSpec(
                            task=task,
                            method=method,
                            sparsity=sparsity,
                            seed=seed,
                            method_options=options,
                            kd=kd,
                            cap=cap,
                            data=identity,
                            **base,
                        )
                    )
    return cells


def shard(cells: list[CellSpec], index: int, count: int) -> list[CellSpec]:
    """A deterministic 1/count slice of the grid (for SLURM array jobs): cells by position modulo count."""
    if count < 1 or not 0 <= index < count:
        raise CapbenchError(f"--shard {index}/{count}: need 0 <= I < N")
    return [cell for position, cell in enumerate(cells) if position % count == index]
