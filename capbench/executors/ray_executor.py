"""`capbench run --executor ray [--ray-address ADDR]`: every cell a Ray task, records in the shared store.

The driver (the `capbench run` process) plans the grid (`capbench.executors.plan`), submits one task per
job with its resource needs and Ray's retries, and waits. A worker runs the cell with the same
`capbench.runner.run_cell` as a local run and writes the record itself, atomically, into `<out>/records`,
which must be a directory every node sees at the same path (as must `--cache-dir`, `--data-dir` and
`--model`). A worker runs a cell under its lease (`capbench.leases`, `<out>/.locks/<cell_id>.lock`, the same
lease a local `capbench run` takes), so two workers that reach the same cell (a Ray retry, a second driver,
a local run or a shard on the same store) run it once: the second one waits for the lease, then finds the
finished record and skips. The lease notes who runs the cell and which attempt it is; a retry takes over
the lease of an attempt that died (at once on the same host, after `leases.STALE_SECONDS` from another).

Tuning by environment (read by the driver):
    CAPBENCH_RAY_CPUS_PER_CELL  CPUs per task, and torch threads in it (default 1)
    CAPBENCH_RAY_GPUS_PER_CELL  GPUs per task (default 1 when the cluster has GPUs, else 0)
    CAPBENCH_RAY_MAX_RETRIES    retries of a task whose worker or node died (default 3)
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

from tqdm.auto import tqdm

from capbench import distributed, leases, records
from capbench.cell_protocol import execute_cell, is_finished
from capbench.checkpoint import DEFAULT_EVERY_SECONDS
from capbench.device import resolve_device
from capbench.errors import CapbenchError
from capbench.executors.plan import BANKS, CELL, plan_jobs
from capbench.record import Record
from capbench.runner import RunContext

CELL_LOCKS = leases.LEASES_DIR


def _import_ray():
    try:
        import ray
    except ImportError:
        raise CapbenchError(
            "--executor ray needs Ray: pip install 'capbench[ray]' (or pip install 'ray[default]')"
        ) from None
    return ray


def _env_number(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise CapbenchError(f"{name}={raw!r}: expected a number") from None


def task_options(ray, gpus_per_cell: float | None = None) -> dict:
    """Ray resources per cell: ``CAPBENCH_RAY_CPUS_PER_CELL`` (1); GPUs from ``--gpus-per-cell`` (fractions
    share a GPU between cells), else ``CAPBENCH_RAY_GPUS_PER_CELL``, else 1 on a cluster with GPUs, 0 without."""
    cpus = _env_number("CAPBENCH_RAY_CPUS_PER_CELL", 1)
    has_gpus = ray.cluster_resources().get("GPU", 0) > 0
    gpus = gpus_per_cell
    if gpus is None:
        gpus = _env_number("CAPBENCH_RAY_GPUS_PER_CELL", 1 if has_gpus else 0)
    if gpus > 0 and not has_gpus:
        raise CapbenchError(
            f"--gpus-per-cell {gpus:g}: the Ray cluster has no GPUs; use --gpus-per-cell 0 or join a GPU cluster"
        )
    return {
        "num_cpus": cpus,
        "num_gpus": gpus,
        "max_retries": int(_env_number("CAPBENCH_RAY_MAX_RETRIES", 3)),
        "retry_exceptions": False,  # a cell's own errors become failed records; retries are for lost workers
    }


# ------------------------------------------------------------------------------------------------ worker
_CONTEXTS: dict = {}
_PROVENANCE: dict = {}


def _worker_context(settings: dict) -> RunContext:
    """One RunContext per worker process and store, so tokenized splits stay loaded between tasks."""
    if os.path.isdir(settings["cwd"]):
        os.chdir(settings["cwd"])  # relative --model paths mean the same as on the driver
    import torch

    torch.set_num_threads(max(1, int(settings["threads"])))
    source = settings["source"]
    where = settings.get("device", "cpu")
    key = (
        settings["out_dir"],
        settings["cache_dir"],
        source.kind,
        source.root,
        settings["save_models"],
        where,
        settings.get("checkpoint_every"),
    )
    if key not in _CONTEXTS:
        _CONTEXTS[key] = RunContext(
            out_dir=Path(settings["out_dir"]),
            cache_dir=Path(settings["cache_dir"]),
            source=source,
            save_models=settings["save_models"],
            show_progress=False,
            # resolved in the worker: Ray gives a task with GPUs its own CUDA_VISIBLE_DEVICES
            device=resolve_device(where),
            checkpoint_every=settings.get("checkpoint_every", DEFAULT_EVERY_SECONDS),
        )
    return _CONTEXTS[key]


def _provenance() -> dict:
    if not _PROVENANCE:
        from capbench.runner import provenance_fields

        _PROVENANCE.update(provenance_fields())
    return dict(_PROVENANCE)


def _node() -> str:
    try:
        import ray

        return ray.util.get_node_ip_address()
    except Exception:
        return socket.gethostname()


def run_cell_claimed(
    spec, ctx: RunContext, overwrite: bool, after_cell, executor: str = "ray", adjust=None, wait: bool = True
) -> dict:
    """Run one cell through the cell protocol (capbench.cell_protocol) as a Ray worker.

    With `wait`, a cell whose lease another worker holds is waited for (its record is then usually found
    finished); without, the result's outcome is "held". ``adjust(record)`` may amend a fresh Record before
    it is written. A CapbenchError (bad input) comes back as outcome "error" for the driver to raise.
    """
    try:
        from capbench import runner

        result = execute_cell(
            spec,
            ctx,
            run=lambda s, c: runner.run_cell(s, c),  # looked up at call time (tests replace it)
            fail=runner.failed_cell,
            provenance=_provenance(),
            overwrite=overwrite,
            after_cell=after_cell,
            wait=wait,
            adjust=adjust,
            executor={"name": executor, "node": _node()},
        )
    except CapbenchError as error:
        return {
            "cell_id": spec.cell_id,
            "attempt": None,
            "record": None,
            "outcome": "error",
            "error": str(error),
        }
    return {
        "cell_id": spec.cell_id,
        "attempt": result.attempt,
        "record": result.record,
        "outcome": result.outcome,
    }


BANK_COSTS = (
    ("extra_forward_examples", "forward_examples"),
    ("extra_forward_passes", "forward_passes"),
    ("bank_build_seconds", "build_seconds"),
)


def credit_bank_build(record: dict, built: dict) -> None:
    """Report in ``record`` the cost of the CAP banks a banks job built for it and it loaded.

    In a local run the first CAP cell of a group builds the banks and its record shows that cost; here a
    banks job built them, and the same cell carries the cost, so the CAP table matches the local one.
    """
    cap = record.cap if isinstance(record, Record) else record.get("cap")
    if not cap:
        return
    for field, attribute in BANK_COSTS:
        values = cap.get(field)
        if not isinstance(values, dict):
            continue
        for role, cost in built.items():
            value = cost.get(attribute)
            if role in values and not values[role] and value:
                values[role] = round(float(value), 4) if isinstance(value, float) else value
        total = sum(values.values())
        cap[f"{field}_total"] = round(total, 4) if isinstance(total, float) else total


def execute_job(
    kind: str, spec, settings: dict, overwrite: bool, after_cell, credit: bool, *dependencies
) -> dict:
    """The body of every Ray task (dependencies are the results of the jobs this one waits for)."""
    from capbench import runner

    ctx = _worker_context(settings)
    if kind == CELL:
        built = next((d.get("built") for d in dependencies if credit and isinstance(d, dict)), None)
        adjust = (lambda record: credit_bank_build(record, built)) if built else None
        return run_cell_claimed(spec, ctx, overwrite, after_cell, adjust=adjust)
    try:  # shared work only: a failure here is met again, and recorded, by the cells that need it
        data = runner.prepare_data(spec, ctx)
        teacher, _ = runner.dense_teacher(spec, ctx, data)
        if kind == BANKS:
            model = runner.load_pretrained(spec, data.task)
            loss_fn = runner.build_loss_locked(spec, model, teacher, data, ctx)
            built = {
                role: {attribute: getattr(bank, attribute) for _, attribute in BANK_COSTS}
                for role, bank in getattr(loss_fn, "banks", {}).items()
            }
            if hasattr(loss_fn, "close"):
                loss_fn.close()
            return {"kind": kind, "ok": True, "built": built}
        return {"kind": kind, "ok": True}
    except Exception as error:
        return {"kind": kind, "ok": False, "error": f"{type(error).__name__}: {error}"}


# ------------------------------------------------------------------------------------------------ driver
def connect(ray, address: str | None, log_to_driver: bool = True) -> None:
    """Join the cluster at ``address``, or start a private local one (on the loopback interface) without.

    CAPBENCH_RAY_NODE_IP names this machine's node address explicitly (hosts with several interfaces).
    """
    kwargs: dict = {"address": address, "log_to_driver": log_to_driver}
    node_ip = os.environ.get("CAPBENCH_RAY_NODE_IP")
    if not address:
        kwargs.update(include_dashboard=False, _node_ip_address=node_ip or "127.0.0.1")
    elif node_ip:
        kwargs["_node_ip_address"] = node_ip
    ray.init(**kwargs)


def run_grid_ray(
    cells,
    ctx: RunContext,
    *,
    overwrite: bool = False,
    after_cell=None,
    address=None,
    device: str | None = None,
    gpus_per_cell: float | None = None,
) -> dict:
    """Run the grid as Ray tasks; returns the same counts as `run_grid`.  ``device``: the ``--device``
    text, resolved in each worker (default: ``cuda`` when the tasks get GPUs, else the driver's device
    type); ``gpus_per_cell``: see ``task_options``."""
    ray = _import_ray()
    if distributed.enabled():
        raise CapbenchError("--executor ray fans cells out over a cluster; do not start it under accelerate")
    out_dir, cache_dir = Path(ctx.out_dir).absolute(), Path(ctx.cache_dir).absolute()
    records.prepare_run_dir(out_dir)
    started_here = not ray.is_initialized()
    if started_here:
        connect(ray, address, log_to_driver=ctx.show_progress)
    counts = {"done": 0, "skipped": 0, "held": 0, "failed": 0}
    try:
        options = task_options(ray, gpus_per_cell)
        if device is None or device == "auto":
            device = "cuda" if options["num_gpus"] > 0 else ctx.device.type
        remote = ray.remote(execute_job).options(**options)
        settings = {
            "out_dir": str(out_dir),
            "cache_dir": str(cache_dir),
            "source": ctx.source,
            "save_models": ctx.save_models,
            "cwd": os.getcwd(),
            "threads": max(1, int(options["num_cpus"])),
            "device": device,
            "checkpoint_every": ctx.checkpoint_every,  # a retried task resumes the cell's training
        }
        jobs = plan_jobs(cells)
        refs = []
        for job in jobs:
            refs.append(
                remote.remote(
                    job.kind,
                    job.spec,
                    settings,
                    overwrite,
                    after_cell,
                    job.credit is not None,
                    *[refs[d] for d in job.deps],
                )
            )
        by_ref = {ref: job for ref, job in zip(refs, jobs) if job.kind == CELL}
        pending = list(by_ref)
        with tqdm(total=len(pending), desc="cells", disable=not ctx.show_progress, position=0) as bar:
            while pending:
                ready, pending = ray.wait(pending, num_returns=1)
                for ref in ready:
                    spec = by_ref[ref].spec
                    try:
                        result = ray.get(ref)
                    except ray.exceptions.RayError as error:  # the task's retries are spent
                        result = _lost(spec, out_dir, error)
                    if result["outcome"] == "error":
                        for other in pending:
                            ray.cancel(other, force=True)
                        raise CapbenchError(result["error"])
                    _ensure_visible(spec, out_dir, result)
                    counts["failed" if result["outcome"] in ("failed", "lost") else result["outcome"]] += 1
                    if result["outcome"] in ("failed", "lost"):
                        tqdm.write(f"cell {spec.cell_id} failed: {result.get('error') or _error_of(result)}")
                    bar.set_postfix_str(spec.cell_id)
                    bar.update(1)
    finally:
        if started_here:
            ray.shutdown()
    return counts


def _error_of(result: dict) -> str:
    return (result.get("record") or {}).get("error", "")


def _lost(spec, out_dir: Path, error: Exception) -> dict:
    """A cell whose every attempt died: a failed record, unless some attempt finished it after all."""
    from capbench.runner import failed_cell, provenance_fields

    if is_finished(spec, out_dir):
        return {"cell_id": spec.cell_id, "outcome": "done", "record": None}
    try:
        raise error
    except Exception as raised:
        record = failed_cell(spec, raised)
    record.finish(provenance_fields(), executor={"name": "ray", "node": None, "attempt": None})
    record.to_disk(records.record_path(out_dir, spec.cell_id))
    return {"cell_id": spec.cell_id, "outcome": "lost", "record": None, "error": record.error}


def _ensure_visible(spec, out_dir: Path, result: dict) -> None:
    """Without a shared filesystem the worker's record is not here: write the copy it returned."""
    record = result.get("record")
    if record is None:
        return
    path = records.record_path(out_dir, spec.cell_id)
    if records.read_record(path) != json.loads(json.dumps(record, sort_keys=True)):
        records.write_record(path, record)
