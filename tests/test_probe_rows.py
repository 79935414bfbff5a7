"""Per-row probe test results and the paired bootstrap of retention differences (capbench.report.probe_table)."""

import numpy as np
import pytest

from capbench.probing.probe import pack_correct, unpack_correct
from capbench.report.probe_table import paired_row_bootstrap


@pytest.mark.parametrize("n", [1, 7, 8, 600, 601])
def test_packed_rows_round_trip(n):
    rng = np.random.default_rng(n)
    predicted, gold = rng.integers(0, 3, n), rng.integers(0, 3, n)
    assert np.array_equal(unpack_correct(pack_correct(predicted, gold), n), predicted == gold)
    with pytest.raises(ValueError):
        unpack_correct(pack_correct(predicted, gold), n + 9)


def _rows(mine, ref, emb):
    pack = lambda v: pack_correct(np.asarray(v, dtype=int), np.ones(len(v), dtype=int))  # noqa: E731
    return {
        "n": len(mine[0]),
        "mine": [pack(v) for v in mine],
        "ref": [pack(v) for v in ref],
        "emb": [pack(v) for v in emb],
    }


def _model(rng, p_mine, n=400, probe_seeds=3, p_ref=0.8, p_emb=0.5, fixed=None):
    ref = [rng.random(n) < p_ref for _ in range(probe_seeds)] if fixed is None else fixed[0]
    emb = [rng.random(n) < p_emb for _ in range(probe_seeds)] if fixed is None else fixed[1]
    return _rows([rng.random(n) < p_mine for _ in range(probe_seeds)], ref, emb), (ref, emb)


def test_a_model_against_itself_differs_by_exactly_zero():
    rng = np.random.default_rng(0)
    rows, _ = _model(rng, 0.7)
    d = paired_row_bootstrap({"0": {"bigram_shift": rows}}, {"0": {"bigram_shift": rows}})
    assert (d["n"], d["diff"], d["low"], d["high"], d["called"]) == (1, 0.0, 0.0, 0.0, False)


def test_the_point_is_the_retention_difference_and_a_real_gap_is_called():
    rng = np.random.default_rng(1)
    a, fixed = _model(rng, 0.78)
    b, _ = _model(rng, 0.55, fixed=fixed)
    d = paired_row_bootstrap({"0": {"p": a}}, {"0": {"p": b}})
    acc = lambda rows, who: np.mean([unpack_correct(t, rows["n"]).mean() for t in rows[who]])  # noqa: E731
    expected = (acc(a, "mine") - acc(b, "mine")) / (acc(a, "ref") - acc(a, "emb"))
    assert d["diff"] == pytest.approx(expected)
    assert d["called"] and 0 < d["low"] < d["diff"] < d["high"]


def test_a_gap_within_row_noise_is_not_called_and_seeds_and_probes_combine():
    rng = np.random.default_rng(2)
    mine, theirs = {}, {}
    reference = {probe: _model(rng, 0.70)[1] for probe in ("p", "q")}  # one per probe, shared by every model
    for seed in ("0", "1", "2"):
        for probe in ("p", "q"):
            a, _ = _model(rng, 0.70, fixed=reference[probe])
            b, _ = _model(rng, 0.70, fixed=reference[probe])
            mine.setdefault(seed, {})[probe], theirs.setdefault(seed, {})[probe] = a, b
    d = paired_row_bootstrap(mine, theirs)
    assert d["n"] == 3 and d["probes"] == ["p", "q"]
    assert d["low"] < 0 < d["high"] and not d["called"]
    assert d["low"] <= d["diff"] <= d["high"]


def test_no_shared_seed_gives_no_interval():
    rng = np.random.default_rng(3)
    a, _ = _model(rng, 0.7)
    d = paired_row_bootstrap({"0": {"p": a}}, {"1": {"p": a}})
    assert d["n"] == 0 and d["low"] is None and not d["called"]


def test_rows_scored_against_another_reference_are_not_paired():
    rng = np.random.default_rng(4)
    a, _ = _model(rng, 0.7)
    b, _ = _model(rng, 0.7)  # its own reference and embeddings rows
    d = paired_row_bootstrap({"0": {"p": a}}, {"0": {"p": b}})
    assert d["probes"] == [] and d["low"] is None and not d["called"]


def test_seeds_that_learned_from_different_teachers_are_left_out_of_the_pair():
    from capbench.report.probe_table import paired_lines

    def row(method, retention, teachers):
        return {
            "task": "mnli",
            "sparsity": 0.9,
            "method": method,
            "row": method,
            "n": len(retention),
            "retention_by_seed": retention,
            "rows_by_seed": {},
            "teacher_by_seed": {seed: {"weights": w, "run": None} for seed, w in teachers.items()},
        }

    base = row("magnitude", {"0": 0.50, "1": 0.52, "2": 0.49}, {"0": "a", "1": "a", "2": "a"})
    cap = row("cap_magnitude", {"0": 0.60, "1": 0.61, "2": 0.63}, {"0": "a", "1": "a", "2": "a"})
    (line,) = paired_lines([base, cap])
    assert "n = 3 seeds" in line and "left out" not in line
    cap["teacher_by_seed"]["2"]["weights"] = "b"  # seed 2 of CAP ran on another machine
    (line,) = paired_lines([base, cap])
    assert "n = 2 seeds; seed 2 left out: another teacher" in line
    assert "+0.095" in line  # the mean over seeds 0 and 1 only
    for seed in ("0", "1"):
        cap["teacher_by_seed"][seed]["weights"] = "b"
    (line,) = paired_lines([base, cap])
    assert "not paired: the two cells learned from different dense teachers (b vs a" in line
    for seed in ("0", "1", "2"):  # records that do not say which teacher are paired as before
        cap["teacher_by_seed"][seed]["weights"] = None
    assert "n = 3 seeds" in paired_lines([base, cap])[0]
    # one recipe retrained on another machine (other weights, the final loss equal to rounding) is paired
    recipe = {"run": None, "key": "k", "steps": 800}
    for seed in ("0", "1", "2"):
        base["teacher_by_seed"][seed] = {"weights": "a", **recipe, "loss": {"ce": 0.4}}
        cap["teacher_by_seed"][seed] = {"weights": "b" if seed == "2" else "a", **recipe, "loss": {"ce": 0.4}}
    (line,) = paired_lines([base, cap])
    assert "n = 3 seeds; seed 2: teacher retrained" in line and "left out" not in line
    cap["teacher_by_seed"]["2"]["loss"] = {"ce": 0.41}
    assert "n = 2 seeds; seed 2 left out: another teacher" in paired_lines([base, cap])[0]


def test_each_row_pairs_with_its_kd_criterion_or_the_magnitude_row_of_its_regime():
    """The labels real grids give (KD on by default, one-shot regime rows, CAP variants): a fault here left
    the published board without any paired probe difference."""
    from capbench.report.probe_table import baseline_of, paired_lines

    def row(label, method, retention):
        by_seed = {"0": retention, "1": retention + 0.01}
        return {"task": "mnli", "sparsity": 0.97, "method": method, "row": label, "n": 2}, by_seed

    labels = {
        "dense": "dense",
        "magnitude +KD": "magnitude",
        "soft_movement +KD": "soft_movement",
        "cap_soft": "cap_soft",
        "cap_magnitude": "cap_magnitude",
        "cap_magnitude [prc+fic/unsup+sup/pooler]": "cap_magnitude",
        "wanda +KD [one-shot on fine-tuned]": "wanda",
        "magnitude +KD [one-shot on fine-tuned]": "magnitude",
    }
    rows = []
    for i, (label, method) in enumerate(labels.items()):
        r, by_seed = row(label, method, 0.1 * i)
        rows.append({**r, "retention_by_seed": by_seed, "rows_by_seed": {}, "teacher_by_seed": {}})
    names = set(labels)
    assert baseline_of("cap_soft", "cap_soft", names) == "soft_movement +KD"
    assert baseline_of("cap_magnitude", "cap_magnitude", names) == "magnitude +KD"
    assert baseline_of("cap_magnitude", "cap_magnitude", {"magnitude"}) == "magnitude"  # a grid without KD
    assert baseline_of("wanda +KD [one-shot on fine-tuned]", "wanda", names) == (
        "magnitude +KD [one-shot on fine-tuned]"
    )
    assert baseline_of("soft_movement +KD", "soft_movement", names) == "magnitude +KD"
    for label in ("dense", "magnitude +KD", "cap_magnitude [prc+fic/unsup+sup/pooler]"):
        assert baseline_of(label, labels[label], names) is None
    pairs = sorted(line.split(": ")[1] for line in paired_lines(rows))
    assert pairs == [
        "cap_magnitude − magnitude +KD",
        "cap_soft − soft_movement +KD",
        "soft_movement +KD − magnitude +KD",
        "wanda +KD [one-shot on fine-tuned] − magnitude +KD [one-shot on fine-tuned]",
    ]
