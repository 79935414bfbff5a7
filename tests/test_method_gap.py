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


def test_a_seed_whose_cells_learned_from_a_retrained_teacher_is_named(gap, capsys):
    """Issue 18's mnli wanda/sparsegpt cells learned from a teacher trained on one machine (records from before
    the weights hash was kept), obert and the magnitude rows from the same recipe retrained on another (weights
    bb33e701...): final losses 0.43806347 and 0.43806755, rounding apart, so the pair is kept and named."""
    assert gap.main(str(TODAY), "mnli", "sparsegpt", "magnitude/oneshot", "0.9") == 0
    out = capsys.readouterr().out
    assert "seed 0: teacher retrained (one recipe trained on two machines" in out
    assert "different dense teachers" not in out and "compare models of different teachers" not in out
    assert gap.main(str(TODAY), "mnli", "obert", "magnitude/oneshot", "0.9") == 0
    assert "retrained" not in capsys.readouterr().out


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


def test_one_recipe_trained_twice_pairs_and_anything_else_does_not():
    """Two trainings of one recipe on different CPUs differ by rounding (the sst2 teacher on a Xeon and on an
    EPYC: final loss 0.40274298 vs 0.40274292; mnli: 0.43814078 vs 0.43806755); a final loss off by more,
    another recipe or step count is another teacher."""
    from capbench.report.frame import (
        RETRAINED_LOSS_RTOL,
        teacher_fingerprint,
        teacher_mismatch,
        teacher_relation,
    )

    def record(sha, ce, key="k", steps=800, kd=None):
        loss = {"ce": ce, **({"kd": kd} if kd is not None else {})}
        training = {"seconds": 300.0, "steps": steps, "final_loss_terms": loss}
        return teacher_fingerprint({"teacher": {"key": key, "weights_sha256": sha, "training": training}})

    zen5, xeon = record("39ae228ccd", 0.4027429223060608), record("92439932fb", 0.40274298191070557)
    assert teacher_relation(zen5, zen5) == "same"
    assert teacher_relation(zen5, xeon) == "retrained" and teacher_mismatch(zen5, xeon) is None
    mnli = record("bb33e70174", 0.43806755542755127), record("cc0788758e", 0.43814077973365784)
    assert teacher_relation(*mnli) == "retrained"  # mnli seed 0, EPYC vs Xeon: 1.7e-4 relative
    off = 0.4027429223060608 * (1 + 3 * RETRAINED_LOSS_RTOL)
    for other in (
        record("bb", off),  # a real difference in training moves the final loss
        record("bb", 0.4027429223060608, key="other"),  # another recipe (seed, data, settings)
        record("bb", 0.4027429223060608, steps=700),
        record("bb", 0.4027429223060608, kd=0.1),  # other loss terms
    ):
        assert teacher_relation(zen5, other) == "different"
        assert "different dense teachers" in teacher_mismatch(zen5, other)
    assert teacher_relation(zen5, None) is None and teacher_mismatch(zen5, None) is None
