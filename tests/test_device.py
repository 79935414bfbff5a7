"""--device and --precision: resolved before any work, precision in the spec, device in the record; every
method (CAP included) trains and evaluates under bf16 autocast on the CPU."""

import pytest
import torch

from capbench.cli import main
from capbench.device import autocast, grad_scaler, resolve_device, resolve_precision
from capbench.errors import CapbenchError
from capbench.records import load_records
from capbench.training import TrainConfig


def test_devices_resolve_or_fail_in_one_line():
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert resolve_device("auto").type in ("cpu", "mps")
        with pytest.raises(CapbenchError, match="--device cuda: no CUDA GPU here; use --device cpu"):
            resolve_device("cuda")
        with pytest.raises(CapbenchError, match="--device cuda:1: no CUDA GPU here"):
            resolve_device("cuda:1")
    with pytest.raises(CapbenchError, match="expected cuda or cuda:N"):
        resolve_device("cuda:x")
    with pytest.raises(CapbenchError, match="expected one of auto, cpu"):
        resolve_device("tpu")


def test_precision_auto_is_fp32_on_cpu_and_fp16_needs_a_gpu():
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == "fp32"
    assert resolve_precision("bf16", cpu) == "bf16"
    with pytest.raises(CapbenchError, match="fp16 needs a CUDA GPU; use bf16 or fp32"):
        resolve_precision("fp16", cpu)
    with pytest.raises(CapbenchError, match="expected one of auto, fp32, bf16, fp16"):
        resolve_precision("int8", cpu)
    assert grad_scaler(cpu, "bf16") is None
    with autocast(cpu, "bf16"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    with autocast(cpu, "fp32"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


def test_fp32_keeps_existing_digests_and_bf16_is_another_cell():
    fp32 = TrainConfig().to_dict()
    assert "precision" not in fp32  # records written before --precision keep their digests
    assert TrainConfig(precision="bf16").to_dict()["precision"] == "bf16"


def test_every_method_runs_in_bf16_on_cpu(tiny_model_dir, tiny_glue, tmp_path, capsys):
    methods = "magnitude,movement,soft_movement,first_order,random,cap_magnitude,cap_movement,cap_soft,"
    methods += "cap_first_order,wanda,sparsegpt,obert"
    out = tmp_path / "run"
    args = ["run", "--tasks", "rte", "--preset", "smoke", "--model", str(tiny_model_dir), "--quiet"]
    args += ["--data-dir", str(tiny_glue), "--out", str(out), "--cache-dir", str(tmp_path / "cache")]
    args += ["--max-train-examples", "32", "--max-eval-examples", "16", "--batch-size", "8"]
    args += ["--methods", methods, "--sparsity", "0.5"]
    assert main([*args, "--precision", "fp16"]) == 2
    assert "fp16 needs a CUDA GPU" in capsys.readouterr().err
    assert main([*args, "--precision", "bf16", "--device", "cpu"]) == 0
    records = load_records(out)
    assert len(records) == 14  # dense, 12 methods, the one-shot control
    for record in records:
        assert record["status"] == "done", (record["spec"]["method"], record.get("error"))
        assert record["spec"]["train"]["precision"] == "bf16"
        assert record["device"]["type"] == "cpu"
        assert record["sparsity"]["linear"] == pytest.approx(record["spec"]["sparsity"], abs=0.02)


def test_dry_run_estimate_times_steps_and_projects_the_grid(tiny_model_dir, tiny_glue, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["run", "--tasks", "rte", "--preset", "smoke", "--model", str(tiny_model_dir), "--quiet"]
    args += ["--data-dir", str(tiny_glue), "--out", str(out), "--cache-dir", str(tmp_path / "cache")]
    args += ["--batch-size", "8", "--methods", "magnitude,cap_magnitude,wanda", "--sparsity", "0.5"]
    assert main([*args, "--estimate"]) == 2
    assert (
        "--estimate times a few steps instead of running: give it with --dry-run" in capsys.readouterr().err
    )
    assert main([*args, "--dry-run", "--estimate"]) == 0
    printed = capsys.readouterr().out
    lines = [line for line in printed.splitlines() if " steps × " in line]
    assert len(lines) == 5  # dense, magnitude, cap_magnitude, wanda and its one-shot control
    assert "capbench: 5 cells ≈" in printed and "on cpu" in printed
    assert not (out / "records").exists() or not list((out / "records").glob("*.json"))  # nothing ran


def test_emulated_bf16_on_this_cpu_is_named(monkeypatch):
    from capbench.device import slow_precision_warning

    cpu = torch.device("cpu")
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert "emulated" in slow_precision_warning(cpu, "bf16")
    assert slow_precision_warning(cpu, "fp32") is None
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    assert slow_precision_warning(cpu, "bf16") is None


def test_probes_and_speed_run_on_bf16_cells(tiny_model_dir, tiny_glue, tmp_path, monkeypatch):
    from capbench.speed import runner_hook
    from capbench.speed.options import BenchOptions

    quick = BenchOptions(
        repeats=2, min_repeats=2, layer_min_repeats=2, model_budget=1.0, layer_budget=0.1,
        model_min_seconds=0.0, breakdown=False, sentences=4,
    )  # fmt: skip
    monkeypatch.setattr(runner_hook, "RUN_OPTIONS", quick)
    out = tmp_path / "run"
    args = ["run", "--tasks", "rte", "--preset", "smoke", "--model", str(tiny_model_dir), "--quiet"]
    args += ["--data-dir", str(tiny_glue), "--out", str(out), "--cache-dir", str(tmp_path / "cache")]
    args += ["--max-train-examples", "32", "--max-eval-examples", "16", "--batch-size", "8"]
    args += ["--methods", "magnitude,cap_magnitude", "--sparsity", "0.5", "--precision", "bf16"]
    args += ["--probes", "bigram_shift", "--probe-sizes", "30,15,15", "--speed", "--max-seq-length", "64"]
    assert main(args) == 0
    pruned = [r for r in load_records(out) if r["spec"]["method"] != "dense"]
    assert {r["spec"]["method"] for r in pruned} == {"magnitude", "cap_magnitude"}
    for record in pruned:
        assert record["spec"]["train"]["precision"] == "bf16"
        assert "bigram_shift" in record["probes"]["tasks"]
        assert record["speed"]["summary"]["measured_speedup"] > 0
        assert set(record["speed"]["settings"]["model_token_counts"]) == {"1x64", "32x64"}  # CPU shapes
        # timed inside a quiet window: the run's other workers were asked to pause (capbench.quiet)
        assert (
            record["speed"]["quiet_window"]["requested"] is True and "idle" in record["speed"]["quiet_window"]
        )
