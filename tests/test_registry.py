"""The registry: one 'unknown X' error, and a new pruning method added in a few lines (a criterion plus one
registration) that runs through `capbench run`, is listed by `capbench ls methods`, appears in a rendered
leaderboard, and composes with CAP as cap_<method>, without editing any other module."""

import pytest

from capbench.cli import main
from capbench.errors import CapbenchError
from capbench.records import load_records
from capbench.registry import Registry
from tests.test_runner import run_args


def test_registry_register_get_names_and_one_unknown_error():
    fruit = Registry("fruit")
    fruit.register("apple", 1)

    @fruit.register("banana")
    def banana():
        return 2

    assert fruit.names() == ["apple", "banana"] and fruit.get("banana") is banana and "apple" in fruit
    with pytest.raises(CapbenchError, match=r"unknown fruit 'cherry'; known fruits: apple, banana"):
        fruit.get("cherry")
    with pytest.raises(CapbenchError, match="already registered"):
        fruit.register("apple", 3)
    loaded = Registry("task", loader=lambda registry: registry.register("rte", "spec"))
    assert loaded.names() == ["rte"]


def test_tasks_metrics_and_methods_use_the_registry():
    from capbench.metrics import METRICS
    from capbench.pruning.pruners import get_method
    from capbench.tasks import get_task

    with pytest.raises(CapbenchError, match="unknown task 'rtee'; known tasks: cola, mnli"):
        get_task("rtee")
    with pytest.raises(CapbenchError, match="unknown metric 'acc'; known metrics: accuracy"):
        METRICS.get("acc")
    with pytest.raises(CapbenchError, match="unknown pruning method 'lottery'; known methods: magnitude"):
        get_method("lottery")
    assert get_method("first_order").structured and not get_method("magnitude").structured


def test_cap_variants_compose_with_any_method_and_keep_published_names():
    from capbench.cap.config import CapConfig
    from capbench.methods import all_methods, cap_defaults, check_methods, criterion_of

    names = all_methods()
    assert {"cap_magnitude", "cap_movement", "cap_soft", "cap_first_order", "cap_random"} <= set(names)
    assert "cap_soft_movement" not in names  # listed once, under its published name
    assert criterion_of("cap_soft") == "soft_movement" and criterion_of("cap_random") == "random"
    assert check_methods(["cap_soft_movement", "cap_soft", "magnitude"]) == ["cap_soft", "magnitude"]
    assert cap_defaults("cap_first_order") == CapConfig.structured_defaults().to_dict()
    assert cap_defaults("cap_movement") == CapConfig().to_dict()
    with pytest.raises(CapbenchError, match="unknown method 'cap_lottery'"):
        check_methods(["cap_lottery"])


def test_one_coercer_types_values_by_the_declared_rule():
    from capbench.options import coerce, parse_key_values

    assert parse_key_values(["warmup=0.1", "oneshot=yes"], "--method-option") == {
        "warmup": "0.1",
        "oneshot": "yes",
    }
    with pytest.raises(CapbenchError, match="expected KEY=VALUE"):
        parse_key_values(["warmup"], "--method-option")
    assert coerce("yes", "bool") is True and coerce("0", "bool") is False
    assert coerce("400", "float") == 400 and isinstance(coerce("400", "float"), int)  # as written: digests
    assert coerce("1e-3", "float") == 0.001 and coerce("1e-1", "steps") == "1e-1"
    assert coerce("prc+fic", "list") == ("prc", "fic") and coerce("none", "optional_int") is None
    assert coerce("", "int") is None


@pytest.fixture
def abs_sum():
    """A new method in a few lines: rows scored by the sum of |w| (every weight of a row shares its score)."""
    from capbench.pruning.base import UnstructuredPruner
    from capbench.pruning.criteria import Criterion
    from capbench.pruning.pruners import PRUNING_METHODS, SCHEDULE, register_method

    class AbsSum(Criterion):
        name = "abs_sum"

        def scores(self, module):
            return module.weight.detach().abs().sum(1, keepdim=True).expand_as(module.weight)

    class AbsSumPruner(UnstructuredPruner):
        name = "abs_sum"

        def __init__(self, sparsity, options):
            super().__init__(sparsity, options, AbsSum(), hard=True)

    register_method(AbsSumPruner, "rows by the sum of |w|", {**SCHEDULE, "scope": "local", "update_every": 1})
    yield "abs_sum"
    PRUNING_METHODS.unregister("abs_sum")


def test_a_new_method_runs_is_listed_and_is_a_leaderboard_row(
    abs_sum, tiny_model_dir, tiny_glue, tmp_path, capsys
):
    assert main(["ls", "methods"]) == 0
    listed = capsys.readouterr().out
    assert "abs_sum " in listed and "cap_abs_sum " in listed and "rows by the sum of |w|" in listed

    out = tmp_path / "run"
    args = run_args(tiny_model_dir, tiny_glue, out, tmp_path / "cache", "--methods", "abs_sum,cap_abs_sum")
    assert main([*args, "--sparsity", "0.5", "--method-option", "update_every=2"]) == 0
    records = {r["spec"]["method"]: r for r in load_records(out)}
    for method in ("abs_sum", "cap_abs_sum"):
        assert records[method]["status"] == "done", records[method].get("error")
        assert records[method]["spec"]["method_options"]["update_every"] == 2
        assert records[method]["sparsity"]["linear"] == pytest.approx(0.5, abs=0.01)
    assert records["cap_abs_sum"]["spec"]["cap"] == records["cap_abs_sum"]["cap"]["config"]
    capsys.readouterr()
    assert main(["leaderboard", "--runs", str(out)]) == 0
    board = capsys.readouterr().out
    assert "| abs_sum +KD |" in board and "| cap_abs_sum |" in board  # pruned with KD by default


def test_a_new_method_option_is_checked_by_its_rule(abs_sum, tiny_model_dir, tiny_glue, tmp_path, capsys):
    args = run_args(tiny_model_dir, tiny_glue, tmp_path / "run", tmp_path / "cache", "--methods", abs_sum)
    assert main([*args, "--method-option", "update_every=0", "--dry-run"]) == 2
    assert "--method-option update_every=0:" in capsys.readouterr().err
    assert main([*args, "--method-option", "seed=1", "--dry-run"]) == 2
    assert "unknown option for abs_sum" in capsys.readouterr().err


def test_a_task_is_one_yaml_file_including_its_tsv_layout(tmp_path):
    from capbench.data.glue_tsv import read_glue_tsv, tsv_split_path
    from capbench.probing.corpus import text_fields
    from capbench.tasks import TASKS, _parse, official_rows_of

    spec = tmp_path / "boolq.yaml"
    spec.write_text(
        "name: boolq\ndataset: super_glue\nconfig: boolq\ntext_fields: [question, passage]\nnum_labels: 2\n"
        'label_names: ["no", "yes"]\neval_splits: [validation]\nmetrics: [accuracy]\nmain_metric: accuracy\n'
        "official_rows: {train: 9427}\n"
        "tsv: {directory: BoolQ, n_fields: [3], columns: {question: 0, passage: 1}, label_column: 2,\n"
        "      split_files: {train: [train.tsv]}}\n"
    )
    task = _parse(spec)
    (tmp_path / "BoolQ").mkdir()
    (tmp_path / "BoolQ" / "train.tsv").write_text("is it?\tit is.\tyes\nis it not?\tno.\t0\n")
    columns = read_glue_tsv(tsv_split_path(tmp_path, task, "train"), task)
    assert columns["question"] == ["is it?", "is it not?"] and columns["label"] == [1, 0]
    TASKS.register("boolq", task)
    try:
        assert text_fields("boolq", {}) == ("question", "passage")
        assert official_rows_of("boolq", "train") == 9427
    finally:
        TASKS.unregister("boolq")
