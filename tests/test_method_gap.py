"""docs/experiments/method_gap.py picks each row's cells by regime (NAME/oneshot, NAME/gradual)."""

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "docs" / "experiments" / "method_gap.py"


@pytest.fixture(scope="module")
def gap():
    spec = importlib.util.spec_from_file_location("method_gap", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _record(method, sparsity, seed, oneshot=None, status="done"):
    options = {} if oneshot is None else {"oneshot": oneshot}
    spec = {"task": "sst2", "method": method, "sparsity": sparsity, "seed": seed, "method_options": options}
    return {"status": status, "spec": spec, "name": f"{method}-{sparsity}-{seed}-{oneshot}"}


RECORDS = [
    _record("dense", 0.0, 0),
    _record("magnitude", 0.9, 0, oneshot=False),
    _record("magnitude", 0.9, 0, oneshot=True),
    _record("magnitude", 0.9, 1, oneshot=True),
    _record("magnitude", 0.5, 0, oneshot=True),
    _record("wanda", 0.9, 0),  # one-shot by its defaults: no oneshot option in the spec, as in real records
    _record("wanda", 0.9, 1, status="failed"),
]


def test_regime_picks_the_one_shot_or_the_gradual_cells(gap):
    oneshot = gap._cells(RECORDS, "sst2", "magnitude/oneshot", 0.9)
    assert {s: r["name"] for s, r in oneshot.items()} == {
        0: "magnitude-0.9-0-True",
        1: "magnitude-0.9-1-True",
    }
    gradual = gap._cells(RECORDS, "sst2", "magnitude/gradual", 0.9)
    assert {s: r["name"] for s, r in gradual.items()} == {0: "magnitude-0.9-0-False"}
    assert set(gap._cells(RECORDS, "sst2", "wanda/oneshot", 0.9)) == {0}
    assert gap._cells(RECORDS, "sst2", "wanda/gradual", 0.9) == {}


def test_bare_name_takes_every_regime_and_dense_any_sparsity(gap):
    assert set(gap._cells(RECORDS, "sst2", "wanda", 0.9)) == {0}  # the failed seed 1 is left out
    assert set(gap._cells(RECORDS, "sst2", "dense", 0.9)) == {0}


@pytest.mark.parametrize(
    ("method", "message"),
    [("magnitude", "seed 0 has a one-shot and a gradual cell"), ("magnitude/x", "unknown regime 'x'")],
)
def test_ambiguous_or_unknown_regime_is_one_line_and_exit_2(gap, capsys, method, message):
    with pytest.raises(SystemExit) as exit_:
        gap._cells(RECORDS, "sst2", method, 0.9)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
