import re
from dataclasses import replace
from pathlib import Path

import pytest

import capbench.speed
from capbench.provenance import cpu_line, machine, machine_line
from capbench.speed.formats import FormatPolicy
from capbench.speed.options import BenchOptions
from capbench.speed.timing import Rounds


def test_options_normalise_token_counts_and_derive_policy_and_rounds():
    options = BenchOptions(token_counts=["1X8", 16, (2, 4)], model_token_counts=["2x8"], block_sizes=[4])
    assert options.token_counts == ("1x8", "1x16", "2x4")
    assert options.model_token_counts == ("2x8",) and options.block_sizes == (4,)
    assert options.policy == FormatPolicy(block_sizes=(4,), min_sparsity=0.5, max_block_density=0.5)
    assert options.rounds(1.5) == Rounds(
        repeats=40, warmup=2, budget=1.5, min_repeats=6, target_spread=0.03, confidence=0.95
    )
    assert options.calibration_rounds().min_repeats == 9 and options.calibration_rounds().budget == 0.75
    assert options.model_rounds().min_repeats == 6 and options.model_rounds().budget == 40.0
    assert replace(options, repeats=2).token_counts == options.token_counts
    hash(options)  # frozen: usable as a key
    with pytest.raises(ValueError, match="BATCHxSEQ"):
        BenchOptions(token_counts=["lots"])
    with pytest.raises(ValueError, match="at least 1"):
        BenchOptions(repeats=0)
    with pytest.raises(ValueError, match="threads must be at least 1"):
        BenchOptions(threads=0)
    with pytest.raises(ValueError, match="warmup"):
        BenchOptions(warmup=-1)


def test_one_machine_description_for_records_and_speed():
    described = machine()
    # what records' provenance, the speed table and the leaderboard header read
    assert {"cpu", "threads", "torch", "system", "mkl", "mkldnn", "cuda_device"} <= set(described)
    line = machine_line(described)
    assert line.startswith(
        f"{cpu_line(described)}, {described['threads']} threads, torch {described['torch']}"
    )
    assert line.startswith(described["cpu"])
    zen1 = {"cpu": "AMD EPYC", "cpu_family": "23", "cpu_model_id": "1", "cpu_capability": "AVX2"}
    assert cpu_line(zen1) == "AMD EPYC (family 23 model 1, AVX2)"
    assert cpu_line({"cpu": "AMD EPYC", "cpu_capability": "AVX512"}) == "AMD EPYC (AVX512)"
    assert machine_line({"cpu": "Test CPU", "threads": 2, "torch": "2.x"}) == "Test CPU, 2 threads, torch 2.x"


def test_speed_reads_the_core():
    """No model loading, weights hashing or BERT layout walk of speed's own: capbench.models,
    capbench.model_identity and capbench.layout do those."""
    leftovers = re.compile(
        r"from_pretrained|AutoModel|hashlib|sha256|encoder\.layer|attention\.self|intermediate\.dense"
        r"|output\.dense|/proc/cpuinfo"
    )
    for path in sorted(Path(capbench.speed.__file__).parent.glob("*.py")):
        found = leftovers.findall(path.read_text())
        assert not found, f"{path.name}: {found}"
