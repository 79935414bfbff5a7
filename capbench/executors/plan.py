"""Stage a grid for a parallel executor so that shared work is done once, before the cells that reuse it.

For every (task, seed, model, data, training) group the dense cell (or, if the grid has none, a job that
only trains and caches the dense teacher) runs first: it tokenizes the data and fine-tunes the teacher.
Every pruned cell of the group depends on it. CAP cells that share cached banks (same group,
representation and bank dtype) also depend on one job that builds those banks, when two or more of them
would otherwise race to build them; the first of those cells in grid order carries the banks' build cost in
its record, as it does in a local run, where it builds them. File locks in the runner make the caches safe without this plan; the
plan keeps workers from idling on those locks.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from capbench.spec import DENSE, CellSpec

CELL, TEACHER, BANKS = "cell", "teacher", "banks"


@dataclass
class Job:
    kind: str  # "cell" (writes a record) | "teacher" (caches the dense teacher) | "banks" (caches CAP banks)
    spec: CellSpec
    deps: list[int] = field(default_factory=list)  # indices of jobs that must finish first
    cell_index: int | None = None  # position in the grid, for "cell" jobs
    credit: int | None = None  # the banks job whose build cost this cell reports (it would have built them)


def bank_key(spec: CellSpec) -> str:
    """What decides a CAP cell's cached PrC/FiC banks beyond its group."""
    try:
        from capbench.cap.config import CapConfig

        cfg = CapConfig.from_options(spec.cap)
        return f"{cfg.representation}/{cfg.bank_dtype}"
    except Exception:  # an invalid CAP config fails in its cell, with its own error
        return json.dumps(spec.cap, sort_keys=True, default=str)


def plan_jobs(cells: list[CellSpec]) -> list[Job]:
    """Jobs in submission order; every job's dependencies come before it."""
    dense_cells = {cell.digest: i for i, cell in enumerate(cells) if cell.method == DENSE}
    jobs: list[Job] = []
    heads: dict[str, int] = {}

    def head(spec: CellSpec) -> int:
        group = spec.dense_reference().digest
        if group not in heads:
            if group in dense_cells:
                index = dense_cells[group]
                jobs.append(Job(CELL, cells[index], [], index))
            else:
                jobs.append(Job(TEACHER, spec.dense_reference()))
            heads[group] = len(jobs) - 1
        return heads[group]

    cap_counts: dict[tuple, int] = {}
    for cell in cells:
        if cell.method != DENSE and cell.cap is not None:
            key = (cell.dense_reference().digest, bank_key(cell))
            cap_counts[key] = cap_counts.get(key, 0) + 1
    banks: dict[tuple, int] = {}
    for index, cell in enumerate(cells):
        first = head(cell)
        if cell.method == DENSE:
            continue  # the dense cell is its group's head
        dep, credit = first, None
        if cell.cap is not None:
            key = (cell.dense_reference().digest, bank_key(cell))
            if cap_counts[key] > 1:
                if key not in banks:
                    jobs.append(Job(BANKS, cell, [first]))
                    banks[key] = credit = len(jobs) - 1
                dep = banks[key]
        jobs.append(Job(CELL, cell, [dep], index, credit))
    return jobs
