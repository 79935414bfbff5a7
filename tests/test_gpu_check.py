"""benchmarks/gpu_check.py, the one prepared GPU command, runs on CPU too (tiny shapes), so it cannot rot."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.py"


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_gpu_check_runs_every_part_on_cpu(tmp_path):
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--shape", "tiny", "--out", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((tmp_path / "gpu_check.json").read_text())
    assert results["environment"]["type"] == "cpu"
    assert results["tests"]["status"] == "passed", results["tests"]
    cells = {c["method"]: c for c in results["cells"]}
    module = _module()
    assert set(cells) == {"dense", *module.METHODS, "magnitude (one-shot control)"}
    for method, cell in cells.items():
        assert cell["status"] == "done", (method, cell)
        if method != "dense":
            assert cell["sparsity"] == pytest.approx(0.5, abs=0.05), method
    variants = results["throughput"]["variants"]
    assert set(variants) == {"dense", "masked", "cap"}
    assert all(v["tokens_per_second"] > 0 for v in variants.values())
    assert variants["dense"]["x_dense_time"] == 1.0
    for kind in ("2:4", "0.9"):
        model = results["speed"]["models"][kind]
        assert "CUDA only" in model["unavailable"]["semi_structured_2to4"]
        assert model["layer_speedups"]["csr"]["1x32"] > 0
        assert set(model["whole_model"]) == {"1x32", "8x32", "32x32"}
    table = done.stdout[done.stdout.index("gpu_check: cpu") :]
    assert "cells: 14/14 done" in table and "training throughput" in table and "speed (" in table


@pytest.mark.slow
def test_gpu_check_fails_when_a_method_fails(tmp_path, monkeypatch, capsys):
    module = _module()
    real = module.run_cell

    def broken(spec, ctx):
        if spec.method == "wanda":
            raise RuntimeError("planted fault")
        return real(spec, ctx)

    monkeypatch.setattr(module, "run_cell", broken)
    assert module.main(["--device", "cpu", "--parts", "cells", "--out", str(tmp_path)]) == 1
    printed = capsys.readouterr().out
    assert "cells: 13/14 done" in printed
    assert "gpu_check: FAILED: wanda" in printed
    assert module.main(["--device", "cpu", "--parts", "cells,nonsense"]) == 2
