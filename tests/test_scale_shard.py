"""`--shard I/N` slices partition the grid exactly; the parallel executors' stage plan covers every cell once."""

import pytest

from capbench.cli import build_parser
from capbench.errors import CapbenchError
from capbench.executors.plan import BANKS, CELL, TEACHER, plan_jobs
from capbench.executors.ray_executor import credit_bank_build
from capbench.grid import shard
from capbench.runflow import cells_from_args
from capbench.spec import DENSE


def grid(tiny_model_dir, tiny_glue, *extra):
    args = build_parser().parse_args(
        [
            "run",
            "--tasks",
            "rte,sst2",
            "--methods",
            "magnitude,cap_movement,cap_magnitude",
            "--sparsity",
            "0.5,0.9",
            "--seeds",
            "0,1,2",
            "--preset",
            "smoke",
            "--model",
            str(tiny_model_dir),
            "--data-dir",
            str(tiny_glue),
            *extra,
        ]
    )
    return cells_from_args(args)[0]


def test_shards_partition_the_grid_exactly(tiny_model_dir, tiny_glue):
    cells = grid(tiny_model_dir, tiny_glue)
    ids = [c.cell_id for c in cells]
    assert len(ids) == 2 * 3 * (1 + 3 * 2) and len(set(ids)) == len(ids)
    for count in (1, 2, 3, 5, 7, len(ids), len(ids) + 3):
        slices = [[c.cell_id for c in shard(cells, i, count)] for i in range(count)]
        flat = [cell_id for part in slices for cell_id in part]
        assert sorted(flat) == sorted(ids) and len(flat) == len(set(flat))  # each cell in exactly one slice
        assert max(map(len, slices)) - min(map(len, slices)) <= 1  # balanced
        for part in slices:
            assert part == [i for i in ids if i in set(part)]  # grid order kept
    # `--shard I/N` is that slice, the same on every call (every array task expands the same grid).
    sliced = [c.cell_id for c in grid(tiny_model_dir, tiny_glue, "--shard", "1/3")]
    assert sliced == [c.cell_id for c in shard(cells, 1, 3)]
    assert sliced == [c.cell_id for c in shard(grid(tiny_model_dir, tiny_glue), 1, 3)]


@pytest.mark.parametrize("bad", ["3/3", "-1/2", "1/0", "a/b", "2"])
def test_bad_shard_is_a_clear_error(tiny_model_dir, tiny_glue, bad):
    with pytest.raises(CapbenchError, match="--shard"):
        grid(tiny_model_dir, tiny_glue, f"--shard={bad}")


def check_plan(cells):
    jobs = plan_jobs(cells)
    cell_jobs = [j for j in jobs if j.kind == CELL]
    assert sorted(j.cell_index for j in cell_jobs) == list(range(len(cells)))  # every cell exactly once
    for position, job in enumerate(jobs):
        assert all(d < position for d in job.deps)  # dependencies are submitted first
        if job.kind == CELL:
            assert job.spec is cells[job.cell_index]
        if job.kind == CELL and job.spec.method != DENSE:
            (dep,) = job.deps
            head = jobs[dep] if jobs[dep].kind != BANKS else jobs[jobs[dep].deps[0]]
            assert head.spec.digest == job.spec.dense_reference().digest  # after its group's teacher
            assert (jobs[dep].kind == BANKS) == (job.spec.cap is not None)
    return jobs


def test_plan_runs_shared_work_first(tiny_model_dir, tiny_glue):
    cells = grid(tiny_model_dir, tiny_glue)
    jobs = check_plan(cells)
    assert not [j for j in jobs if j.kind == TEACHER]  # the grid's dense cells train the teachers
    banks = [j for j in jobs if j.kind == BANKS]
    assert len(banks) == 2 * 3  # one per (task, seed): cap_movement and cap_magnitude share banks
    credited = [j for j in jobs if j.credit is not None]
    assert len(credited) == len(banks)
    for job in credited:  # the cell that builds the banks in a local run: the group's first CAP cell
        first = next(
            c for c in cells if c.cap and c.dense_reference().digest == job.spec.dense_reference().digest
        )
        assert job.spec is first and jobs[job.credit].kind == BANKS


def test_plan_of_a_shard_without_its_dense_cells_trains_the_teachers(tiny_model_dir, tiny_glue):
    cells = grid(tiny_model_dir, tiny_glue, "--shard", "1/2")
    jobs = check_plan(cells)
    teachers = [j for j in jobs if j.kind == TEACHER]
    dense = {c.digest for c in cells if c.method == DENSE}
    groups = {c.dense_reference().digest for c in cells}
    assert teachers and {j.spec.digest for j in teachers} == groups - dense


def test_bank_build_cost_is_credited_once_to_the_cell_that_loaded_them():
    record = {
        "cap": {
            "extra_forward_examples": {"prc": 0, "fic": 0, "snc": 24},
            "extra_forward_examples_total": 24,
            "bank_build_seconds": {"prc": 0.0, "fic": 0.0, "snc": 0.5},
            "bank_build_seconds_total": 0.5,
        }
    }
    credit_bank_build(record, {"prc": {"forward_examples": 96, "build_seconds": 0.123456}, "fic": {}})
    assert record["cap"]["extra_forward_examples"] == {"prc": 96, "fic": 0, "snc": 24}
    assert record["cap"]["extra_forward_examples_total"] == 120
    assert record["cap"]["bank_build_seconds"]["prc"] == 0.1235
    assert record["cap"]["bank_build_seconds_total"] == 0.6235
    credit_bank_build(
        record, {"prc": {"forward_examples": 96}}
    )  # a cell that built them itself keeps its own
    assert record["cap"]["extra_forward_examples"]["prc"] == 96
