"""`accelerate launch --multi_gpu --num_processes 2 -m capbench run ...` on CPU (gloo): one cell trained
data-parallel gives the masks of a single-process run with the same global batch and seed, the replicas
agree, CAP banks are built once and shared, and rank 0 alone writes the records."""

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_runner import run_args

from capbench.cli import main
from capbench.records import load_records

if importlib.util.find_spec("accelerate") is None:
    pytest.skip("accelerate is not installed: pip install 'capbench[accelerate]'", allow_module_level=True)

REPO = Path(__file__).resolve().parents[1]


def _accelerate() -> list[str]:
    cli = Path(sys.executable).with_name("accelerate")
    if cli.is_file():
        return [str(cli)]
    found = shutil.which("accelerate")
    if found is None:
        pytest.skip("the accelerate command is not on PATH")
    return [found]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _model(run: Path, method: str) -> dict:
    (path,) = (run / "models").glob(f"rte-{method}-*/model.safetensors")
    return load_file(str(path))


def test_two_process_cell_matches_single_process_masks(tiny_model_dir, tiny_glue, tmp_path):
    grid = ["--sparsity", "0.9", "--seeds", "0"]  # global batch: --batch-size 8 from run_args
    single = tmp_path / "single"
    single_args = run_args(tiny_model_dir, tiny_glue, single, tmp_path / "cache-1")
    assert main([*single_args, *grid, "--methods", "magnitude"]) == 0

    parallel = tmp_path / "parallel"
    cache = tmp_path / "cache-2"
    args = run_args(tiny_model_dir, tiny_glue, parallel, cache)
    args += [*grid, "--methods", "magnitude,cap_magnitude"]  # CAP too: its banks under two ranks
    launch = [*_accelerate(), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1"]
    launch += ["--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port())]
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    # torch's elastic launcher makes a torchelastic_* folder per run and leaves it: keep it under tmp_path
    (tmp_path / "tmp").mkdir()
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), TMPDIR=str(tmp_path / "tmp"))
    done = subprocess.run(
        [*launch, "-m", "capbench", *args], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    assert done.stdout.count("capbench: 3 cells: 3 run") == 1  # rank 0 reports, rank 1 stays quiet

    records = {r["spec"]["method"]: r for r in load_records(parallel)}
    assert set(records) == {"dense", "magnitude", "cap_magnitude"}
    assert not [p.name for p in (parallel / "records").iterdir() if p.name.startswith(".")]
    for record in records.values():
        assert record["status"] == "done"
        assert record["distributed"] == {"world_size": 2, "backend": "gloo"}
    # Every rank ended with the same weights and masks (train() compares the replicas' digests).
    assert records["magnitude"]["train"]["data_parallel"]["replica_digest"]
    assert records["cap_magnitude"]["train"]["data_parallel"]["replica_digest"]
    # The CAP banks were built once (by whichever rank came first) and loaded by the other.
    assert len(list((cache / "cap_banks").glob("*/meta.json"))) == 2

    reference = {r["spec"]["method"]: r for r in load_records(single)}
    for method in ("dense", "magnitude"):
        assert records[method]["spec_hash"] == reference[method]["spec_hash"]
        assert records[method]["metrics"] == reference[method]["metrics"]
        assert records[method]["sparsity"] == reference[method]["sparsity"]
        assert records[method]["train"]["steps"] == reference[method]["train"]["steps"]
    for name, value in records["magnitude"]["train"]["final_loss_terms"].items():
        assert value == pytest.approx(reference["magnitude"]["train"]["final_loss_terms"][name], abs=1e-5)

    ours, theirs = _model(parallel, "magnitude"), _model(single, "magnitude")
    prunable = [k for k, v in theirs.items() if v.dim() == 2 and ".encoder." in k]
    assert prunable
    for key in prunable:
        assert torch.equal(ours[key] != 0, theirs[key] != 0), key  # identical masks
    for key, value in theirs.items():
        torch.testing.assert_close(ours[key], value, rtol=1e-4, atol=1e-6)


def test_the_process_group_backend_is_gloo_without_cuda_and_nccl_beside_it_with(monkeypatch):
    import torch

    from capbench import distributed

    monkeypatch.delenv("CAPBENCH_DIST_BACKEND", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert distributed.backend() == "gloo"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.distributed, "is_nccl_available", lambda: True)
    assert distributed.backend() == "cpu:gloo,cuda:nccl"  # gradients on the GPU over NCCL, objects over gloo
    monkeypatch.setenv("CAPBENCH_DIST_BACKEND", "gloo")
    assert distributed.backend() == "gloo"
