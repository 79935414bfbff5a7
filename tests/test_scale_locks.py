"""File locks between processes: shared work and cells reached by two workers at once are done once."""

import multiprocessing
import time

from capbench import distributed
from capbench.cli import build_parser
from capbench.executors.ray_executor import run_cell_claimed
from capbench.records import load_records
from capbench.runflow import cells_from_args
from capbench.runner import RunContext

FORK = multiprocessing.get_context("fork")


def _hold(path, log, name):
    with distributed.file_lock(path):
        with open(log, "a") as handle:
            handle.write(f"{name} in\n")
        time.sleep(0.3)
        with open(log, "a") as handle:
            handle.write(f"{name} out\n")


def test_file_lock_excludes_other_processes_and_is_reentrant(tmp_path):
    lock, log = tmp_path / "locks" / "x.lock", tmp_path / "log"
    workers = [FORK.Process(target=_hold, args=(lock, log, name)) for name in "ab"]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(30)
    lines = log.read_text().split()
    assert len(lines) == 8 and lines[1] == "in" and lines[3] == "out" and lines[0] == lines[2]  # no overlap
    with distributed.file_lock(lock), distributed.file_lock(lock):  # nested in one process: no deadlock
        pass


def _claim(spec, ctx, queue):
    queue.put((spec.cell_id, run_cell_claimed(spec, ctx, overwrite=False, after_cell=None)["outcome"]))


def test_workers_racing_on_a_cell_and_its_teacher_do_each_once(tiny_model_dir, tiny_glue, tmp_path):
    args = build_parser().parse_args(
        ["run", "--tasks", "rte", "--methods", "magnitude", "--sparsity", "0.5,0.9", "--preset", "smoke"]
        + ["--model", str(tiny_model_dir), "--data-dir", str(tiny_glue), "--batch-size", "8"]
    )
    cells, source = cells_from_args(args)
    first, second = cells[1:]  # pruned cells: both need the dense teacher, which nobody has trained yet
    ctx = RunContext(
        out_dir=tmp_path / "run", cache_dir=tmp_path / "cache", source=source, show_progress=False
    )
    queue = FORK.Queue()
    workers = [FORK.Process(target=_claim, args=(spec, ctx, queue)) for spec in (first, first, second)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(240)
    outcomes = sorted(queue.get(timeout=5) for _ in workers)
    assert outcomes == sorted([(first.cell_id, "done"), (first.cell_id, "skipped"), (second.cell_id, "done")])
    records = load_records(tmp_path / "run")
    assert sorted(r["cell_id"] for r in records) == sorted([first.cell_id, second.cell_id])
    assert all(r["status"] == "done" and r["executor"]["attempt"] == 1 for r in records)
    assert sorted(r["teacher"]["cached"] for r in records) == [False, True]  # trained once, then loaded
    assert len(list((tmp_path / "cache" / "dense").iterdir())) == 1  # no partial copies left
    assert not (tmp_path / "run" / ".locks" / f"{first.cell_id}.lock").exists()  # the lease was released
