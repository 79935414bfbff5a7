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


TODAY = Path(__file__).resolve().parents[1] / "leaderboards" / "runs" / "today"


def test_a_seed_whose_cells_learned_from_different_teachers_is_named(gap, capsys):
    """Issue 18's mnli wanda/sparsegpt cells learned from a teacher trained on one machine (records from before
    the weights hash was kept: told apart by the teacher's training run), obert and the magnitude rows from
    one retrained on another (weights bb33e701...)."""
    assert gap.main(str(TODAY), "mnli", "sparsegpt", "magnitude/oneshot", "0.9") == 0
    out = capsys.readouterr().out
    assert "seed 0: the two cells learned from different dense teachers (1738.542646s ce=" in out
    assert "vs bb33e701745600686812" in out and out.rstrip().endswith(
        "seeds [0] compare models of different teachers"
    )
    assert gap.main(str(TODAY), "mnli", "obert", "magnitude/oneshot", "0.9") == 0
    assert "different" not in capsys.readouterr().out


def test_same_teacher_by_weights_then_by_training_run():
    from capbench.report.frame import same_teacher, teacher_fingerprint

    def record(sha=None, seconds=None, ce=None):
        training = {"seconds": seconds, "final_loss_terms": {"ce": ce}} if seconds is not None else {}
        return {"teacher": {"key": "k", **({"weights_sha256": sha} if sha else {}), "training": training}}

    a, b = teacher_fingerprint(record("aa", 10.0, 0.4)), teacher_fingerprint(record("bb", 10.0, 0.4))
    assert same_teacher(a, b) is False  # the weights decide where both have them
    assert same_teacher(a, teacher_fingerprint(record(None, 10.0, 0.4))) is True  # else the training run
    assert same_teacher(a, teacher_fingerprint(record(None, 11.0, 0.4))) is False
    assert same_teacher(a, teacher_fingerprint(record())) is None  # an older record cannot tell
    assert teacher_fingerprint({}) is None
