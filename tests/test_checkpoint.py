"""Mid-training checkpoints: an interrupted cell resumes to the same weights and predictions, for every method."""

import re

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from capbench import checkpoint as ckpt
from capbench.cli import main
from capbench.methods import all_methods
from capbench.records import load_records
from capbench.runner import cell_timings
from tests.test_runner import run_args

STEPS = 20  # 96 tiny rows in batches of 8: 12 steps an epoch, so the resumed run crosses an epoch's end


def _args(model_dir, glue, out, cache, method, every):
    extra = ["--steps", str(STEPS), "--methods", method, "--sparsity", "0.5", "--checkpoint-every", every]
    return run_args(model_dir, glue, out, cache, *extra)


class Interrupted(KeyboardInterrupt):
    pass


def _interrupt_after(monkeypatch, saves: int, under) -> list:
    """Make the process 'die' right after the ``saves``-th checkpoint written under ``under``, once."""
    real, seen = ckpt.Checkpointer.save, []

    def save(self, state):
        real(self, state)
        if str(self.path).startswith(str(under)) and not seen:
            self.__dict__.setdefault("_count", 0)
            self._count += 1
            if self._count == saves:
                seen.append(state["step"])
                raise Interrupted

    monkeypatch.setattr(ckpt.Checkpointer, "save", save)
    return seen


def _cell(out, method):
    return next(r for r in load_records(out) if r["spec"]["method"] == method)


def _untimed(value):
    """A record section without its wall times (which differ between any two runs)."""
    if isinstance(value, dict):
        return {k: _untimed(v) for k, v in value.items() if "seconds" not in k}
    if isinstance(value, list):
        return [_untimed(v) for v in value]
    return value


def _predictions(out, record):
    with np.load(out / "records" / record["predictions"]["file"]) as data:
        return {k: data[k] for k in data.files}


@pytest.mark.parametrize(
    "method,stop",
    [(m, 5) for m in all_methods()] + [("cap_magnitude", 14), ("first_order", 14), ("soft_movement", 14)],
)
def test_interrupted_cell_resumes_to_the_same_result(
    tiny_model_dir, tiny_glue, tmp_path, monkeypatch, capsys, method, stop
):
    cache = tmp_path / "cache"
    plain = tmp_path / "plain"
    assert main(_args(tiny_model_dir, tiny_glue, plain, cache, method, "0")) == 0
    resumed = tmp_path / "resumed"
    args = _args(tiny_model_dir, tiny_glue, resumed, cache, method, "1e-9")
    stopped = _interrupt_after(monkeypatch, stop, resumed)
    assert main(args) == 130  # cli: "interrupted; ... rerun the same command to resume"
    assert stopped == [stop]
    assert len(list((resumed / ".checkpoints").glob("*.pt"))) == 1
    capsys.readouterr()
    assert main([*args, "--dry-run"]) == 0
    assert f"(resumes at step {stop})" in capsys.readouterr().out
    assert not list((resumed / "records").glob("*.json")) or _cell(resumed, "dense")
    monkeypatch.undo()
    assert main(args) == 0

    a, b = _cell(plain, method), _cell(resumed, method)
    assert b["status"] == "done"
    assert [r["at_step"] for r in b["train"]["resumed"]] == [stop]
    assert b["train"]["resumed"][0]["saved_by_commit"] == b["git_commit"]  # the code of both segments
    assert "resumed" not in a["train"]
    t = b["timings"]  # the cell's wall time counts the part before the interruption too
    assert t["total_seconds"] >= t["train_seconds"] + t["eval_seconds"]
    assert b["train"]["steps"] == a["train"]["steps"]
    assert b["metrics"] == a["metrics"]
    assert _untimed(b["method_config"]) == _untimed(a["method_config"])  # schedule, churn, events, info
    pa, pb = _predictions(plain, a), _predictions(resumed, b)
    assert pa.keys() == pb.keys() and all(np.array_equal(pa[k], pb[k]) for k in pa)
    wa = load_file(f"{a['model_dir']}/model.safetensors")
    wb = load_file(f"{b['model_dir']}/model.safetensors")
    assert wa.keys() == wb.keys()
    different = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not different, f"resumed weights differ from the uninterrupted run's: {different[:5]}"
    assert not list((resumed / ".checkpoints").glob("*.pt")), "a finished cell leaves no checkpoint"


def test_interrupted_dense_teacher_resumes_to_the_same_weights(
    tiny_model_dir, tiny_glue, tmp_path, monkeypatch
):
    plain = tmp_path / "plain"
    assert main(_args(tiny_model_dir, tiny_glue, plain, tmp_path / "c1", "magnitude", "0")) == 0
    cache = tmp_path / "c2"
    args = _args(tiny_model_dir, tiny_glue, tmp_path / "resumed", cache, "magnitude", "1e-9")
    _interrupt_after(monkeypatch, 7, cache)
    assert main(args) == 130  # cli: "interrupted; ... rerun the same command to resume"
    monkeypatch.undo()
    assert main(args) == 0
    a, b = _cell(plain, "dense"), _cell(tmp_path / "resumed", "dense")
    wa = load_file(f"{a['model_dir']}/model.safetensors")
    wb = load_file(f"{b['model_dir']}/model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert b["metrics"] == a["metrics"]
    assert not list((cache / ".checkpoints").glob("*.pt"))
    # the dense record states the teacher's training: its steps and its resume, and the time before it
    assert a["train"]["steps"] == b["train"]["steps"] == STEPS
    assert "resumed" not in a["train"] and len(b["train"]["resumed"]) == 1
    assert b["train"]["final_loss_terms"].keys() == a["train"]["final_loss_terms"].keys() == {"ce"}
    t = b["timings"]
    assert t["total_seconds"] >= t["train_seconds"] + t["eval_seconds"]
    assert t["train_seconds"] > b["train"]["resumed"][0]["seconds_before"] > 0


def test_a_dense_cell_from_a_cached_teacher_states_how_the_teacher_was_trained(
    tiny_model_dir, tiny_glue, tmp_path
):
    """A second run directory sharing the cache reuses the teacher: its dense record keeps the teacher's
    steps (from the file saved beside the cached weights) and reports no training time of its own."""
    cache = tmp_path / "cache"
    assert main(_args(tiny_model_dir, tiny_glue, tmp_path / "first", cache, "magnitude", "0")) == 0
    assert main(_args(tiny_model_dir, tiny_glue, tmp_path / "second", cache, "magnitude", "0")) == 0
    a, b = _cell(tmp_path / "first", "dense"), _cell(tmp_path / "second", "dense")
    assert not a["teacher"]["cached"] and b["teacher"]["cached"]
    assert a["train"]["steps"] == b["train"]["steps"] == STEPS
    assert b["teacher"]["training"] == a["teacher"]["training"]
    assert a["teacher"]["training"]["seconds"] == a["timings"]["train_seconds"] > 0
    assert b["timings"]["train_seconds"] == 0.0


def test_a_pruned_cell_that_trained_its_teacher_counts_the_teachers_earlier_parts():
    """A pruned cell whose process trained the dense teacher after an interruption (900 s before it) and
    then the pruned model (400 s, never interrupted): the total counts the teacher's first part too."""
    teacher = {"steps": 20, "seconds": 1200.0, "resumed": [{"at_step": 15, "seconds_before": 900.0}]}
    t = cell_timings(0.0, 310.0, 710.0, 730.0, 731.0, {"seconds": 400.0}, teacher=teacher)
    assert t["train_seconds"] == 400.0 and t["total_seconds"] == 1631.0
    assert cell_timings(0.0, 310.0, 710.0, 730.0, 731.0, {"seconds": 400.0})["total_seconds"] == 731.0


def test_a_planted_state_omission_is_caught(tiny_model_dir, tiny_glue, tmp_path, monkeypatch):
    """The comparison above can fail: dropping the optimizer's moments from the checkpoint changes the
    resumed weights."""
    cache = tmp_path / "cache"
    assert main(_args(tiny_model_dir, tiny_glue, tmp_path / "plain", cache, "magnitude", "0")) == 0
    args = _args(tiny_model_dir, tiny_glue, tmp_path / "resumed", cache, "magnitude", "1e-9")
    _interrupt_after(monkeypatch, 5, tmp_path / "resumed")
    assert main(args) == 130  # cli: "interrupted; ... rerun the same command to resume"
    monkeypatch.undo()
    real_load = ckpt.Checkpointer.load

    def forgetful(self):
        state = real_load(self)
        if state is not None:
            state["optimizer"]["state"] = {}
        return state

    monkeypatch.setattr(ckpt.Checkpointer, "load", forgetful)
    assert main(args) == 0
    a, b = _cell(tmp_path / "plain", "magnitude"), _cell(tmp_path / "resumed", "magnitude")
    wa = load_file(f"{a['model_dir']}/model.safetensors")
    wb = load_file(f"{b['model_dir']}/model.safetensors")
    assert any(not torch.equal(wa[k], wb[k]) for k in wa)


def test_a_checkpoint_of_another_cell_or_a_damaged_file_is_not_resumed(tmp_path):
    saver = ckpt.Checkpointer(tmp_path / "x.pt", 1.0, "digest-a")
    saver.save({"step": 3})
    assert ckpt.Checkpointer(tmp_path / "x.pt", 1.0, "digest-a").load()["step"] == 3
    assert ckpt.Checkpointer(tmp_path / "x.pt", 1.0, "digest-b").load() is None
    (tmp_path / "x.pt").write_bytes(b"not a checkpoint")
    assert saver.load() is None
    assert not list(tmp_path.glob(".*tmp"))


def test_object_state_keeps_tensors_in_place_generators_and_skips_identity_keyed_dicts():
    from capbench.pruning.criteria import RandomCriterion

    class Holder:
        pass

    Holder.__module__ = "capbench.fake"
    live = Holder()
    live.weights = torch.zeros(3)
    live.count = 1
    live.log = [(1, 0.5)]
    live.by_id = {123: torch.ones(2)}
    live.gen = torch.Generator().manual_seed(0)
    live.child = Holder()
    live.child.scale = 2.0
    state = ckpt.object_state(live)
    alias = live.weights
    live.weights.add_(5)
    live.count, live.log, live.child.scale = 7, [], 9.0
    before = torch.rand(1, generator=live.gen)
    live.by_id = {456: torch.zeros(2)}
    ckpt.load_object_state(live, state)
    assert live.weights is alias and torch.equal(alias, torch.zeros(3))
    assert (live.count, live.log, live.child.scale) == (1, [(1, 0.5)], 2.0)
    assert torch.equal(torch.rand(1, generator=live.gen), before)
    assert list(live.by_id) == [456]  # keyed by object identity: not state
    assert RandomCriterion.__module__.startswith("capbench.")


@pytest.mark.parametrize("value", ["-5", "inf", "nan"])
def test_a_bad_checkpoint_interval_exits_2_in_one_line(tiny_model_dir, tiny_glue, tmp_path, capsys, value):
    args = _args(tiny_model_dir, tiny_glue, tmp_path / "run", tmp_path / "cache", "magnitude", value)
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(
        f"capbench: error: --checkpoint-every {value.lstrip('-') if value != '-5' else '-5'}"
    )
    assert len(err.splitlines()) == 1 and not (tmp_path / "run").exists()


def test_a_rerun_finishes_interrupted_cells_before_it_starts_new_ones(
    tiny_model_dir, tiny_glue, tmp_path, monkeypatch
):
    from capbench import runner

    out, cache = tmp_path / "out", tmp_path / "cache"
    first = _args(tiny_model_dir, tiny_glue, out, cache, "random", "1e-9")
    _interrupt_after(monkeypatch, 3, out)
    assert main(first) == 130
    monkeypatch.undo()
    started = [p.stem for p in (out / ".checkpoints").glob("*.pt")]
    assert len(started) == 1 and started[0].startswith("rte-random-")

    order, real = [], runner.execute_cell
    monkeypatch.setattr(
        runner, "execute_cell", lambda spec, *a, **k: order.append(spec.method) or real(spec, *a, **k)
    )
    both = _args(
        tiny_model_dir, tiny_glue, out, cache, "magnitude,random", "0"
    )  # grid order: magnitude first
    assert main(both) == 0
    assert order == ["random", "dense", "magnitude"]
    assert _cell(out, "random")["train"]["resumed"][0]["at_step"] == 3


def test_a_resumed_cell_counts_the_time_before_its_interruption_in_its_total():
    """A cell trained 1,000 s, interrupted, then resumed for 400 s in a second process (10 s loading, 20 s
    evaluating): train_seconds and total_seconds both count the first part."""
    stats = {
        "seconds": 1400.0,
        "resumed": [{"at_step": 500, "seconds_before": 1000.0, "saved_by_commit": "x"}],
    }
    t = cell_timings(started=0.0, loaded=10.0, trained=410.0, evaluated=430.0, now=431.0, stats=stats)
    assert t == {"load_seconds": 10.0, "train_seconds": 1400.0, "eval_seconds": 20.0, "total_seconds": 1431.0}
    assert cell_timings(0.0, 10.0, 410.0, 430.0, 431.0, {"seconds": 400.0})["total_seconds"] == 431.0


def test_a_cell_does_not_resume_with_a_retrained_teacher(
    tiny_model_dir, tiny_glue, tmp_path, monkeypatch, capsys
):
    """Half a cell distilled from one teacher and half from another is neither: when the cached teacher's
    weights changed since the checkpoint (a cleared cache, another machine), the cell trains from the start."""
    from safetensors.torch import save_file

    cache, out = tmp_path / "cache", tmp_path / "run"
    args = _args(tiny_model_dir, tiny_glue, out, cache, "magnitude", "1e-9")
    _interrupt_after(monkeypatch, 5, out)
    assert main(args) == 130
    assert len(list((out / ".checkpoints").glob("*.pt"))) == 1
    monkeypatch.undo()
    capsys.readouterr()
    assert main([*args, "--dry-run"]) == 0
    assert "(resumes at step 5)" in capsys.readouterr().out
    (weights,) = (cache / "dense").glob("*/model.safetensors")
    tensors = load_file(weights)
    name = next(k for k in tensors if k.endswith("classifier.weight"))
    tensors[name] = tensors[name] + 0.01  # the teacher, retrained: other weights under the same key
    save_file(tensors, weights, metadata={"format": "pt"})
    assert main([*args, "--dry-run"]) == 0  # the plan says so instead of promising a resume
    plan = capsys.readouterr().out
    assert "resumes at step" not in plan
    assert re.search(
        r"its checkpoint at step 5 learned from teacher \w{20}; the cache holds \w{20}: starts over", plan
    )
    assert main(args) == 0
    record = _cell(out, "magnitude")
    assert record["status"] == "done" and "resumed" not in record["train"]
    assert not list((out / ".checkpoints").glob("*.pt"))
