"""Grid files (`capbench run --grid FILE`): the union of blocks, validated before any work."""

import pytest

from capbench.cli import main
from capbench.errors import CapbenchError
from capbench.gridfile import load_grid
from capbench.records import load_records
from tests.test_runner import run_args

GRID = """
description: two overlapping blocks
blocks:
  - tasks: rte
    methods: magnitude
    sparsity: 0.5
  - tasks: [rte]
    methods: magnitude,random
    sparsity: [0.5, 0.9]
    seeds: 0
    kd: on
"""


def _grid_args(model_dir, glue, out, cache, grid, *extra):
    args = run_args(model_dir, glue, out, cache, "--grid", str(grid), *extra)
    i = args.index("--tasks")
    return args[:i] + args[i + 2 :]  # the grid file names the tasks


def test_blocks_load_with_defaults_and_yaml_lists(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text(GRID)
    first, second = load_grid(path)
    assert first == {
        "tasks": "rte",
        "methods": "magnitude",
        "sparsity": "0.5",
        "seeds": "0",
        "method_option": None,
        "cap_option": None,
        "probes": "",
        "speed": False,
        "kd": "on",
    }
    assert second["sparsity"] == "0.5,0.9" and second["kd"] == "on"  # YAML's bare `on` is true
    path.write_text("blocks:\n  - tasks: rte\n    method_option: [update_every=2, scope=global]\n    kd: off")
    (only,) = load_grid(path)
    assert only["method_option"] == ["update_every=2", "scope=global"] and only["kd"] == "off"


@pytest.mark.parametrize(
    "text,message",
    [
        ("blocks: []", "non-empty 'blocks:'"),
        ("blocks:\n  - tasks: rte\n    epochs: 3", "unknown key(s) ['epochs']"),
        ("blocks:\n  - methods: magnitude", "block 1: no tasks"),
        ("blocks:\n  - tasks: rte\n    speed: yes please", "speed is true or false"),
        ("blocks: [tasks: rte", "not valid YAML"),
        ("grid:\n  - tasks: rte", "non-empty 'blocks:'"),
    ],
)
def test_a_bad_grid_file_is_one_clear_error(tmp_path, text, message):
    path = tmp_path / "g.yaml"
    path.write_text(text)
    with pytest.raises(CapbenchError, match=None) as caught:
        load_grid(path)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_grid_runs_the_union_once_and_dry_run_says_nothing_is_left(
    tiny_model_dir, tiny_glue, tmp_path, capsys
):
    grid = tmp_path / "g.yaml"
    grid.write_text(GRID)
    args = _grid_args(tiny_model_dir, tiny_glue, tmp_path / "run", tmp_path / "cache", grid)
    assert main([*args, "--dry-run"]) == 0
    assert "5 cells: 5 to run" in capsys.readouterr().out  # dense and magnitude 0.5 are in both blocks
    assert main(args) == 0
    records = load_records(tmp_path / "run")
    cells = sorted((r["spec"]["method"], r["spec"]["sparsity"]) for r in records)
    assert cells == [("dense", 0.0), ("magnitude", 0.5), ("magnitude", 0.9), ("random", 0.5), ("random", 0.9)]
    capsys.readouterr()
    assert main([*args, "--dry-run"]) == 0
    assert "0 to run" in capsys.readouterr().out


def test_a_grid_flag_beside_grid_or_neither_tasks_nor_grid_exits_2(
    tiny_model_dir, tiny_glue, tmp_path, capsys
):
    grid = tmp_path / "g.yaml"
    grid.write_text(GRID)
    args = _grid_args(tiny_model_dir, tiny_glue, tmp_path / "run", tmp_path / "cache", grid)
    assert main([*args, "--methods", "random", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "--methods" in err and "--grid" in err and len(err.strip().splitlines()) == 1
    no_tasks = [a for a in args if a not in ("--grid", str(grid))]
    assert main([*no_tasks, "--dry-run"]) == 2
    assert "needs --tasks" in capsys.readouterr().err
    missing = [str(tmp_path / "missing.yaml") if a == str(grid) else a for a in args]
    assert main([*missing, "--dry-run"]) == 2
    assert "no such file" in capsys.readouterr().err


def test_a_cell_in_several_blocks_gets_the_measurements_of_each(tiny_model_dir, tiny_glue, tmp_path):
    from capbench.cli import build_parser
    from capbench.runflow import cells_from_args

    grid = tmp_path / "g.yaml"
    grid.write_text(
        "blocks:\n  - tasks: rte\n    sparsity: 0.5\n"
        "  - tasks: rte\n    sparsity: 0.5\n    speed: true\n    probes: bigram_shift\n"
    )
    args = _grid_args(tiny_model_dir, tiny_glue, tmp_path / "run", tmp_path / "cache", grid)
    cells, _ = cells_from_args(build_parser().parse_args(args))
    assert [c.method for c in cells] == ["dense", "magnitude"]
    assert all(c.speed and c.probes == ("bigram_shift",) for c in cells)


def test_every_committed_grid_file_names_known_tasks_methods_and_options():
    from pathlib import Path

    from capbench.cap.config import CapConfig
    from capbench.grid import parse_seeds, parse_sparsities
    from capbench.methods import grid_methods
    from capbench.options import parse_key_values
    from capbench.tasks import parse_task_list

    files = sorted((Path(__file__).resolve().parents[1] / "leaderboards").glob("*.grid.yaml"))
    assert files, "the published board's grid file is committed beside it"
    for path in files:
        for block in load_grid(path):
            parse_task_list(block["tasks"])
            grid_methods(block["methods"].split(","))
            parse_sparsities(block["sparsity"])
            parse_seeds(block["seeds"])
            CapConfig.from_options(parse_key_values(block["cap_option"], "cap_option"))


def test_a_dense_block_plans_only_dense_references(tiny_model_dir, tiny_glue, tmp_path, capsys):
    grid = tmp_path / "g.yaml"
    grid.write_text(GRID + "  - tasks: rte\n    methods: dense\n    seeds: 1,2\n")
    args = _grid_args(tiny_model_dir, tiny_glue, tmp_path / "run", tmp_path / "cache", grid)
    assert main([*args, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "7 cells: 7 to run" in out  # the 5 of GRID and the dense references of seeds 1 and 2
    assert "rte-dense-0-seed1-" in out and "rte-dense-0-seed2-" in out
    assert "seed1" not in out.replace("rte-dense-0-seed1-", "")


def test_dense_beside_an_unknown_method_still_fails_in_one_line(capsys):
    from capbench.methods import grid_methods

    assert grid_methods(["dense"]) == []
    assert grid_methods(["dense", "cap_soft_movement"]) == ["cap_soft"]
    with pytest.raises(CapbenchError, match="unknown method 'dens'"):
        grid_methods(["dens"])
