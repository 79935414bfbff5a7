"""Presets say where they have signal: `ls tasks --preset`, and a warning before a run on a task without."""

from dataclasses import replace

from capbench import presets
from capbench.cli import main
from capbench.presets import TaskSignal
from tests.test_runner import run_args


def test_ls_tasks_marks_a_preset_without_signal(capsys):
    assert main(["ls", "tasks", "--preset", "smoke"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines and all("[smoke: NO SIGNAL on any task]" in line for line in lines)


def test_ls_tasks_shows_the_measured_signal_per_task(capsys, monkeypatch):
    measured = (
        TaskSignal("sst2", True, "88.0 ± 0.7 (3 seeds)", "50.9 (majority)", "runs/x"),
        TaskSignal("rte", False, "52.7 (3 seeds)", "52.7 (majority)", "runs/y"),
        TaskSignal("mnli", True, "65.5", "35.4", "runs/z", "at 0.9 magnitude 47 > random 41"),
    )
    monkeypatch.setitem(presets.PRESETS, "default", replace(presets.PRESETS["default"], signals=measured))
    assert main(["ls", "tasks", "--preset", "default"]) == 0
    out = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert "[default: signal: dense 88.0 ± 0.7 (3 seeds); chance 50.9 (majority)  (runs/x)]" in out["sst2"]
    assert "NO SIGNAL (dense at chance)" in out["rte"]
    assert "chance 35.4; pruned: at 0.9 magnitude 47 > random 41  (runs/z)]" in out["mnli"]
    assert "[default: not measured]" in out["cola"]


def test_a_run_on_a_task_without_signal_warns_first(tiny_model_dir, tiny_glue, tmp_path, capsys):
    args = [a for a in run_args(tiny_model_dir, tiny_glue, tmp_path / "r", tmp_path / "c") if a != "--quiet"]
    assert main([*args, "--dry-run"]) == 0
    assert "warning: preset smoke has no signal on any task" in capsys.readouterr().err
