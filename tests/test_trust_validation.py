"""Issue 13, items 8 and 12: bad values fail before any cell starts (also under --dry-run), with one line
naming the flag, the value and the fix; duplicate list entries are one cell; --dry-run names the
measurements a finished cell still lacks."""

import pytest

from capbench import records, runner
from capbench.cli import build_parser, main
from capbench.grid import expand_grid
from capbench.presets import get_preset
from capbench.pruning.pruners import check_options, method_defaults, method_names, option_rules, spec_options


def _error(capsys, argv):
    capsys.readouterr()  # fixtures' output (the tiny model's "Writing model shards" bar)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    assert err.startswith("capbench: error: ")
    return err


def _base(tiny_model_dir, tiny_glue, tmp_path, *extra):
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
        str(tmp_path / "run"),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--quiet",
        *extra,
    ]


# (extra arguments, substrings of the one error line: the flag, the bad value, and the fix)
BAD_INPUTS = [
    (["--epochs", "0"], ["--epochs 0:", "> 0"]),
    (["--epochs", "nan"], ["--epochs nan:", "finite"]),
    (["--batch-size", "0"], ["--batch-size 0:", ">= 1"]),
    (["--learning-rate", "-1"], ["--learning-rate -1:", "> 0"]),
    (["--learning-rate", "inf"], ["--learning-rate inf:", "finite"]),
    (["--max-train-examples", "0"], ["--max-train-examples 0:", ">= 1"]),
    (["--max-eval-examples", "-5"], ["--max-eval-examples -5:", ">= 1"]),
    (["--max-seq-length", "4"], ["--max-seq-length 4:", ">= 8"]),
    (["--max-seq-length", "100"], ["--max-seq-length 100:", "at most 64", "max_position_embeddings"]),
    (["--probe-sizes", "1200,300"], ["--probe-sizes '1200,300'", "three positive integers", "1200,300,600"]),
    (["--probe-sizes", "0,300,600"], ["--probe-sizes '0,300,600'", "three positive integers"]),
    (["--seeds", "-1"], ["--seeds -1:", "from 0 to"]),
    (["--seeds", "0,x"], ["--seeds 'x'", "integers such as 0,1,2"]),
    (["--seeds", ","], ["--seeds is empty"]),
    (["--shard", "4/4"], ["--shard 4/4:", "0/4 to 3/4"]),
    (["--shard", "1"], ["--shard '1'", "I/N such as 0/4"]),
    (["--method-option", "scope=sideways"], ["--method-option scope=sideways:", "local, global, auto"]),
    (["--method-option", "warmup=-0.1"], ["--method-option warmup=-0.1:", "[0, 1)"]),
    (["--method-option", "warmup=1.5"], ["--method-option warmup=1.5:", "whole number of steps"]),
    (["--method-option", "warmup=1e-1"], ["--method-option warmup=1e-1:", "decimal point", "0.1"]),
    (["--method-option", "warmup="], ["--method-option warmup=:", "empty value"]),
    (
        ["--method-option", "warmup=0.7", "--method-option", "cooldown=0.5"],
        ["--method-option warmup=0.7 cooldown=0.5:", "at most 1"],
    ),
    (["--method-option", "initial_sparsity=1.2"], ["--method-option initial_sparsity=1.2:", "[0, 1)"]),
    (
        ["--method-option", "initial_sparsity=0.6", "--sparsity", "0.5,0.9"],
        ["--method-option initial_sparsity=0.6:", "target sparsity 0.5"],
    ),
    (["--method-option", "update_every=0"], ["--method-option update_every=0:", ">= 1"]),
    (["--method-option", "update_every=1.5"], ["--method-option update_every=1.5:", "whole number"]),
    (["--method-option", "oneshot=maybe"], ["--method-option oneshot=maybe:", "true or false"]),
    (["--method-option", "foo=1"], ["--method-option foo=1:", "unknown option", "warmup, cooldown"]),
    (
        ["--method-option", "score_lr=0.1"],
        ["--method-option score_lr=0.1:", "unknown option for magnitude", "movement, soft_movement"],
    ),
    (["--methods", "movement", "--method-option", "score_lr=0"], ["--method-option score_lr=0:", "> 0"]),
    (
        ["--methods", "soft_movement", "--method-option", "tau_final=1"],
        ["--method-option tau_final=1:", "[0, 1)"],
    ),
    (
        ["--methods", "soft_movement", "--method-option", "min_keep=2"],
        ["--method-option min_keep=2:", "[0, 1]"],
    ),
    (
        ["--methods", "first_order", "--method-option", "min_heads_per_layer=0"],
        ["--method-option min_heads_per_layer=0:", ">= 1"],
    ),
    (["--methods", "random", "--method-option", "seed=-3"], ["--method-option seed=-3:", "[0, 4294967295]"]),
    (
        ["--methods", "cap_magnitude", "--method-option", "scope=sideways"],
        ["--method-option scope=sideways:", "cap_magnitude", "local, global, auto"],
    ),
    (["--methods", "cap_magnitude", "--cap-option", "temperature=0"], ["--cap-option temperature=0:", "> 0"]),
    (["--methods", "cap_magnitude", "--cap-option", "w_sup=-1"], ["--cap-option w_sup=-1:", ">= 0"]),
    (["--methods", "cap_magnitude", "--cap-option", "w_kd=nan"], ["--cap-option w_kd=nan:", "finite"]),
    (
        ["--methods", "cap_magnitude", "--cap-option", "modules=prc,xyz"],
        ["--cap-option modules=prc,xyz:", "'xyz'", "prc, snc, fic"],
    ),
    (
        ["--methods", "cap_magnitude", "--cap-option", "representation=cls"],
        ["--cap-option representation=cls:", "pooler, mean"],
    ),
    (["--methods", "cap_magnitude", "--cap-option", "tau=1"], ["--cap-option tau=1:", "unknown CAP option"]),
    (
        ["--methods", "cap_magnitude", "--cap-option", "extra_examples=1.5"],
        ["--cap-option extra_examples=1.5:", "integer"],
    ),
    (["--methods", "cap_magnitude", "--cap-option", "sup=maybe"], ["--cap-option sup=maybe:", "true/false"]),
    (
        ["--methods", "cap_magnitude", "--cap-option", "snapshot_on=steps"],
        ["--cap-option snapshot_on=steps:", "snapshot_interval"],
    ),
    (
        ["--cap-option", "temperature=0.2"],
        ["--cap-option temperature=0.2:", "no CAP method", "cap_magnitude"],
    ),
    (["--cap-option", "temperature=0"], ["--cap-option temperature=0:", "> 0"]),
]


@pytest.mark.parametrize("extra, expected", BAD_INPUTS, ids=[" ".join(extra) for extra, _ in BAD_INPUTS])
def test_bad_values_fail_under_dry_run_with_one_line(
    capsys, tiny_model_dir, tiny_glue, tmp_path, extra, expected
):
    err = _error(capsys, [*_base(tiny_model_dir, tiny_glue, tmp_path, *extra), "--dry-run"])
    for text in expected:
        assert text in err, (text, err)


@pytest.mark.parametrize(
    "extra",
    [
        ["--epochs", "0"],
        ["--batch-size", "0"],
        ["--learning-rate", "-1"],
        ["--method-option", "scope=sideways"],
        ["--methods", "cap_magnitude", "--cap-option", "temperature=0"],
    ],
)
def test_bad_values_fail_before_any_cell(capsys, monkeypatch, tiny_model_dir, tiny_glue, tmp_path, extra):
    monkeypatch.setattr(runner, "run_cell", lambda spec, ctx: pytest.fail(f"ran {spec.cell_id}"))
    _error(capsys, _base(tiny_model_dir, tiny_glue, tmp_path, *extra))
    assert not (tmp_path / "run" / "records").exists() or not any((tmp_path / "run" / "records").iterdir())


def test_a_bad_preset_value_is_caught(capsys, monkeypatch, tiny_model_dir, tiny_glue, tmp_path):
    from dataclasses import replace

    from capbench import presets

    smoke = presets.PRESETS["smoke"]
    bad = replace(smoke, train=replace(smoke.train, warmup_ratio=1.5))
    monkeypatch.setitem(presets.PRESETS, "smoke", bad)
    err = _error(capsys, [*_base(tiny_model_dir, tiny_glue, tmp_path), "--dry-run"])
    assert "preset train.warmup_ratio 1.5" in err and "[0, 1]" in err


def test_every_default_and_preset_is_valid():
    for name in method_names():
        assert set(method_defaults(name)) <= set(option_rules())
        check_options(name, method_defaults(name))
    for name in ("smoke", "default", "paper"):
        get_preset(name).validate(max_positions=512)


def test_valid_options_are_accepted(capsys, tiny_model_dir, tiny_glue, tmp_path):
    extra = [
        "--methods",
        "magnitude,cap_magnitude",
        "--method-option",
        "warmup=2",
        "--method-option",
        "cooldown=0",
    ]
    extra += [
        "--method-option",
        "scope=global",
        "--cap-option",
        "modules=prc,fic",
        "--cap-option",
        "w-sup=1e-1",
    ]
    extra += ["--max-seq-length", "64", "--epochs", "0.5", "--shard", "0/1", "--seeds", "4294967295"]
    assert main([*_base(tiny_model_dir, tiny_glue, tmp_path, *extra), "--dry-run"]) == 0
    assert "5 cells: 5 to run" in capsys.readouterr().out


# --- cell ids are unchanged by the validation -----------------------------------------------------------

# `capbench run --dry-run` on the default model (offline package) and tests/conftest.py's tiny_glue,
# computed before the validation existed. The cap_* ids were recomputed once when CAP's defaults changed
# on purpose (issue 15: dropout on the anchor, snapshots at fractions of training), and the `default` and
# `overrides` ids when the default preset changed on purpose (issue 16: 800 length-grouped steps over the
# whole train split, lr 1e-4, every evaluation row); every other id is the original.
UNCHANGED_IDS = {
    "default": (
        [],
        [
            "rte-dense-0-seed0-78a1db7d05",
            "rte-magnitude-0.5-seed0-72b2d5903b",
            "rte-magnitude-0.9-seed0-5ecbbd7f16",
        ],
    ),
    "every method": (
        [
            "--methods",
            "magnitude,movement,soft_movement,first_order,random,cap_magnitude,cap_movement,cap_soft,cap_first_order",
            "--sparsity",
            "0.5,0.9",
            "--preset",
            "smoke",
        ],
        [
            "rte-dense-0-seed0-67946fe77d",
            "rte-magnitude-0.5-seed0-93698c7e7d",
            "rte-magnitude-0.9-seed0-9148ee624b",
            "rte-movement-0.5-seed0-d74bc4087c",
            "rte-movement-0.9-seed0-fc249bed7b",
            "rte-soft_movement-0.5-seed0-d3cd0ad575",
            "rte-soft_movement-0.9-seed0-1e1fc1baae",
            "rte-first_order-0.5-seed0-b31196c06c",
            "rte-first_order-0.9-seed0-51b0aeb70a",
            "rte-random-0.5-seed0-cf493f7eff",
            "rte-random-0.9-seed0-e23b78534f",
            "rte-cap_magnitude-0.5-seed0-9123c6b20c",
            "rte-cap_magnitude-0.9-seed0-738810f8de",
            "rte-cap_movement-0.5-seed0-80b5012563",
            "rte-cap_movement-0.9-seed0-6a087a3b22",
            "rte-cap_soft-0.5-seed0-3b2148ce87",
            "rte-cap_soft-0.9-seed0-620d106381",
            "rte-cap_first_order-0.5-seed0-3595c31bc4",
            "rte-cap_first_order-0.9-seed0-457b839bc5",
        ],
    ),
    "overrides": (
        [
            "--methods",
            "magnitude,cap_magnitude",
            "--sparsity",
            "0.7",
            "--epochs",
            "1.5",
            "--batch-size",
            "8",
            "--learning-rate",
            "1e-4",
            "--max-train-examples",
            "50",
            "--max-eval-examples",
            "20",
            "--max-seq-length",
            "64",
            "--method-option",
            "scope=global",
            "--method-option",
            "warmup=0.05",
            "--method-option",
            "update_every=2",
            "--cap-option",
            "modules=prc,fic",
            "--cap-option",
            "temperature=0.2",
        ],
        [
            "rte-dense-0-seed0-3c215b4cf7",
            "rte-magnitude-0.7-seed0-ae22711db6",
            "rte-cap_magnitude-0.7-seed0-8eec36d352",
        ],
    ),
}


@pytest.mark.parametrize("name", UNCHANGED_IDS)
def test_cell_ids_of_valid_commands_are_unchanged(capsys, offline_model_dir, tiny_glue, tmp_path, name):
    extra, expected = UNCHANGED_IDS[name]
    argv = [
        "run",
        "--tasks",
        "rte",
        "--data-dir",
        str(tiny_glue),
        "--out",
        str(tmp_path / "run"),
        "--dry-run",
    ]
    assert main([*argv, *extra]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[-1] for line in lines[:-1]] == expected


def _cells(argv):
    from capbench.runflow import cells_from_args

    return cells_from_args(build_parser().parse_args(argv))[0]


def test_resolved_specs_of_defaults_are_the_documented_defaults(tiny_model_dir, tiny_glue, tmp_path):
    from capbench.methods import cap_defaults

    methods = "magnitude,movement,soft_movement,first_order,random,cap_magnitude,cap_first_order"
    cells = _cells(_base(tiny_model_dir, tiny_glue, tmp_path, "--methods", methods, "--sparsity", "0.5"))
    assert cells[0].train == get_preset("smoke").train.to_dict()
    for cell in cells[1:]:
        criterion = {"cap_magnitude": "magnitude", "cap_first_order": "first_order"}.get(
            cell.method, cell.method
        )
        # as given: not converted, no key added (options added later are left out at their default)
        assert cell.method_options == spec_options(criterion, method_defaults(criterion))
        if cell.method.startswith("cap_"):
            assert cell.cap == cap_defaults(cell.method)


# --- duplicates ----------------------------------------------------------------------------------------


def test_duplicate_list_entries_are_one_cell(capsys, tiny_model_dir, tiny_glue, tmp_path):
    extra = ["--tasks", "rte,rte, rte", "--methods", "magnitude,magnitude", "--sparsity", "0.5,0.50,.5"]
    argv = [*_base(tiny_model_dir, tiny_glue, tmp_path, *extra), "--seeds", "0,0,00", "--dry-run"]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("to run    rte-dense-0-seed0-")
    assert lines[1].startswith("to run    rte-magnitude-0.5-seed0-")
    assert lines[-1] == "capbench: 2 cells: 2 to run, 0 already finished (dry run)"


def test_duplicates_keep_first_seen_order(capsys, tiny_model_dir, tiny_glue, tmp_path):
    extra = ["--tasks", "sst2,rte,sst2", "--sparsity", "0.9,0.5,0.9", "--seeds", "1,0,1"]
    assert main([*_base(tiny_model_dir, tiny_glue, tmp_path, *extra), "--dry-run"]) == 0
    ids = [line.split()[-1] for line in capsys.readouterr().out.splitlines()[:-1]]
    assert [cell_id.rsplit("-", 1)[0] for cell_id in ids] == [
        f"{task}-{method}-seed{seed}"
        for task in ("sst2", "rte")
        for seed in (1, 0)
        for method in ("dense-0", "magnitude-0.9", "magnitude-0.5")
    ]


def test_expand_grid_keeps_each_cell_id_once(tiny_model_dir, tiny_glue, tmp_path):
    cells = _cells(_base(tiny_model_dir, tiny_glue, tmp_path, "--sparsity", "0.5"))
    base = {
        k: v for k, v in cells[0].to_dict().items() if k not in ("task", "method", "sparsity", "seed", "data")
    }
    base["probes"] = tuple(base["probes"])
    del base["method_options"], base["kd"], base["cap"]
    specs = {"magnitude": (cells[1].method_options, cells[1].kd, cells[1].cap)}
    again = expand_grid(base, {"rte": cells[0].data}, ["magnitude", "magnitude"], [0.5, 0.5], [0, 0], specs)
    assert [c.cell_id for c in again] == [c.cell_id for c in cells]


# --- dry run: finished cells that lack a requested measurement ---------------------------------------------


def _write_done(out, spec, **extra):
    record = {
        "schema_version": records.SCHEMA_VERSION,
        "cell_id": spec.cell_id,
        "spec": spec.to_dict(),
        "spec_hash": spec.digest,
        "status": "done",
        "main_metric": {"name": "accuracy", "split": "validation", "value": 0.5},
        "metrics": {"validation": {"accuracy": 0.5}},
        **extra,
    }
    path = records.record_path(out, spec.cell_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    records.write_json(path, record)
    return path


def test_dry_run_names_missing_probes_and_speed(capsys, monkeypatch, tiny_model_dir, tiny_glue, tmp_path):
    from capbench.measure import measure_after_cell
    from capbench.probing import runner_hook as probing_hook
    from capbench.speed import runner_hook as speed_hook

    measure = ["--probes", "sentlen,bigram_shift", "--speed", "--sparsity", "0.5,0.7,0.9"]
    argv = _base(tiny_model_dir, tiny_glue, tmp_path, *measure)
    dense, half, seventy, _ninety = _cells(argv)
    out = tmp_path / "run"
    probes = {"tasks": {"sentlen": {}, "bigram_shift": {}}, "floors": {}}
    paths = {
        dense.cell_id: _write_done(
            out, dense, probes={"tasks": {"sentlen": {}}, "floors": {}}
        ),  # no speed asked
        half.cell_id: _write_done(out, half),
        seventy.cell_id: _write_done(out, seventy, probes=probes, speed={}),
    }
    assert main([*argv, "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"measure   {dense.cell_id}  (finished; missing: probes bigram_shift)"
    assert lines[1] == f"measure   {half.cell_id}  (finished; missing: probes sentlen,bigram_shift, speed)"
    assert lines[2] == f"finished  {seventy.cell_id}"
    assert lines[3].startswith("to run    rte-magnitude-0.9-seed0-")
    assert lines[-1] == (
        "capbench: 4 cells: 1 to run, 2 to measure (finished; missing --probes/--speed results), "
        "1 already finished (dry run)"
    )
    # A real run measures exactly those, without retraining.
    measured = []
    monkeypatch.setattr(
        probing_hook, "probe_record", lambda r, s, c: measured.append(("probes", s.cell_id)) or {}
    )
    monkeypatch.setattr(
        speed_hook, "speed_record", lambda r, s, c: measured.append(("speed", s.cell_id)) or {}
    )
    for spec in (dense, half, seventy):
        measure_after_cell(spec, paths[spec.cell_id], ctx=None, fresh=False)
    assert measured == [("probes", dense.cell_id), ("probes", half.cell_id), ("speed", half.cell_id)]


def test_dry_run_without_measurements_keeps_its_summary(capsys, tiny_model_dir, tiny_glue, tmp_path):
    argv = _base(tiny_model_dir, tiny_glue, tmp_path, "--sparsity", "0.5")
    dense, pruned = _cells(argv)
    _write_done(tmp_path / "run", dense)
    assert main([*argv, "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        f"finished  {dense.cell_id}",
        f"to run    {pruned.cell_id}",
        "capbench: 2 cells: 1 to run, 1 already finished (dry run)",
    ]
