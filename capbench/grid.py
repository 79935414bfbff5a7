"""Expand `--tasks x --methods x --sparsity x --seeds` into cell specs, dense references first."""

from __future__ import annotations

from capbench.errors import CapbenchError
from capbench.spec import DENSE, CellSpec


def parse_sparsities(text: str) -> list[float]:
    """The fractions of --sparsity, each once (0.5 and 0.50 are one value), in first-seen order."""
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
        if value not in values:
            values.append(value)
    if not values:
        raise CapbenchError("--sparsity is empty; give fractions such as 0.5,0.9")
    return values


MAX_SEED = 2**32 - 1  # numpy's limit


def parse_seeds(text: str) -> list[int]:
    """The integers of --seeds, each once, in first-seen order."""
    seeds = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            seed = int(part)
        except ValueError:
            raise CapbenchError(
                f"--seeds {part!r} is not an integer; give comma-separated integers such as 0,1,2"
            ) from None
        if not 0 <= seed <= MAX_SEED:
            raise CapbenchError(f"--seeds {seed}: seeds must be integers from 0 to {MAX_SEED}, e.g. 0,1,2")
        if seed not in seeds:
            seeds.append(seed)
    if not seeds:
        raise CapbenchError("--seeds is empty; give comma-separated integers such as 0,1,2")
    return seeds


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """--shard I/N as (I, N), or None for the whole grid."""
    if not text:
        return None
    index, sep, count = text.partition("/")
    try:
        if not sep:
            raise ValueError(text)
        index, count = int(index), int(count)
    except ValueError:
        raise CapbenchError(
            f"--shard {text!r}: expected I/N such as 0/4 (slice I of N, 0 <= I < N)"
        ) from None
    if count < 1:
        raise CapbenchError(f"--shard {text}: N must be at least 1, e.g. 0/4")
    if not 0 <= index < count:
        raise CapbenchError(f"--shard {text}: I must be from 0 to N-1, i.e. 0/{count} to {count - 1}/{count}")
    return index, count


def check_probe_sizes(text: str) -> None:
    """--probe-sizes: three positive integers, train,dev,test examples per generated probe."""
    parts = [part.strip() for part in text.split(",")]
    if len(parts) == 3 and all(part.isdigit() and int(part) >= 1 for part in parts):
        return
    raise CapbenchError(
        f"--probe-sizes {text!r}: expected three positive integers train,dev,test such as 1200,300,600"
    )


def expand_grid(
    base: dict, data: dict, methods, sparsities, seeds, method_specs, cell_options=None, controls=()
) -> list[CellSpec]:
    """`data` maps each task to its data identity; `method_specs[name]` gives (method_options, kd, cap)
    for each method; `base` holds the shared fields. `cell_options(task, method, sparsity, options)`, if
    given, returns a cell's method options (a preset's per-task values, ``Preset.cell_options``).
    ``controls``: (method, (method_options, kd, cap)) pairs added after the methods at every (task, seed,
    sparsity), e.g. ``methods.regime_controls``."""
    cells = []
    for task, identity in data.items():
        for seed in seeds:
            cells.append(CellSpec(task=task, method=DENSE, sparsity=0.0, seed=seed, data=identity, **base))
            for method, (options, kd, cap) in [*((m, method_specs[m]) for m in methods), *controls]:
                for sparsity in sparsities:
                    cells.append(
                        CellSpec(
                            task=task,
                            method=method,
                            sparsity=sparsity,
                            seed=seed,
                            method_options=(
                                cell_options(task, method, sparsity, options) if cell_options else options
                            ),
                            kd=kd,
                            cap=cap,
                            data=identity,
                            **base,
                        )
                    )
    unique: dict[str, CellSpec] = {}  # each cell once, should a list name one value twice
    for cell in cells:
        unique.setdefault(cell.cell_id, cell)
    return list(unique.values())


def shard(cells: list[CellSpec], index: int, count: int) -> list[CellSpec]:
    """A deterministic 1/count slice of the grid (for SLURM array jobs): cells by position modulo count."""
    if count < 1 or not 0 <= index < count:
        raise CapbenchError(f"--shard {index}/{count}: need 0 <= I < N")
    return [cell for position, cell in enumerate(cells) if position % count == index]
