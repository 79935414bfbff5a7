"""first_order's iterative procedure (the CAP authors' CAP-f: prune a step, retrain with a fresh optimizer) and
the paper preset's per-task method options."""

import copy
import math

import pytest
import torch
from torch.utils.data import DataLoader

from capbench import training
from capbench.cli import main
from capbench.methods import method_spec
from capbench.presets import get_preset
from capbench.pruning import make_pruner
from capbench.pruning.pruners import method_defaults, spec_options
from capbench.records import load_records
from capbench.testing import random_batch, tiny_bert
from capbench.training import CrossEntropyLoss, TrainConfig, importance_pass, train
from tests.test_runner import run_args


class Rows(torch.utils.data.Dataset):
    def __init__(self, model, n=20):
        self.rows = [
            {k: v[0] for k, v in random_batch(model, batch_size=1, seq_len=8, seed=i).items()}
            for i in range(n)
        ]

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


def collate(rows):
    return {k: torch.stack([r[k] for r in rows]) for k in rows[0]}


def loader_for(model, n=20, batch_size=8, shuffle=True):
    return DataLoader(
        Rows(model, n),
        batch_size=batch_size,
        shuffle=shuffle,
        collate_fn=collate,
        generator=torch.Generator(),
    )


def iterative(sparsity, **options):
    return make_pruner("first_order", sparsity, {"procedure": "iterative", **options})


# --- the schedule of events ------------------------------------------------------------------------------
def test_plan_is_the_authors_sequence_with_two_epochs_per_step():
    plan = iterative(0.9, step_epochs=2.0).plan(steps_per_epoch=10, epochs=3.0)
    assert [s for s, _ in plan] == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9])
    assert [n for _, n in plan] == [20] * 9  # 2 epochs each, whatever --epochs says
    half = iterative(0.5, step_epochs=2.0).plan(10, 3.0)
    assert [s for s, _ in half] == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5])  # the authors' run at step 5
    odd = iterative(0.95, step_sparsity=0.2).plan(10, 3.0)
    assert [s for s, _ in odd] == pytest.approx([0.2, 0.4, 0.6, 0.8, 0.95])  # the target last
    assert [n for _, n in odd] == [math.ceil(10 * 3.0 / 5)] * 5  # step_epochs=0: --epochs shared
    assert make_pruner("first_order", 0.9).plan(10, 3.0) is None  # gradual: one run, as before


def test_training_loop_prunes_each_step_after_an_importance_pass_and_resets_the_optimizer(monkeypatch):
    model = tiny_bert()
    loader = loader_for(model)  # 3 batches per epoch
    pruner = iterative(0.5, step_epochs=1.0)
    events, optimizers, schedules = [], [], []
    real_pass, real_optimizer, real_schedule = (
        training.importance_pass,
        training._optimizer,
        training._linear_schedule,
    )

    def recording_pass(model, loader, loss_fn, pruner):
        events.append(("importance", pruner.current_sparsity(), model.training))
        return real_pass(model, loader, loss_fn, pruner)

    def recording_optimizer(model, cfg, pruner):
        optimizers.append(pruner.current_sparsity())
        return real_optimizer(model, cfg, pruner)

    def recording_schedule(optimizer, warmup, steps):
        schedules.append((warmup, steps))
        return real_schedule(optimizer, warmup, steps)

    monkeypatch.setattr(training, "importance_pass", recording_pass)
    monkeypatch.setattr(training, "_optimizer", recording_optimizer)
    monkeypatch.setattr(training, "_linear_schedule", recording_schedule)
    pruner.on_prune_step = lambda step: events.append(("snapshot", pruner.current_sparsity(), step))
    stats = train(model, loader, TrainConfig(epochs=2.0, batch_size=8, warmup_ratio=0.34), pruner=pruner)

    assert stats["steps"] == 5 * 3  # 5 steps of one epoch each (step_epochs=1), not --epochs=2
    sparsities = [0.0, 0.1, 0.2, 0.3, 0.4]  # the masks of the previous step when each pass and snapshot run
    expected = []
    for k, before in enumerate(sparsities):
        expected += [("importance", before, True), ("snapshot", before, 3 * k)]
    got = [(kind, round(s, 1), extra) for kind, s, extra in events]
    assert got == expected  # importance pass, then the snapshot hook, then the new masks, at every step
    assert pruner.events == [0, 3, 6, 9, 12]
    assert [e["batches"] for e in pruner.event_log] == [3] * 5  # each step's scores: one full pass only
    # A fresh optimizer and a fresh warmup/decay schedule over each retraining (after the initial one).
    assert [round(s, 1) for s in optimizers[1:]] == [0.1, 0.2, 0.3, 0.4, 0.5]
    assert schedules[1:] == [(1, 3)] * 5
    model = pruner.finalize(model)
    assert "forced_to_target_at_finalize" not in pruner.info
    assert pruner.info["achieved_linear_sparsity"] == pytest.approx(0.5, abs=0.02)
    assert pruner.info["importance_loss"] == "training"


# --- the importance pass ---------------------------------------------------------------------------------
def reference_importance(model, loader):
    """|dL/dgate| summed over batches in eval mode, computed independently of the pruner's gates: a gate per
    head on the self-attention's context (forward hooks on ``attention.self``, whose output the pruner gates
    at the output projection's input), a gate per neuron on the intermediate activation."""
    model = copy.deepcopy(model).eval()
    cfg = model.config
    size = cfg.hidden_size // cfg.num_attention_heads
    heads = [torch.ones(cfg.num_attention_heads, requires_grad=True) for _ in range(cfg.num_hidden_layers)]
    neurons = [torch.ones(cfg.intermediate_size, requires_grad=True) for _ in range(cfg.num_hidden_layers)]

    def gate_context(module, args, out, g):
        context = out[0] * g.repeat_interleave(size)
        return (context, *out[1:]) if isinstance(out, tuple) else context

    for layer, hg, fg in zip(model.bert.encoder.layer, heads, neurons, strict=True):
        layer.attention.self.register_forward_hook(lambda m, a, out, g=hg: gate_context(m, a, out, g))
        layer.intermediate.register_forward_hook(lambda m, a, out, g=fg: out * g)
    sums = [torch.zeros_like(g) for g in heads + neurons]
    ordered = DataLoader(loader.dataset, batch_size=loader.batch_size, shuffle=False, collate_fn=collate)
    for batch in ordered:
        model(**batch).loss.backward()
        for total, gate in zip(sums, heads + neurons, strict=True):
            total += gate.grad.abs()
            gate.grad = None
    n = cfg.num_hidden_layers
    return torch.stack(sums[:n]), sums[n:]


def test_importance_pass_is_an_eval_mode_pass_over_the_train_set():
    model = tiny_bert(hidden_dropout_prob=0.5, attention_probs_dropout_prob=0.5)  # eval mode matters
    loader = loader_for(model, n=20, batch_size=8)
    heads, ffn = reference_importance(model, loader)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pruner = iterative(0.5)
    pruner.attach(model, 10)
    model.train()
    modes = []
    hook = model.bert.embeddings.dropout.register_forward_pre_hook(lambda m, a: modes.append(m.training))
    assert importance_pass(model, loader, CrossEntropyLoss(), pruner) == "training"
    hook.remove()
    assert modes == [False] * 3 and model.training  # eval during the pass, train mode restored after
    imp = pruner.importance
    assert imp.batches == 3  # every batch of the train set (20 rows, batch 8)
    torch.testing.assert_close(torch.stack(imp.head_scores), heads, rtol=1e-4, atol=1e-7)
    for mine, ref in zip(imp.ffn_scores, ffn, strict=True):
        torch.testing.assert_close(mine, ref, rtol=1e-4, atol=1e-7)
    for key, value in model.state_dict().items():  # no optimizer step, and weights got no gradient
        assert key.endswith("mask") or torch.equal(value, before[key]), key
    assert all(p.grad is None for p in model.parameters())
    assert all(p.requires_grad for p in model.parameters())


def test_importance_pass_uses_the_task_loss_for_a_composer_with_side_effects():
    class Counting:
        needs_hidden_states = False

        def __init__(self):
            self.calls = 0

        def __call__(self, outputs, batch, step):
            self.calls += 1
            return {"ce": outputs.loss}

    model = tiny_bert()
    pruner = iterative(0.5)
    pruner.attach(model, 10)
    loss_fn = Counting()
    assert importance_pass(model, loader_for(model), loss_fn, pruner) == "task"
    assert loss_fn.calls == 0  # its counters (e.g. CAP's steps since a snapshot) are untouched

    class WithImportanceTerms(Counting):
        def importance_terms(self, outputs, batch):
            return {"ce": outputs.loss}

    assert importance_pass(model, loader_for(model), WithImportanceTerms(), pruner) == "training"


def test_iterative_step_ranks_units_globally_after_per_layer_l2_normalisation():
    model = tiny_bert()
    pruner = iterative(0.5)
    pruner.attach(model, 10)
    importance_pass(model, loader_for(model), CrossEntropyLoss(), pruner)
    imp = pruner.importance
    normalised = {
        kind: [s / s.norm() for s in scores]  # prune_utils.py L116-121
        for kind, scores in (("heads", imp.head_scores), ("ffn", imp.ffn_scores))
    }
    pruner.prune_step(0, 0.5)
    assert pruner.current_sparsity() == pytest.approx(0.5, abs=0.02)
    for kind, alive in (("heads", pruner.head_alive), ("ffn", pruner.ffn_alive)):
        scores = normalised[kind]
        pruned = [float(s[~a].max()) for s, a in zip(scores, alive, strict=True) if (~a).any()]
        kept = [float(s[a].min()) for s, a in zip(scores, alive, strict=True) if int(a.sum()) > 1]
        assert pruned and max(pruned) <= min(kept), kind  # the lowest normalised scores, across layers
    assert all(int(a.sum()) >= 1 for a in pruner.head_alive)  # at_least_x_heads_per_layer=1


# --- specs -----------------------------------------------------------------------------------------------
def test_new_options_stay_out_of_the_spec_at_their_default():
    options = method_spec("first_order", {}, False, {})[0]
    assert not {"procedure", "step_sparsity", "step_epochs"} & set(options)  # published digests unchanged
    assert make_pruner("first_order", 0.5, options).options["procedure"] == "gradual"
    chosen = method_spec("cap_first_order", {"procedure": "iterative"}, False, {})[0]
    assert chosen["procedure"] == "iterative" and "step_epochs" not in chosen
    assert spec_options("first_order", method_defaults("first_order")) == options


def test_paper_preset_per_task_method_options():
    paper = get_preset("paper")

    def options(task, method, sparsity, overrides=None):
        base = method_spec(method, overrides or {}, True, {})[0]
        return paper.cell_options(task, method, sparsity, base, overrides or {})

    assert options("qqp", "soft_movement", 0.9)["final_lambda"] == 190.0  # README L59
    assert options("qqp", "cap_soft", 0.97)["final_lambda"] == 550.0
    assert options("mnli", "soft_movement", 0.9)["final_lambda"] == 290.0
    assert options("mnli", "soft_movement", 0.97)["final_lambda"] == 680.0
    assert options("sst2", "soft_movement", 0.9)["final_lambda"] == 550.0  # the script's value elsewhere
    assert options("qqp", "soft_movement", 0.9, {"final_lambda": 100.0})["final_lambda"] == 100.0  # user wins
    qqp = options("qqp", "cap_magnitude", 0.9)
    assert (qqp["warmup"], qqp["cooldown"]) == (0.193, 0.29)  # 22,000 and 33,000 of 113,710 steps
    assert (options("mnli", "movement", 0.5)["warmup"], options("mnli", "movement", 0.5)["cooldown"]) == (
        0.179,
        0.269,
    )
    assert options("rte", "magnitude", 0.5)["warmup"] == method_defaults("magnitude")["warmup"]
    structured = options("rte", "cap_first_order", 0.9)
    assert structured["procedure"] == "iterative" and structured["step_epochs"] == 2.0
    kept = options("rte", "first_order", 0.9, {"procedure": "gradual"})
    assert "procedure" not in kept  # the user's gradual wins (at its default, left out of the spec)
    assert make_pruner("first_order", 0.9, kept).plan(10, 1.0) is None
    assert get_preset("default").cell_options("qqp", "soft_movement", 0.9, {"x": 1}, {}) == {"x": 1}


def test_ls_presets_shows_the_paper_preset_options(capsys):
    assert main(["ls", "presets"]) == 0
    out = capsys.readouterr().out
    assert "procedure=iterative" in out and "final_lambda=190.0" in out and "README.md L59" in out


# --- end to end ------------------------------------------------------------------------------------------
def test_run_iterative_first_order_and_cap_first_order_reach_the_target(tiny_model_dir, tiny_glue, tmp_path):
    args = run_args(tiny_model_dir, tiny_glue, tmp_path / "run", tmp_path / "cache")
    args += ["--methods", "first_order,cap_first_order", "--method-option", "procedure=iterative"]
    args += ["--sparsity", "0.5"]
    assert main(args) == 0
    records = {r["spec"]["method"]: r for r in load_records(tmp_path / "run")}
    assert {r["status"] for r in records.values()} == {"done"}
    for method in ("first_order", "cap_first_order"):
        record = records[method]
        assert record["spec"]["method_options"]["procedure"] == "iterative"
        config = record["method_config"]
        assert config["procedure"] == "iterative"
        assert len(config["pruning_events"]) == 5  # 0.1, ..., 0.5
        assert record["sparsity"]["linear"] == pytest.approx(0.5, abs=0.02)
        assert "forced_to_target_at_finalize" not in config


def test_paper_preset_options_reach_the_cells_beneath_method_options(tiny_model_dir, tiny_glue, tmp_path):
    from capbench.cli import build_parser
    from capbench.runflow import cells_from_args

    def cells(*extra):
        argv = ["run", "--tasks", "rte", "--preset", "paper", "--model", str(tiny_model_dir)]
        argv += ["--data-dir", str(tiny_glue), "--out", str(tmp_path / "run"), "--dry-run", *extra]
        return {c.method: c for c in cells_from_args(build_parser().parse_args(argv))[0]}

    got = cells("--methods", "cap_first_order,soft_movement", "--sparsity", "0.9")
    assert got["cap_first_order"].method_options["procedure"] == "iterative"
    assert got["cap_first_order"].method_options["step_epochs"] == 2.0
    assert got["soft_movement"].method_options["final_lambda"] == 550.0
    mine = cells("--methods", "soft_movement", "--sparsity", "0.9", "--method-option", "final_lambda=100")
    assert mine["soft_movement"].method_options["final_lambda"] == 100.0
