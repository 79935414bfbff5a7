import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from capbench import runner
from capbench.cli import main
from capbench.probing.probe import unpack_correct
from capbench.records import load_records


def run_args(tiny_model_dir, tiny_glue, out, cache, *extra):
    return [
        "run",
        "--tasks",
        "rte",
        "--preset",
        "smoke",
        "--model",
        str(tiny_model_dir),
        "--data-dir",
        str(tiny_glue),
        "--out",
        str(out),
        "--cache-dir",
        str(cache),
        "--batch-size",
        "8",
        "--quiet",
        *extra,
    ]


def test_grid_writes_records_and_a_rerun_skips_everything(
    tiny_model_dir, tiny_glue, tmp_path, monkeypatch, capsys
):
    args = run_args(tiny_model_dir, tiny_glue, tmp_path / "run", tmp_path / "cache", "--methods", "magnitude")
    args += ["--sparsity", "0.5,0.9", "--seeds", "0,1"]
    assert main(args) == 0
    records = load_records(tmp_path / "run")
    assert len(records) == 6  # (dense + 2 sparsities) x 2 seeds
    assert {r["status"] for r in records} == {"done"}
    pruned = next(r for r in records if r["spec"]["method"] == "magnitude" and r["spec"]["sparsity"] == 0.9)
    assert 0.0 <= pruned["main_metric"]["value"] <= 1.0
    assert pruned["sparsity"]["linear"] == pytest.approx(0.9, abs=0.01)
    assert pruned["spec_hash"] and pruned["versions"]["torch"] and "git_commit" in pruned
    assert Path(pruned["model_dir"], "config.json").is_file()
    assert set(pruned["metrics"]) == {"validation"}

    def must_not_run(spec, ctx):
        raise AssertionError(f"reran {spec.cell_id}")

    monkeypatch.setattr(runner, "run_cell", must_not_run)
    assert main(args) == 0
    assert "0 run, 6 already finished" in capsys.readouterr().out


def test_dense_teacher_is_trained_once_and_reused(tiny_model_dir, tiny_glue, tmp_path, monkeypatch):
    calls = []
    real_train = runner.train

    def counting_train(model, loader, cfg, **kwargs):
        calls.append(kwargs.get("pruner") is None)
        return real_train(model, loader, cfg, **kwargs)

    monkeypatch.setattr(runner, "train", counting_train)
    args = run_args(tiny_model_dir, tiny_glue, tmp_path / "run", tmp_path / "cache", "--methods", "magnitude")
    assert main([*args, "--sparsity", "0.5,0.9"]) == 0
    assert calls.count(True) == 1  # one dense fine-tuning for the dense row and both pruned cells
    main(
        [
            *run_args(
                tiny_model_dir, tiny_glue, tmp_path / "run2", tmp_path / "cache", "--methods", "magnitude"
            )
        ]
    )
    assert calls.count(True) == 1  # another run directory, same cache: still no retraining


def test_overwrite_reruns(tiny_model_dir, tiny_glue, tmp_path, capsys):
    args = run_args(tiny_model_dir, tiny_glue, tmp_path / "run", tmp_path / "cache", "--sparsity", "0.5")
    assert main(args) == 0
    assert main([*args, "--overwrite"]) == 0
    assert "2 run, 0 already finished" in capsys.readouterr().out


def test_killed_run_resumes_without_losing_or_half_writing(tiny_model_dir, tiny_glue, tmp_path):
    out = tmp_path / "run"
    args = run_args(tiny_model_dir, tiny_glue, out, tmp_path / "cache", "--methods", "magnitude")
    args += ["--sparsity", "0.5,0.9", "--epochs", "40"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    process = subprocess.Popen([sys.executable, "-m", "capbench", *args], env=env, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not list((out / "records").glob("*.json")) and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished = {p.name: p.read_bytes() for p in (out / "records").glob("*.json")}
    assert finished, "the first cell should have finished before the kill"
    for content in finished.values():
        json.loads(content)  # every file that exists is a whole record
    assert main(args) == 0
    records = load_records(out)
    assert len(records) == 3 and all(r["status"] == "done" for r in records)
    for name, content in finished.items():
        assert (out / "records" / name).read_bytes() == content  # finished work was kept, not redone
    assert not list((out / "records").glob(".*"))  # no temp files left behind


def test_run_with_probes_records_retention_and_renders_it(tiny_model_dir, tiny_glue, tmp_path, capsys):
    out = tmp_path / "run"
    args = run_args(
        tiny_model_dir, tiny_glue, out, tmp_path / "cache", "--methods", "magnitude", "--sparsity", "0.5"
    )
    assert main([*args, "--probes", "bigram_shift,sst2", "--probe-sizes", "30,15,15"]) == 0
    records = load_records(out)
    for record in records:
        assert set(record["probes"]["tasks"]) == {"bigram_shift", "sst2"}
        assert record["probes"]["retention"]["summary"]
        for per_pooling in record["probes"]["retention"]["tasks"].values():
            for entry in per_pooling.values():  # the kept test rows reproduce the accuracies they pair
                rows = entry["test_rows"]
                kept = [
                    np.mean([unpack_correct(t, rows["n"]).mean() for t in rows[w]])
                    for w in ("mine", "ref", "emb")
                ]
                assert kept == pytest.approx([entry["acc"], entry["acc_ref"], entry["acc0"]])
    capsys.readouterr()
    assert main(["leaderboard", "--runs", str(out)]) == 0
    board = capsys.readouterr().out
    assert "## Linear probes" in board
    # tiny random models: either a probe clears the margin (rows with floors), or the page says none does
    assert ("| pre-trained |" in board and "| floor: zeroed encoder |" in board) or "No valid probe" in board


def test_unknown_probe_fails_before_training(tiny_model_dir, tiny_glue, tmp_path, capsys):
    args = run_args(tiny_model_dir, tiny_glue, tmp_path / "run", tmp_path / "cache", "--probes", "sentlenn")
    assert main(args) == 2
    assert "unknown probe 'sentlenn'" in capsys.readouterr().err
    assert not (tmp_path / "run" / "records").exists()


def test_dry_run_lists_finished_and_missing_cells_without_running(
    tiny_model_dir, tiny_glue, tmp_path, monkeypatch, capsys
):
    base = run_args(tiny_model_dir, tiny_glue, tmp_path / "run", tmp_path / "cache", "--methods", "magnitude")
    assert main([*base, "--sparsity", "0.5"]) == 0
    capsys.readouterr()
    monkeypatch.setattr(runner, "run_cell", lambda spec, ctx: pytest.fail(f"ran {spec.cell_id}"))
    assert main([*base, "--sparsity", "0.5,0.9", "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines[:3]] == ["finished", "finished", "to"]
    assert "magnitude-0.9-seed0" in lines[2]
    assert lines[-1] == "capbench: 3 cells: 1 to run, 2 already finished (dry run)"
    # --overwrite retrains finished cells, and its dry run says so
    assert main([*base, "--sparsity", "0.5,0.9", "--dry-run", "--overwrite"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines[:3]] == ["to", "to", "to"]
    assert "--overwrite trains it again" in lines[0]
    assert lines[-1] == "capbench: 3 cells: 3 to run, 0 already finished (dry run)"


def test_quiet_run_shows_no_progress_bar_of_any_library(tiny_model_dir, tiny_glue, tmp_path, capfd):
    """--quiet promises no progress bars: capbench's own and those transformers draws while loading weights
    ("Loading weights: 100%|...") for every teacher and student, which filled the logs of quiet grid runs."""
    from transformers.utils import logging as hf_logging

    out = tmp_path / "run"
    args = run_args(tiny_model_dir, tiny_glue, out, tmp_path / "cache", "--methods", "magnitude")
    try:
        assert main([*args, "--sparsity", "0.5", "--quiet"]) == 0
        err = capfd.readouterr().err
        assert "Loading weights" not in err and "it/s]" not in err
    finally:
        hf_logging.enable_progress_bar()  # the process-wide switch, for the tests after this one


def test_read_json_treats_any_unparsable_file_as_missing(tmp_path):
    """jsonio.read_json (records, a cached teacher's training file) returns None for a missing file, bad JSON
    and bytes that are not UTF-8 alike, as its docstring says; the last raised UnicodeDecodeError."""
    from capbench.jsonio import read_json

    (tmp_path / "bad.json").write_text('{"steps": 3')
    (tmp_path / "binary.json").write_bytes(b'{"steps": \xff\xfe}')
    assert [read_json(tmp_path / n) for n in ("missing.json", "bad.json", "binary.json")] == [None] * 3


def test_records_name_the_commit_the_run_started_with(tiny_model_dir, tiny_glue, tmp_path, monkeypatch):
    """A checkout that moves under a running grid (a merge while cells train) must not relabel the records
    that process still writes: the commit is read when `capbench run` starts."""
    from capbench import provenance

    provenance.git_commit.cache_clear()
    real_run, moved = subprocess.run, []

    def git(cmd, *args, **kwargs):
        done = real_run(cmd, *args, **kwargs)
        if moved and "rev-parse" in cmd:
            done.stdout = "f" * 40 + "\n"  # HEAD moved on after the run started
        return done

    monkeypatch.setattr(provenance.subprocess, "run", git)
    real_train = runner.train

    def train(*args, **kwargs):
        moved.append(True)
        return real_train(*args, **kwargs)

    monkeypatch.setattr(runner, "train", train)
    started = None
    try:
        out = tmp_path / "run"
        assert (
            main(run_args(tiny_model_dir, tiny_glue, out, tmp_path / "cache", "--methods", "magnitude")) == 0
        )
        started = provenance.git_commit()
    finally:
        provenance.git_commit.cache_clear()
    commits = {r["git_commit"] for r in load_records(out)}
    assert len(commits) == 1 and commits == {started} and "f" * 40 not in str(commits)


def test_records_written_into_the_checkout_do_not_make_it_dirty(tmp_path):
    """A grid writes its records into the checkout (leaderboards/runs/...): that is not a change to the code
    that ran, so the commit carries no '+dirty'; a change to the package does."""
    import shutil

    from capbench import provenance

    repo = tmp_path / "checkout"
    (repo / "capbench").mkdir(parents=True)
    (repo / "capbench" / "__init__.py").write_text("")
    (repo / "leaderboards").mkdir()
    (repo / "leaderboards" / "r.json").write_text("{}")
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "x"], check=True)
    fake = type("M", (), {"__file__": str(repo / "capbench" / "__init__.py")})
    real = provenance.capbench
    try:
        provenance.capbench = fake
        provenance.git_commit.cache_clear()
        (repo / "leaderboards" / "r.json").write_text('{"a": 1}')  # a record rewritten by a measurement
        assert not provenance.git_commit().endswith("+dirty")
        provenance.git_commit.cache_clear()
        (repo / "capbench" / "__init__.py").write_text("X = 1\n")
        assert provenance.git_commit().endswith("+dirty")
    finally:
        provenance.capbench = real
        provenance.git_commit.cache_clear()
    shutil.rmtree(repo)
