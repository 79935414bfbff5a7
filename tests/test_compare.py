import copy

from fixture_records import fixture_records, write_fixture_run

from capbench.cli import main
from capbench.records import load_records


def _baseline(tmp_path, records):
    run = write_fixture_run(tmp_path / "base", records)
    out = tmp_path / "board.md"
    assert main(["leaderboard", "--runs", str(run), "--out", str(out)]) == 0
    return out.with_suffix(".json")


def _ok(records):
    return [r for r in records if r["status"] == "done"]


def _shifted_run(path, records, method, delta):
    """A run of ``records`` with ``method``'s main metric moved by ``delta`` in every cell."""
    shifted = copy.deepcopy(records)
    for record in shifted:
        if record["spec"]["method"] == method:
            record["main_metric"]["value"] += delta
    return write_fixture_run(path, shifted)


def test_rerun_of_same_records_passes(tmp_path, capsys):
    records = _ok(fixture_records())
    baseline = _baseline(tmp_path, records)
    run = write_fixture_run(tmp_path / "new", records)
    assert main(["compare", "--baseline", str(baseline), "--runs", str(run)]) == 0
    assert "unchanged" in capsys.readouterr().out


def test_planted_regression_fails(tmp_path, capsys):
    records = _ok(fixture_records())
    baseline = _baseline(tmp_path, records)
    # single seed: beyond the 0.01 absolute tolerance
    run = _shifted_run(tmp_path / "new", records, "soft_movement", -0.05)
    assert main(["compare", "--baseline", str(baseline), "--runs", str(run)]) == 1
    out = capsys.readouterr().out
    assert "| regressed | rte | soft_movement +KD | 0.9 |" in out


def test_drop_within_seed_noise_passes(tmp_path):
    records = _ok(fixture_records())
    baseline = _baseline(tmp_path, records)
    noisy = copy.deepcopy(records)
    for record in noisy:
        if (
            record["spec"]["method"] == "magnitude"
            and record["spec"]["sparsity"] == 0.5
            and record["spec"]["task"] == "rte"
        ):
            record["main_metric"]["value"] -= 0.02  # seed std is 0.014 on each side: 2 * 0.02 allowed
    run = write_fixture_run(tmp_path / "new", noisy)
    assert main(["compare", "--baseline", str(baseline), "--runs", str(run)]) == 0


def test_missing_cells_are_reported_and_fail(tmp_path, capsys):
    records = _ok(fixture_records())
    baseline = _baseline(tmp_path, records)
    run = write_fixture_run(tmp_path / "new", [r for r in records if r["spec"]["task"] == "rte"])
    assert main(["compare", "--baseline", str(baseline), "--runs", str(run)]) == 1
    assert "| missing | mnli | dense |" in capsys.readouterr().out
    assert main(["compare", "--baseline", str(baseline), "--runs", str(run), "--allow-missing"]) == 0


def test_loading_records_helper_roundtrip(tmp_path):
    run = write_fixture_run(tmp_path / "run")
    assert len(load_records(run)) == len(fixture_records())


def test_fail_on_change_also_fails_an_improvement(tmp_path, capsys):
    records = _ok(fixture_records())
    baseline = _baseline(tmp_path, records)
    run = _shifted_run(tmp_path / "new", records, "soft_movement", +0.05)  # a fault can raise a number too
    assert main(["compare", "--baseline", str(baseline), "--runs", str(run)]) == 0
    assert "| improved | rte | soft_movement +KD | 0.9 |" in capsys.readouterr().out
    assert main(["compare", "--baseline", str(baseline), "--runs", str(run), "--fail-on", "change"]) == 1
    same = write_fixture_run(tmp_path / "same", records)
    assert main(["compare", "--baseline", str(baseline), "--runs", str(same), "--fail-on", "change"]) == 0


def test_a_gate_field_may_be_a_dotted_path_into_a_nested_field():
    from capbench.compare import compare_table_field

    def board(prc_unsup):
        row = {
            "task": "sst2",
            "row": "cap_magnitude",
            "sparsity_key": "0.9",
            "loss_terms": {"prc_unsup": prc_unsup},
        }
        return {"tables": {"cap_ablation": {"keys": ["task", "row", "sparsity_key"], "rows": [row]}}}

    gate = "cap_ablation.loss_terms.prc_unsup:lower"
    (same,) = compare_table_field(board(0.85), board(0.851), gate, 0.01)
    (worse,) = compare_table_field(board(0.85), board(0.95), gate, 0.01)
    (gone,) = compare_table_field(board(0.85), {"tables": {}}, gate, 0.01)
    assert (same["status"], worse["status"], gone["status"]) == ("unchanged", "regressed", "missing")


def test_a_baseline_from_another_cpu_generation_is_named_in_the_verdict(tmp_path, capsys):
    """Two CPUs of one model name ("AMD EPYC") that run different kernels give different numbers, so the
    machine line carries family, model and torch's kernel level, and compare says when they differ."""
    records = _ok(fixture_records())
    zen4 = {"cpu": "AMD EPYC", "cpu_family": "25", "cpu_model_id": "17", "cpu_capability": "AVX512"}
    zen1 = {"cpu": "AMD EPYC", "cpu_family": "23", "cpu_model_id": "1", "cpu_capability": "AVX2"}
    before, after = copy.deepcopy(records), copy.deepcopy(records)
    for record in before:
        record["machine"] = {**record["machine"], **zen4}
    for record in after:
        record["machine"] = {**record["machine"], **zen1}
    baseline = _baseline(tmp_path, before)
    run = write_fixture_run(tmp_path / "new", after)
    assert main(["compare", "--baseline", str(baseline), "--runs", str(run)]) == 0  # reported, not failed
    out = capsys.readouterr().out
    assert "AMD EPYC (family 25 model 17, AVX512), 2 threads" in out
    assert "AMD EPYC (family 23 model 1, AVX2), 2 threads" in out
    assert "gate against a baseline made on this machine configuration" in out
    same = write_fixture_run(tmp_path / "same", before)
    assert main(["compare", "--baseline", str(baseline), "--runs", str(same)]) == 0
    assert "machine configuration" not in capsys.readouterr().out


def test_a_baseline_that_is_not_json_is_one_line_and_exit_2(tmp_path, capsys):
    """Bad JSON and bytes that are not UTF-8 alike: one line naming the file, no traceback."""
    run = write_fixture_run(tmp_path / "run", _ok(fixture_records()))
    for name, data in (("bad.json", b'{"tasks": '), ("binary.json", b'{"tasks": \xff\xfe}')):
        (tmp_path / name).write_bytes(data)
        assert main(["compare", "--baseline", str(tmp_path / name), "--runs", str(run)]) == 2
        err = capsys.readouterr().err.strip()
        assert f"--baseline {tmp_path / name}: not JSON" in err and "\n" not in err, err
