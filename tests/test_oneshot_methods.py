"""Wanda, SparseGPT and oBERT as capbench methods: masks from the model's own calibration inputs, exact
sparsity, masks that stay zero through fine-tuning, the one-shot regime in the runner and the leaderboard."""

import copy

import pytest
import torch
from torch.utils.data import DataLoader

from capbench.errors import CapbenchError
from capbench.methods import grid_method_specs, regime_controls
from capbench.pruning.calibration import sequential_calibration
from capbench.pruning.masks import MaskedLinear, n_pruned
from capbench.pruning.pruners import make_pruner
from capbench.pruning.pruners.obert import step_sparsities
from capbench.testing import tiny_bert
from capbench.training import TrainConfig, train


def _stack(items):
    return {k: torch.stack([item[k] for item in items]) for k in items[0]}


def _batches(n_batches=3, rows=8, seq=12, seed=0):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        ids = torch.randint(5, 40, (rows, seq), generator=gen)
        lengths = torch.randint(4, seq + 1, (rows,), generator=gen)
        mask = (torch.arange(seq)[None, :] < lengths[:, None]).long()
        ids = ids * mask  # padding id 0
        out.append(
            {
                "input_ids": ids,
                "attention_mask": mask,
                "token_type_ids": torch.zeros_like(ids),
                "labels": torch.randint(0, 2, (rows,), generator=gen),
            }
        )
    return out


def _masked(model):
    return [m for m in model.modules() if isinstance(m, MaskedLinear)]


def _calibrated(method, sparsity, options=None, model=None, batches=None):
    model = model or tiny_bert()
    pruner = make_pruner(method, sparsity, options or {})
    pruner.attach(model, 10)
    pruner.calibrate(batches or _batches())
    return model, pruner


def test_wanda_mask_equals_direct_computation_on_the_first_layer():
    model = tiny_bert()
    reference = copy.deepcopy(model)
    batches = _batches()
    captured = []
    query = reference.bert.encoder.layer[0].attention.self.query
    handle = query.register_forward_pre_hook(lambda _m, inputs: captured.append(inputs[0]))
    with torch.no_grad():
        for batch in batches:
            reference(**{k: v for k, v in batch.items() if k != "labels"})
    handle.remove()
    x = torch.cat([c[b["attention_mask"].bool()] for c, b in zip(captured, batches, strict=True)])
    norms = torch.linalg.norm(x, dim=0)  # ||X_j||_2 over every real token of the calibration batch
    direct = query.weight.detach().abs() * norms
    n_prune = int(direct.shape[1] * 0.5)
    expected = torch.ones_like(direct, dtype=torch.bool)
    expected.scatter_(1, torch.sort(direct, dim=1, stable=True).indices[:, :n_prune], False)
    _, pruner = _calibrated("wanda", 0.5, model=model, batches=batches)
    assert torch.equal(pruner.modules[0].mask.bool(), expected)


@pytest.mark.parametrize(
    "method,options",
    [("wanda", {}), ("sparsegpt", {}), ("wanda", {"pattern": "2:4"}), ("sparsegpt", {"pattern": "2:4"})],
)
def test_calibrated_methods_reach_the_target_and_keep_zeros_through_fine_tuning(method, options):
    sparsity = 0.5 if options else 0.7
    model, pruner = _calibrated(method, sparsity, options)
    modules = _masked(model)
    for m in modules:  # each matrix exactly at the target, as per-matrix magnitude (round(numel * sparsity))
        assert int((m.mask == 0).sum()) == n_pruned(m.mask.numel(), sparsity)
    if options:  # 2:4: two of every four consecutive weights of a row pruned
        for m in modules:
            assert (m.mask.reshape(m.out_features, -1, 4).sum(-1) == 2).all()
    zeros = [m.mask == 0 for m in modules]
    assert all(bool((m.weight[z] == 0).all()) for m, z in zip(modules, zeros, strict=True))
    cfg = TrainConfig(epochs=1.0, max_steps=4, batch_size=8, learning_rate=1e-2)
    batches = _batches(4)
    data = [{k: b[k][i] for k in b} for b in batches for i in range(len(b["labels"]))]
    train(model, DataLoader(data, batch_size=8, collate_fn=_stack), cfg, pruner=pruner)
    for m, z in zip(modules, zeros, strict=True):
        assert torch.equal(m.mask == 0, z)  # the mask is fixed
        assert bool((m.weight[z] == 0).all())
    pruner.finalize(model)
    assert pruner.config()["achieved_linear_sparsity"] == pytest.approx(sparsity, abs=1e-3)


def test_sparsegpt_at_zero_sparsity_leaves_the_model_unchanged():
    model = tiny_bert()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _calibrated("sparsegpt", 0.0, model=model)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def _error(x, w, pruned):
    return float(((x @ w.T - x @ pruned.reshape(w.shape).T) ** 2).sum())


def test_sparsegpt_layer_error_below_magnitude_on_the_model():
    """Per linear, on its own calibration inputs: SparseGPT's output error below per-matrix magnitude's."""
    batches = _batches(4)
    dense = tiny_bert()
    model, _ = _calibrated("sparsegpt", 0.5, model=copy.deepcopy(dense), batches=batches)
    inputs = {}

    def keep(name):
        def hook(_module, args):
            inputs.setdefault(name, []).append(args[0].reshape(-1, args[0].shape[-1]))

        return hook

    layer0 = dense.bert.encoder.layer[0]
    handles = [
        m.register_forward_pre_hook(keep(n))
        for n, m in layer0.named_modules()
        if n.endswith(("query", "dense"))
    ]
    with torch.no_grad():
        for batch in batches:
            dense(**{k: v for k, v in batch.items() if k != "labels"})
    for h in handles:
        h.remove()
    pruned0 = model.bert.encoder.layer[0]
    for name, xs in inputs.items():
        x = torch.cat(xs)
        w = layer0.get_submodule(name).weight.detach()
        w_sgpt = pruned0.get_submodule(name).effective_weight()
        k = w.numel() // 2
        w_mag = w.clone().reshape(-1)
        w_mag[w.abs().reshape(-1).argsort()[:k]] = 0
        assert _error(x, w, w_sgpt) < _error(x, w, w_mag), name


def test_obert_schedule_follows_the_recipe():
    # 30epochs_unstructured97_mnli.yaml: 0.7 at the first of 7 steps, cubic to 0.97 at the last
    values = step_sparsities(0.97, 0.7, 7)
    assert values[0] == 0.7 and values[-1] == 0.97 and len(values) == 7
    assert all(b > a for a, b in zip(values, values[1:], strict=False))
    assert step_sparsities(0.5, 0.7, 7) == [0.5]  # below 0.7 the first step reaches the target
    pruner = make_pruner("obert", 0.9, {"warmup": 0.1, "pruning_steps": 3})
    plan = pruner.plan(10, 10.0)
    assert plan[0] == (0.0, 10) and sum(n for _, n in plan) == 100
    assert [s for s, _ in plan[1:]] == step_sparsities(0.9, 0.7, 3)
    merged = make_pruner("obert", 0.5, {"warmup": 0.1, "pruning_steps": 3}).plan(10, 10.0)
    assert merged == [(0.0, 10), (0.5, 90)]


def test_obert_prunes_in_steps_to_the_target_and_keeps_zeros():
    model = tiny_bert()
    options = {
        "num_grads": 4,
        "fisher_block_size": 8,
        "grad_batch_size": 4,
        "pruning_steps": 2,
        "warmup": 0.25,
    }
    pruner = make_pruner("obert", 0.8, options)
    rows = _batches(4)
    cfg = TrainConfig(epochs=1.0, max_steps=8, batch_size=8, learning_rate=1e-3)

    keys = ("input_ids", "attention_mask", "token_type_ids", "labels")
    data = [{k: b[k][i] for k in keys} for b in rows for i in range(len(b["labels"]))]
    loader = DataLoader(data, batch_size=8, collate_fn=_stack)
    train(model, loader, cfg, pruner=pruner)
    events = pruner.config()["pruning_events"]
    assert [e["sparsity"] for e in events] == step_sparsities(0.8, 0.7, 2)
    total = sum(m.mask.numel() for m in pruner.modules)
    assert sum(int((m.mask == 0).sum()) for m in pruner.modules) == n_pruned(total, 0.8)  # global, exact
    for m in pruner.modules:
        assert bool((m.weight[m.mask == 0] == 0).all())
    pruner.finalize(model)
    assert pruner.config()["achieved_linear_sparsity"] == pytest.approx(0.8, abs=1e-4)


def test_oneshot_options_are_checked_before_any_work():
    with pytest.raises(CapbenchError, match="pattern=2:4: prunes exactly 0.5.*--sparsity 0.5"):
        grid_method_specs(["wanda"], {"pattern": "2:4"}, True, {}, [0.9])
    with pytest.raises(CapbenchError, match="start=finetuned: obert is not one-shot.*use start=pretrained"):
        grid_method_specs(["obert"], {"start": "finetuned"}, True, {}, [0.9])
    with pytest.raises(CapbenchError, match="start=finetuned: unknown option for movement"):
        grid_method_specs(["movement"], {"start": "finetuned"}, True, {}, [0.9])
    with pytest.raises(CapbenchError, match="add --method-option oneshot=true"):
        grid_method_specs(["magnitude"], {"start": "finetuned"}, True, {}, [0.9])
    with pytest.raises(CapbenchError, match="finetune_steps"):
        grid_method_specs(["wanda"], {"finetune_steps": "-3"}, True, {}, [0.5])


def test_a_grid_with_one_shot_cells_gets_the_magnitude_control():
    specs = grid_method_specs(["wanda", "obert"], {}, True, {}, [0.5])
    controls = regime_controls(specs, True)
    assert len(controls) == 1
    method, (options, kd, _) = controls[0]
    assert method == "magnitude" and options["oneshot"] is True and options["start"] == "finetuned"
    assert kd is not None
    assert regime_controls(grid_method_specs(["magnitude", "obert"], {}, True, {}, [0.5]), True) == []


def test_sequential_calibration_ignores_padding():
    """Padding tokens never reach the statistics: the same rows padded longer give the same statistics."""
    from capbench.pruning.masks import wrap

    class Sum:
        def __init__(self, module):
            self.total = torch.zeros(module.in_features)

        def add(self, x, samples):
            self.total += x.sum(0)

    def totals(data):
        stats = []

        def new_stats(module):
            stats.append(Sum(module))
            return stats[-1]

        model = tiny_bert()
        wrap(model)
        sequential_calibration(model, data, new_stats, lambda *a: None)
        return torch.cat([s.total for s in stats])

    batches = _batches(1)
    longer = [
        {k: torch.nn.functional.pad(v, (0, 5)) if v.dim() == 2 else v for k, v in b.items()} for b in batches
    ]
    assert torch.allclose(totals(batches), totals(longer), atol=1e-4)


def test_ls_methods_names_each_regime_and_source(capsys):
    from capbench.cli import main

    assert main(["ls", "methods"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert "[one-shot on fine-tuned]" in lines["wanda"] and "locuslab/wanda" in lines["wanda"]
    assert "[one-shot on fine-tuned]" in lines["sparsegpt"] and "IST-DASLab/sparsegpt" in lines["sparsegpt"]
    assert "[gradual]" in lines["obert"] and "sparseml" in lines["obert"]
    assert "[gradual]" in lines["magnitude"]


def test_finetune_steps_zero_keeps_the_one_shot_model_as_pruned(tiny_model_dir, tiny_glue, tmp_path):
    from capbench.cli import main
    from capbench.records import load_records

    out = tmp_path / "run"
    args = ["run", "--tasks", "rte", "--preset", "smoke", "--model", str(tiny_model_dir)]
    args += ["--data-dir", str(tiny_glue), "--out", str(out), "--cache-dir", str(tmp_path / "cache")]
    args += ["--batch-size", "8", "--quiet", "--methods", "sparsegpt", "--sparsity", "0.5"]
    assert main([*args, "--method-option", "finetune_steps=0"]) == 0
    record = next(r for r in load_records(out) if r["spec"]["method"] == "sparsegpt")
    assert record["train"]["steps"] == 0 and record["oneshot"]["finetune_steps"] == 0
    assert record["main_metric"]["value"] == record["oneshot"]["after_pruning"]["main_metric"]["value"]
    assert record["metrics"] == record["oneshot"]["after_pruning"]["metrics"]


@pytest.mark.parametrize("method", ["magnitude", "movement"])
def test_gradual_n_m_ramps_per_group_and_holds_through_training_and_reload(method, tmp_path):
    from capbench.models import load_classifier

    model = tiny_bert()
    pruner = make_pruner(method, 0.5, {"pattern": "2:4", "warmup": 0.0, "cooldown": 0.25})
    batches = _batches(8)
    data = [{k: b[k][i] for k in b} for b in batches for i in range(len(b["labels"]))]
    loader = DataLoader(data, batch_size=4, collate_fn=_stack)
    seen = set()
    after_step = pruner.after_step

    def record(step):
        after_step(step)
        for m in pruner.modules:
            seen.update((m.mask.reshape(m.out_features, -1, 4) == 0).sum(-1).unique().tolist())

    pruner.after_step = record
    cfg = TrainConfig(epochs=1.0, max_steps=16, batch_size=4, learning_rate=1e-3)
    train(model, loader, cfg, pruner=pruner)
    assert seen == {0, 1, 2}  # 4 kept, then 3, then 2 per group of 4
    model = pruner.finalize(model)
    model.save_pretrained(tmp_path / "m")
    reloaded = load_classifier(str(tmp_path / "m"), 2)
    for layer in reloaded.bert.encoder.layer:
        for linear in (layer.attention.self.query, layer.intermediate.dense, layer.output.dense):
            zeros = (linear.weight.reshape(linear.out_features, -1, 4) == 0).sum(-1)
            assert bool((zeros == 2).all())


def test_n_m_pattern_needs_its_sparsity_and_a_method_that_has_it():
    with pytest.raises(CapbenchError, match="pattern=2:4: prunes exactly 0.5"):
        grid_method_specs(["magnitude"], {"pattern": "2:4"}, True, {}, [0.5, 0.9])
    with pytest.raises(CapbenchError, match="pattern=2:4: unknown option for random"):
        grid_method_specs(["random"], {"pattern": "2:4"}, True, {}, [0.5])
