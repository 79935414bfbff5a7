import pytest

from capbench.cli import main


def _error(capsys, argv):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    return err


def test_ls_tasks_lists_every_glue_task(capsys):
    assert main(["ls", "tasks"]) == 0
    out = capsys.readouterr().out
    for name in ("cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "wnli"):
        assert name in out


def test_ls_methods_and_presets(capsys):
    assert main(["ls", "methods"]) == 0
    out = capsys.readouterr().out
    assert "magnitude" in out and "dense" in out.split()  # `dense` is a --methods name too
    assert main(["ls", "presets"]) == 0
    assert "smoke" in capsys.readouterr().out


def test_unknown_task_lists_known(capsys, tiny_glue):
    err = _error(capsys, ["run", "--tasks", "rtee", "--data-dir", str(tiny_glue)])
    assert "unknown task 'rtee'" in err and "rte" in err


def test_unknown_method_lists_known(capsys, tiny_glue):
    err = _error(capsys, ["run", "--tasks", "rte", "--methods", "magnitud", "--data-dir", str(tiny_glue)])
    assert "unknown method 'magnitud'" in err and "magnitude" in err


@pytest.mark.parametrize("value", ["1.0", "-0.1", "1.5"])
def test_sparsity_outside_unit_interval_is_rejected(capsys, tiny_glue, value):
    err = _error(capsys, ["run", "--tasks", "rte", f"--sparsity={value}", "--data-dir", str(tiny_glue)])
    assert "outside [0, 1)" in err


def test_missing_data_dir(capsys, tmp_path):
    err = _error(capsys, ["run", "--tasks", "rte", "--data-dir", str(tmp_path / "nope")])
    assert "no such directory" in err


def test_missing_split_fails_before_training(capsys, tiny_glue):
    err = _error(capsys, ["run", "--tasks", "mnli", "--data-dir", str(tiny_glue)])
    assert "missing split" in err


def test_model_that_is_not_an_encoder(capsys, tmp_path, tiny_glue):
    from transformers import GPT2Config

    GPT2Config(n_layer=1, n_embd=8, n_head=2).save_pretrained(tmp_path / "gpt")
    err = _error(
        capsys,
        [
            "run",
            "--tasks",
            "rte",
            "--model",
            str(tmp_path / "gpt"),
            "--data-dir",
            str(tiny_glue),
            "--quiet",
            "--out",
            str(tmp_path / "run"),
            "--cache-dir",
            str(tmp_path / "c"),
        ],
    )
    assert "not a supported encoder" in err
