"""Cell leases (capbench.leases): one worker per cell on a shared store, stale leases taken over by exactly
one worker, temp files of live writers kept, failed records never replacing done ones.

The bad interleavings are driven step by step (an injectable clock, the takeover's steps called in turn),
not by racing timers.
"""

import fcntl
import json
import multiprocessing
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from test_runner import run_args

from capbench import distributed, leases, records, runner
from capbench.cli import build_parser, main
from capbench.executors.ray_executor import run_cell_claimed
from capbench.predictions import read_predictions, write_predictions
from capbench.records import load_records
from capbench.runflow import cells_from_args
from capbench.runner import RunContext
from capbench.spec import teacher_key

FORK = multiprocessing.get_context("fork")
T0 = 1_700_000_000.0  # a fixed "now" for leases written with an injected clock
LATER = T0 + leases.STALE_SECONDS + 1  # their heartbeat is stale by then


def at(t: float):
    return lambda: t


def dead_pid() -> int:
    """The PID of a process of this host that has exited (and been reaped)."""
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    return int(child.stdout)


def write_lease(path, **fields) -> dict:
    info = {
        "state": "running",
        "token": "f" * 32,
        "host": "elsewhere",
        "host_id": "0" * 12,
        "pid": 1,
        "pid_start": None,
        "attempt": 1,
        "started_at": "2024-01-01T00:00:00+00:00",
        "heartbeat_at": time.time(),
        **fields,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(info))
    return info


# ------------------------------------------------------------------------------------------ the lease
def test_a_second_claimant_fails_while_the_first_holds_the_lease(tmp_path):
    path = leases.lease_path(tmp_path, "cell")
    first = leases.try_claim(path, heartbeat=None)
    assert first is not None and first.attempt == 1
    assert leases.try_claim(path, heartbeat=None) is None
    assert leases.claim_cell(tmp_path, "cell", heartbeat=None) is None
    info = json.loads(path.read_text())
    assert info["token"] == first.token and info["state"] == "running"
    assert info["pid"] == os.getpid() and info["host"] and info["started_at"] and info["heartbeat_at"]
    assert leases.lease_state(path)[0] == "held"
    first.release()
    first.release()  # idempotent
    assert not path.exists()
    with leases.holding(tmp_path, "cell", heartbeat=None) as again:
        assert again is not None and again.attempt == 1
    assert not path.exists()


def test_a_fresh_lease_is_not_taken_over(tmp_path):
    path = leases.lease_path(tmp_path, "cell")
    holder = leases.try_claim(path, clock=at(T0), heartbeat=None)
    almost = T0 + leases.STALE_SECONDS - 1
    assert leases.try_claim(path, clock=at(almost), heartbeat=None) is None
    assert leases.lease_state(path, almost)[0] == "held"
    assert json.loads(path.read_text())["token"] == holder.token
    # a holder on another host is judged by its heartbeat alone, even with a PID that is not running here
    other = leases.lease_path(tmp_path, "other")
    write_lease(other, pid=dead_pid(), heartbeat_at=T0)
    assert leases.try_claim(other, clock=at(almost), heartbeat=None) is None


def test_a_stale_lease_is_taken_over_by_exactly_one_of_two_takers(tmp_path):
    path = leases.lease_path(tmp_path, "cell")
    old = leases.try_claim(path, clock=at(T0), heartbeat=None)  # its heartbeat stopped at T0
    seen = leases.observe(path)
    assert leases.is_stale(json.loads(seen[0]), seen[1], LATER)
    assert leases.lease_state(path, LATER)[0] == "stale"
    # Both takers judged the same content stale; now they act, one after the other.
    first = leases.take_over(path, seen, clock=at(LATER), heartbeat=None)
    # The second one moves the first one's new lease aside, sees it is not what it judged, puts it back.
    second = leases.take_over(path, seen, clock=at(LATER), heartbeat=None)
    assert first is not None and second is None
    info = json.loads(path.read_text())
    assert info["token"] == first.token and info["attempt"] == 2 and info["took_over"]["token"] == old.token
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # nothing moved aside is left behind
    assert leases.try_claim(path, clock=at(LATER), heartbeat=None) is None  # the winner's lease is fresh
    # The old holder (alive after all) learns it lost the cell, and its release leaves the new lease alone.
    assert not old.refresh() and old.lost
    old.release()
    assert json.loads(path.read_text())["token"] == first.token
    first.release()
    assert not path.exists()


def test_a_fresh_claimant_between_a_takers_rename_and_create_wins(tmp_path, monkeypatch):
    path = leases.lease_path(tmp_path, "cell")
    leases.try_claim(path, clock=at(T0), heartbeat=None)
    seen = leases.observe(path)
    real_create = leases._create_exclusive
    others = []

    def create_after_the_others(target, payload):
        if not others and Path(target) == path:  # the taker moved the stale lease aside: the others act now
            others.append(leases.take_over(path, seen, clock=at(LATER), heartbeat=None))  # finds nothing
            monkeypatch.setattr(leases, "_create_exclusive", real_create)
            others.append(leases.try_claim(path, clock=at(LATER), heartbeat=None))  # a free cell: claims it
        return real_create(target, payload)

    monkeypatch.setattr(leases, "_create_exclusive", create_after_the_others)
    taker = leases.take_over(path, seen, clock=at(LATER), heartbeat=None)
    assert taker is None and others[0] is None and others[1] is not None
    assert json.loads(path.read_text())["token"] == others[1].token


def _race(path, barrier, queue):
    barrier.wait()
    lease = leases.try_claim(path, clock=at(LATER), heartbeat=None)
    queue.put(lease.token if lease else None)
    # Stay alive until every racer has claimed: a holder that exits is dead, and its lease rightly stale.
    barrier.wait()


def test_processes_racing_for_a_stale_lease_leave_one_holder(tmp_path):
    path = leases.lease_path(tmp_path, "cell")
    leases.try_claim(path, clock=at(T0), heartbeat=None)
    barrier, queue = FORK.Barrier(6), FORK.Queue()
    workers = [FORK.Process(target=_race, args=(path, barrier, queue)) for _ in range(6)]
    for worker in workers:
        worker.start()
    tokens = [queue.get(timeout=60) for _ in workers]
    for worker in workers:
        worker.join(60)
    winners = [t for t in tokens if t]
    assert len(winners) == 1 and json.loads(path.read_text())["token"] == winners[0]
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_a_dead_holder_on_this_host_is_taken_over_at_once(tmp_path):
    path = leases.lease_path(tmp_path, "cell")
    write_lease(path, host_id=leases.host_id(), pid=dead_pid(), attempt=1)  # heartbeat: just now
    lease = leases.try_claim(path, heartbeat=None)
    assert lease is not None and lease.attempt == 2 and lease.previous["pid"] != os.getpid()
    lease.release()


def test_an_unparsable_lease_is_judged_by_its_age(tmp_path):
    path = leases.lease_path(tmp_path, "cell")
    path.parent.mkdir(parents=True)
    path.write_text("")  # caught between its creation and its first write
    assert leases.try_claim(path, heartbeat=None) is None
    old = time.time() - leases.STALE_SECONDS - 60
    os.utime(path, (old, old))
    lease = leases.try_claim(path, heartbeat=None)
    assert lease is not None
    lease.release()


def test_a_finished_note_of_the_older_flock_executor_holds_nothing(tmp_path):
    path = leases.lease_path(tmp_path, "cell")
    write_lease(path, state="finished", attempt=2)  # written just now, by an older capbench
    lease = leases.try_claim(path, heartbeat=None)
    assert lease is not None and lease.attempt == 1
    lease.release()


def test_the_heartbeat_thread_refreshes_the_lease_until_release(tmp_path):
    ticks = iter(range(1, 10_000))
    path = leases.lease_path(tmp_path, "cell")
    lease = leases.try_claim(path, clock=lambda: T0 + next(ticks), heartbeat=0.02)
    deadline = time.time() + 10
    while json.loads(path.read_text())["heartbeat_at"] < T0 + 3 and time.time() < deadline:
        time.sleep(0.02)
    assert json.loads(path.read_text())["heartbeat_at"] >= T0 + 3
    lease.release()
    assert not path.exists() and not lease._thread.is_alive()
    assert [p.name for p in path.parent.iterdir()] == []  # no heartbeat temp files left


def test_a_waiting_claim_gets_the_lease_once_it_is_released(tmp_path):
    path = leases.lease_path(tmp_path, "cell")
    holder = leases.try_claim(path, heartbeat=None)
    threading.Timer(0.2, holder.release).start()
    waiter = leases.claim(path, wait=True, poll=0.02, heartbeat=None)
    assert waiter is not None and json.loads(path.read_text())["token"] == waiter.token
    waiter.release()


# ---------------------------------------------------------------------------------- temp files, records
def test_temp_files_name_their_target_and_writer(tmp_path, monkeypatch):
    names = []
    real_replace = os.replace

    def spy(src, dst):
        names.append(os.path.basename(src))
        return real_replace(src, dst)

    from capbench import jsonio

    monkeypatch.setattr(jsonio.os, "replace", spy)
    records.write_json(tmp_path / "rte-magnitude-0.5-seed0-0123456789.json", {"a": 1})
    assert records.parse_temp_name(names[0]) == (
        "rte-magnitude-0.5-seed0-0123456789.json",
        leases.writer_tag(),
    )
    assert records.parse_temp_name(".x-0.5.json.k2j3h4l1.tmp") == ("x-0.5.json", None)  # older capbench
    assert records.parse_temp_name("x.json") is None


def test_prepare_run_dir_keeps_a_live_writers_temp_file_and_drops_abandoned_ones(tmp_path):
    out = tmp_path / "run"
    folder = out / "records"
    folder.mkdir(parents=True)
    now = time.time()
    old = now - leases.STALE_SECONDS - 60
    me, elsewhere, dead = leases.writer_tag(), "4242-ffffffffffff", f"{dead_pid()}-{leases.host_id()}"

    def temp(name, age=now):
        path = folder / name
        path.write_text("{")
        os.utime(path, (age, age))
        return path

    live = leases.try_claim(leases.lease_path(out, "live-0.5"), heartbeat=None)
    leases.try_claim(leases.lease_path(out, "stale-0.5"), clock=at(T0), heartbeat=None)
    keep = [
        temp(f".live-0.5.json.{me}.aaaaaaaa.tmp", age=old),  # its writer's lease is held: keep, however old
        temp(f".live-0.5.predictions.npz.{me}.bbbbbbbb.tmp"),
        temp(f".free-0.5.json.{elsewhere}.cccccccc.tmp"),  # no lease, writer on another host, recent
        temp(".legacy-0.5.json.dddddddd.tmp"),  # an older capbench's name, recent
    ]
    drop = [
        temp(f".stale-0.5.json.{me}.eeeeeeee.tmp"),  # its cell's lease is stale
        temp(f".free-0.5.json.{elsewhere}.ffffffff.tmp", age=old),  # no lease and old
        temp(f".free-0.5.json.{dead}.gggggggg.tmp"),  # no lease and its writer has exited
        temp(".legacy-0.5.json.hhhhhhhh.tmp", age=old),
    ]
    checkpoints = out / records.CHECKPOINTS_DIR
    checkpoints.mkdir()
    folder = checkpoints  # a cell's training checkpoint, written the same way
    keep.append(temp(f".live-0.5.pt.{me}.iiiiiiii.tmp", age=old))
    drop.append(temp(f".free-0.5.pt.{dead}.jjjjjjjj.tmp"))
    records.prepare_run_dir(out)
    assert [p.exists() for p in keep] == [True] * len(keep)
    assert [p.exists() for p in drop] == [False] * len(drop)
    live.release()


def test_a_failed_record_never_replaces_a_done_one(tmp_path):
    from capbench.record import Record
    from capbench.spec import CellSpec

    spec = CellSpec(
        task="rte", method="magnitude", sparsity=0.5, seed=0, model="m", preset="smoke", data={},
        max_train_examples=8, max_eval_examples=8, max_seq_length=32, data_sample_seed=1, train={},
    )  # fmt: skip

    def done(run):
        main = {"name": "accuracy", "split": "validation", "value": 0.5}
        return Record.for_spec(spec, "done", metrics={}, main_metric=main, extra={"run": run})

    failed = Record.for_spec(spec, "failed", error="boom")
    path = tmp_path / "cell.json"
    assert records.write_record(path, done(1))
    assert not records.write_record(path, failed)
    assert records.read_record(path)["run"] == 1
    assert records.write_record(path, done(2).to_dict())  # --overwrite, measurements
    other = tmp_path / "other.json"
    assert records.write_record(other, failed) and records.write_record(other, done(3))
    assert records.read_record(other)["status"] == "done"


# ------------------------------------------------------------------------------------ grids and workers
def fake_record(spec, **extra) -> dict:
    return {
        "schema_version": records.SCHEMA_VERSION,
        "cell_id": spec.cell_id,
        "spec": spec.to_dict(),
        "spec_hash": spec.digest,
        "status": "done",
        "metrics": {"validation": {"accuracy": 0.5}},
        "main_metric": {"name": "accuracy", "split": "validation", "value": 0.5},
        **extra,
    }


@pytest.fixture
def grid(tiny_model_dir, tiny_glue, tmp_path):
    """CLI arguments of a 3-cell grid (dense, magnitude 0.5 and 0.9) and its cells, as `capbench run` plans them."""
    out = tmp_path / "run"
    args = run_args(tiny_model_dir, tiny_glue, out, tmp_path / "cache", "--methods", "magnitude")
    args += ["--sparsity", "0.5,0.9", "--no-save-models"]
    cells, source = cells_from_args(build_parser().parse_args(args))
    return args, cells, out, source


def test_run_grid_skips_a_cell_another_worker_holds(grid, monkeypatch, capsys):
    args, cells, out, _ = grid
    ran = []

    def run_cell(spec, ctx):
        lease = json.loads(leases.lease_path(out, spec.cell_id).read_text())
        assert lease["pid"] == os.getpid() and lease["state"] == "running"  # run under this worker's lease
        ran.append(spec.cell_id)
        return fake_record(spec)

    monkeypatch.setattr(runner, "run_cell", run_cell)
    other = leases.try_claim(leases.lease_path(out, cells[1].cell_id), heartbeat=None)  # a fake worker
    assert main(args) == 0
    assert "3 cells: 2 run, 0 already finished, 1 held by another worker, 0 failed" in capsys.readouterr().out
    assert ran == [cells[0].cell_id, cells[2].cell_id]
    assert not records.record_path(out, cells[1].cell_id).exists()
    assert sorted(p.name for p in (out / leases.LEASES_DIR).iterdir()) == [f"{cells[1].cell_id}.lock"]
    other.release()
    assert main(args) == 0
    assert "3 cells: 1 run, 2 already finished, 0 failed" in capsys.readouterr().out
    assert ran[-1] == cells[1].cell_id and len(load_records(out)) == 3
    assert list((out / leases.LEASES_DIR).iterdir()) == []  # every lease released


def test_a_record_finished_elsewhere_meanwhile_is_kept(grid, monkeypatch, capsys):
    args, cells, out, _ = grid

    def run_cell(spec, ctx):
        if spec == cells[1]:  # a worker that took the cell over from us finishes it first
            records.write_record(records.record_path(out, spec.cell_id), fake_record(spec, by="other"))
        return fake_record(spec, by="me")

    monkeypatch.setattr(runner, "run_cell", run_cell)
    assert main(args) == 0
    assert "3 cells: 2 run, 1 already finished, 0 failed" in capsys.readouterr().out
    assert records.read_record(records.record_path(out, cells[1].cell_id))["by"] == "other"
    assert records.read_record(records.record_path(out, cells[2].cell_id))["by"] == "me"


def test_a_failed_rerun_does_not_replace_a_done_record(grid, monkeypatch, capsys):
    args, cells, out, _ = grid
    monkeypatch.setattr(runner, "run_cell", lambda spec, ctx: fake_record(spec))
    assert main(args) == 0
    done = {p.name: p.read_bytes() for p in (out / "records").glob("*.json")}

    def broken(spec, ctx):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(runner, "run_cell", broken)
    assert main([*args, "--overwrite"]) == 1
    assert "0 run, 0 already finished, 3 failed" in capsys.readouterr().out
    assert {p.name: p.read_bytes() for p in (out / "records").glob("*.json")} == done


def test_an_interrupt_or_error_releases_the_lease(grid, monkeypatch):
    args, cells, out, _ = grid

    def interrupted(spec, ctx):
        assert leases.lease_path(out, spec.cell_id).exists()
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "run_cell", interrupted)
    assert main(args) == 130
    assert list((out / leases.LEASES_DIR).iterdir()) == []
    assert not list((out / "records").glob("*.json"))


def test_ray_worker_cells_use_the_same_leases(grid, monkeypatch):
    _, cells, out, source = grid
    ctx = RunContext(out_dir=out, cache_dir=out.parent / "cache", source=source, show_progress=False)
    monkeypatch.setattr(runner, "run_cell", lambda spec, ctx: fake_record(spec))
    spec = cells[1]
    path = leases.lease_path(out, spec.cell_id)
    other = leases.try_claim(path, heartbeat=None)
    assert run_cell_claimed(spec, ctx, False, None, wait=False)["outcome"] == "held"
    other.release()
    # A Ray retry after its first attempt died mid-cell takes the dead attempt's lease over at once.
    write_lease(path, host_id=leases.host_id(), pid=dead_pid(), attempt=1)
    result = run_cell_claimed(spec, ctx, False, None)
    assert result["outcome"] == "done" and result["attempt"] == 2
    assert records.read_record(records.record_path(out, spec.cell_id))["executor"]["attempt"] == 2
    assert not path.exists()
    assert run_cell_claimed(spec, ctx, False, None)["outcome"] == "skipped"

    # A record another worker finished while this one ran the cell is kept.
    def finished_meanwhile(spec, ctx):
        records.write_record(records.record_path(out, spec.cell_id), fake_record(spec, by="other"))
        return fake_record(spec, by="me")

    monkeypatch.setattr(runner, "run_cell", finished_meanwhile)
    result = run_cell_claimed(cells[2], ctx, False, None)
    assert result["outcome"] == "skipped" and result["record"]["by"] == "other"
    assert records.read_record(records.record_path(out, cells[2].cell_id))["by"] == "other"


def _with_predictions(spec, out, value: float, **extra) -> dict:
    """A fake done record whose per-example predictions (written as the runner does) hold `value`."""
    rows = {
        "validation": {"idx": [0, 1], "label": [0, 1], "prediction": [0, 1], "logits": [[value, 0.0]] * 2}
    }
    ref = write_predictions(out / "records", spec.cell_id, rows)
    return fake_record(spec, predictions=ref, **extra)


def _predictions_files(out, cell_id) -> list[str]:
    return sorted(p.name for p in (out / "records").glob(f"{cell_id}.*.predictions.npz"))


def test_a_replaced_record_takes_its_predictions_file_with_it(grid, monkeypatch):
    args, cells, out, _ = grid
    monkeypatch.setattr(runner, "run_cell", lambda spec, ctx: _with_predictions(spec, out, 1.0))
    assert main(args) == 0
    first = {c.cell_id: _predictions_files(out, c.cell_id) for c in cells}
    assert all(len(names) == 1 for names in first.values())
    os.utime(out / "records" / first[cells[2].cell_id][0], (T0, T0))  # written long before the rerun

    def rerun(spec, ctx):
        if spec == cells[2]:  # a worker that took the cell over writes its own file while this one runs
            _with_predictions(spec, out, 3.0)
        return _with_predictions(spec, out, 2.0)

    monkeypatch.setattr(runner, "run_cell", rerun)
    assert main([*args, "--overwrite"]) == 0
    for cell in cells:
        record = records.read_record(records.record_path(out, cell.cell_id))
        names = _predictions_files(out, cell.cell_id)
        assert record["predictions"]["file"] in names and first[cell.cell_id][0] not in names
        assert len(names) == (
            2 if cell == cells[2] else 1
        )  # the other worker's file is not this one's to remove
        read_predictions(record, out / "records")


def test_a_run_whose_record_is_not_kept_removes_its_predictions_file(grid, monkeypatch, capsys):
    args, cells, out, _ = grid

    def run_cell(spec, ctx):
        if spec == cells[1]:  # a worker that took the cell over from us finishes it first
            other = _with_predictions(spec, out, 3.0, by="other")
            records.write_record(records.record_path(out, spec.cell_id), other)
        return _with_predictions(spec, out, 1.0, by="me")

    monkeypatch.setattr(runner, "run_cell", run_cell)
    assert main(args) == 0
    kept = records.read_record(records.record_path(out, cells[1].cell_id))
    assert kept["by"] == "other"
    assert _predictions_files(out, cells[1].cell_id) == [kept["predictions"]["file"]]
    read_predictions(kept, out / "records")


def test_a_cell_whose_teacher_another_worker_trains_is_put_off(
    tiny_model_dir, tiny_glue, tmp_path, monkeypatch
):
    out, cache = tmp_path / "run", tmp_path / "cache"
    args = run_args(tiny_model_dir, tiny_glue, out, cache, "--methods", "magnitude", "--sparsity", "0.5")
    args += ["--seeds", "0,1", "--no-save-models"]
    cells, _ = cells_from_args(build_parser().parse_args(args))
    assert [c.seed for c in cells] == [0, 0, 1, 1]
    lock = cache / ".locks" / f"{runner.teacher_lock_name(teacher_key(cells[0]))}.lock"
    lock.parent.mkdir(parents=True)
    ran = []

    def run_cell(spec, ctx):
        ran.append(spec.seed)
        return fake_record(spec)

    monkeypatch.setattr(runner, "run_cell", run_cell)
    with open(lock, "a+") as other_worker:  # another process's open file: it trains seed 0's teacher
        fcntl.flock(other_worker.fileno(), fcntl.LOCK_EX)
        assert main(args) == 0
    assert ran == [1, 1, 0, 0]  # seed 1's cells first, rather than idling behind seed 0's teacher

    ran.clear()
    (cache / "dense" / teacher_key(cells[0])).mkdir(parents=True)
    (cache / "dense" / teacher_key(cells[0]) / "config.json").write_text("{}")
    with open(lock, "a+") as other_worker:  # a lock held, but the teacher is cached: nothing to wait for
        fcntl.flock(other_worker.fileno(), fcntl.LOCK_EX)
        assert main([*args, "--overwrite"]) == 0
    assert ran == [0, 0, 1, 1]
    assert main([*args, "--overwrite"]) == 0 and ran[4:] == [0, 0, 1, 1]  # no lock held: grid order


def test_a_cache_lock_is_busy_only_while_another_holder_has_it(tmp_path):
    assert not distributed.cache_lock_busy(tmp_path, "work") and not distributed.cache_lock_busy(None, "work")
    with distributed.cache_lock(tmp_path, "work"):
        assert not distributed.cache_lock_busy(tmp_path, "work")  # this process's own lock
        with open(tmp_path / ".locks" / "work.lock", "a+") as other:
            with pytest.raises(BlockingIOError):
                fcntl.flock(other.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    with open(tmp_path / ".locks" / "work.lock", "a+") as other:
        fcntl.flock(other.fileno(), fcntl.LOCK_EX)
        assert distributed.cache_lock_busy(tmp_path, "work")
    assert not distributed.cache_lock_busy(tmp_path, "work")
