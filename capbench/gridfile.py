"""Grid files: one `capbench run` over several blocks, each a (tasks x methods x sparsity x seeds) product.

A published grid is rarely one product: extra seeds at the headline sparsity, ablations at one task, probes
on some models only.  ``capbench run --grid FILE`` runs the union of the file's blocks (a cell named by
several blocks, a dense reference for instance, runs once); ``--dry-run`` lists what is left of all of it,
so one command regenerates a whole board.  The format is flat (no includes, no inheritance)::

    description: what the grid is for
    blocks:
      - tasks: mnli,qqp                 # each block: the grid flags of `capbench run`, without the dashes
        methods: magnitude,cap_magnitude
        sparsity: 0.5,0.9,0.97
        seeds: 0
      - tasks: mnli
        methods: magnitude,cap_magnitude
        sparsity: 0.97
        seeds: 1,2
        cap_option: [modules=snc+fic]   # repeated flags (method_option, cap_option) take a list
        probes: default

Everything else (preset, model, data, training length, device, output) comes from the command line and
applies to every block.  A grid key also given on the command line is an error: the file decides it.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from capbench.errors import CapbenchError

# block key -> (its command-line flag, the default where a block omits it: the flag's own default)
GRID_KEYS: dict[str, tuple[str, object]] = {
    "tasks": ("--tasks", None),
    "methods": ("--methods", "magnitude"),
    "sparsity": ("--sparsity", "0.5,0.9"),
    "seeds": ("--seeds", "0"),
    "method_option": ("--method-option", None),
    "cap_option": ("--cap-option", None),
    "probes": ("--probes", ""),
    "speed": ("--speed", False),
    "kd": ("--kd", "on"),
}
_LISTS = ("method_option", "cap_option")  # repeatable flags: a list of KEY=VALUE strings


def fill_defaults(values: dict) -> dict:
    """``values`` (grid keys, None where not given) with each missing key at its flag's default."""
    return {
        key: default if values.get(key) is None else values[key] for key, (_, default) in GRID_KEYS.items()
    }


def load_grid(path: str | Path) -> list[dict]:
    """The blocks of a grid file, each a dict of every grid key (defaults filled, comma lists as text).

    Raises CapbenchError (one line, naming the file and the fix) for a missing or unparsable file, no
    blocks, an unknown key, or a value of the wrong type."""
    path = Path(path)
    if not path.is_file():
        raise CapbenchError(f"--grid {path}: no such file; give a grid file (see capbench/gridfile.py)")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        where = getattr(error, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise CapbenchError(f"--grid {path}: not valid YAML{line}; fix the file") from None
    if not isinstance(data, dict) or not isinstance(data.get("blocks"), list) or not data["blocks"]:
        raise CapbenchError(f"--grid {path}: needs a non-empty 'blocks:' list of grid blocks")
    unknown = sorted(set(data) - {"description", "blocks"})
    if unknown:
        raise CapbenchError(f"--grid {path}: unknown top-level key(s) {unknown}; only description and blocks")
    return [_block(path, i, block) for i, block in enumerate(data["blocks"], start=1)]


def _block(path: Path, number: int, block) -> dict:
    where = f"--grid {path}: block {number}"
    if not isinstance(block, dict):
        raise CapbenchError(f"{where} is not a mapping of grid keys ({', '.join(GRID_KEYS)})")
    unknown = sorted(set(block) - set(GRID_KEYS))
    if unknown:
        raise CapbenchError(
            f"{where}: unknown key(s) {unknown}; a block sets {', '.join(GRID_KEYS)} "
            "(everything else goes on the command line)"
        )
    if "tasks" not in block:
        raise CapbenchError(f"{where}: no tasks; every block names its tasks")
    out = {}
    for key, value in block.items():
        if key in _LISTS:
            items = value if isinstance(value, list) else [value]
            if not all(isinstance(v, str) for v in items):
                raise CapbenchError(f"{where}: {key} takes KEY=VALUE strings, got {value!r}")
            out[key] = list(items)
        elif key == "kd" and isinstance(value, bool):  # YAML 1.1 reads a bare on/off as true/false
            out[key] = "on" if value else "off"
        elif key == "speed":
            if not isinstance(value, bool):
                raise CapbenchError(f"{where}: speed is true or false, got {value!r}")
            out[key] = value
        else:
            items = value if isinstance(value, list) else [value]
            if not items or not all(
                isinstance(v, str | int | float) and not isinstance(v, bool) for v in items
            ):
                raise CapbenchError(f"{where}: {key} is a comma-separated list, got {value!r}")
            out[key] = ",".join(str(v) for v in items)
    return fill_defaults(out)
