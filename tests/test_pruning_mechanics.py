"""Pruning mechanics: schedule, thresholds, exact zeros, straight-through gradient, sparsity accounting."""

import json

import pytest
import torch
from torch import nn

from capbench.errors import CapbenchError
from capbench.pruning import cubic_sparsity, dense_counts, make_pruner, prunable_linears, sparsity_report
from capbench.pruning.compact import compact
from capbench.pruning.masks import MaskedLinear, global_masks, keep_top, local_masks
from capbench.pruning.schedule import resolve_steps
from capbench.testing import random_batch, tiny_bert


# --------------------------------------------------------------------------------------------- schedule
def test_schedule_endpoints_and_cubic_shape():
    total, target = 100, 0.9
    kw = dict(warmup=10, cooldown=20)
    assert cubic_sparsity(0, total, target, **kw) == 0.0
    assert cubic_sparsity(10, total, target, **kw) == 0.0  # still warmup
    assert cubic_sparsity(80, total, target, **kw) == pytest.approx(target)  # end of the ramp
    assert cubic_sparsity(81, total, target, **kw) == target
    assert cubic_sparsity(total, total, target, **kw) == target
    # Zhu & Gupta: s = target + (initial - target) * (1 - t)^3 with t the fraction of the ramp.
    assert cubic_sparsity(45, total, target, **kw) == pytest.approx(target * (1 - (1 - 0.5) ** 3))
    values = [cubic_sparsity(s, total, target, **kw) for s in range(total + 1)]
    assert all(b >= a for a, b in zip(values, values[1:], strict=False))  # monotone
    ramp = [values[s + 1] - values[s] for s in range(11, 79)]
    assert all(b <= a + 1e-12 for a, b in zip(ramp, ramp[1:], strict=False))  # concave: prunes fast first


def test_schedule_fractions_and_initial():
    assert resolve_steps(0.1, 1000) == 100
    assert resolve_steps(30, 1000) == 30
    frac = [cubic_sparsity(s, 200, 0.5, warmup=0.1, cooldown=0.2) for s in range(201)]
    steps = [cubic_sparsity(s, 200, 0.5, warmup=20, cooldown=40) for s in range(201)]
    assert frac == steps
    assert cubic_sparsity(0, 10, 0.8, initial=0.3) == 0.3
    with pytest.raises(CapbenchError):
        cubic_sparsity(5, 10, 0.5, warmup=0.6, cooldown=0.6)
    with pytest.raises(CapbenchError):
        resolve_steps(1.5, 10)


# ------------------------------------------------------------------------------------------- thresholds
def test_local_vs_global_thresholds_on_hand_made_tensors():
    a = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    b = torch.tensor([[10.0, 20.0], [30.0, 40.0]])
    loc = local_masks([a, b], 0.5)  # each matrix loses its own 2 smallest
    assert loc[0].tolist() == [[False, False], [True, True]]
    assert loc[1].tolist() == [[False, False], [True, True]]
    glo = global_masks([a, b], 0.5)  # the 4 smallest overall are all in `a`
    assert glo[0].tolist() == [[False, False], [False, False]]
    assert glo[1].tolist() == [[True, True], [True, True]]
    glo = global_masks([a, b], 0.25)
    assert int(glo[0].sum()) == 2 and bool(glo[1].all())


def test_keep_top_exact_count_with_ties():
    s = torch.tensor([0.0, 0.0, 0.0, 1.0, 0.0, 2.0])
    keep = keep_top(s, 3)
    assert int(keep.sum()) == 3 and bool(keep[3]) and bool(keep[5])
    assert int(keep_top(s, 0).sum()) == 0 and bool(keep_top(s, 6).all())


# --------------------------------------------------------------------------------- zeros and gradients
def _adamw(model, pruner):
    ids = {id(p) for p in pruner.score_parameters()}
    params = [p for p in model.parameters() if id(p) not in ids]
    return torch.optim.AdamW([{"params": params, "lr": 1e-2, "weight_decay": 0.1}, *pruner.param_groups()])


@pytest.mark.parametrize(
    "method,options",
    [
        ("magnitude", {"oneshot": True}),
        ("magnitude", {}),
        ("random", {}),
        ("movement", {}),
        ("first_order", {}),
    ],
)
def test_masked_weights_stay_exactly_zero_through_adamw(method, options):
    model = tiny_bert()
    model.train()
    steps = 8
    pruner = make_pruner(method, 0.5, {"warmup": 1, "cooldown": 2, **options})
    pruner.attach(model, steps)
    opt = _adamw(model, pruner)
    modules = [m for _, m in prunable_linears(model)]
    for step in range(steps):
        out = model(**random_batch(model, seed=step))
        sum({"ce": out.loss, **pruner.loss_terms(step)}.values()).backward()
        opt.step()
        opt.zero_grad()
        pruner.after_step(step)
        for m in modules:
            assert isinstance(m, MaskedLinear)
            effective = m.weight.detach() * m.mask
            assert bool((effective[m.mask == 0] == 0).all())
            if method != "movement":  # hard methods keep them zero in storage too
                assert bool((m.weight.detach()[m.mask == 0] == 0).all())
    masks = [m.mask.clone() for m in modules]
    assert pruner.current_sparsity() == pytest.approx(0.5, abs=0.01)
    model = pruner.finalize(model)
    if method != "first_order":  # (first_order compacts: shapes change)
        for (_, lin), mask in zip(prunable_linears(model), masks, strict=True):
            assert type(lin) is nn.Linear
            assert bool((lin.weight.detach()[mask == 0] == 0).all())
    assert not any("scores" in k for k in model.state_dict())


@pytest.mark.parametrize("method", ["movement", "soft_movement"])
def test_straight_through_gradient_reaches_scores(method):
    model = tiny_bert()
    pruner = make_pruner(method, 0.5, {"warmup": 0, "cooldown": 0})
    pruner.attach(model, 10)
    with torch.no_grad():
        for s in pruner.score_parameters():
            s.normal_()  # as if the scores had already moved
    pruner.after_step(5)  # masks at the scheduled sparsity
    out = model(**random_batch(model))
    sum({"ce": out.loss, **pruner.loss_terms(5)}.values()).backward()
    scores = pruner.score_parameters()
    assert scores and all(s.grad is not None for s in scores)
    m = pruner.modules[0]
    assert 0 < int(m.mask.sum()) < m.mask.numel()
    if method == "movement":  # dL/dS = dL/dW' * W, and dL/dW = dL/dW' * M
        kept = m.mask == 1
        torch.testing.assert_close(m.scores.grad[kept], (m.weight.grad * m.weight.detach())[kept])
        assert bool((m.weight.grad[~kept] == 0).all())
    assert int((m.scores.grad[m.mask == 0] != 0).sum()) > 0  # pruned weights still learn their scores


# ------------------------------------------------------------------------------------------- accounting
def test_sparsity_accounting_known_counts():
    model = tiny_bert()  # hidden 32, 2 layers, 4 heads of 8, FFN 64
    h, ffn, layers = 32, 64, 2
    linear = layers * (4 * h * h + 2 * h * ffn)
    enc = layers * (4 * (h * h + h) + (h * ffn + ffn) + (ffn * h + h) + 2 * 2 * h)
    counts = dense_counts(model)
    assert counts["linear_weights"] == linear == 16384
    assert counts["encoder_params"] == enc
    model_total = counts["model_params"]
    assert model_total == sum(p.numel() for p in model.parameters())

    q = model.bert.encoder.layer[0].attention.self.query
    with torch.no_grad():
        q.weight[:16].zero_()  # 512 weights
    r = sparsity_report(model, counts, 0.5, seq_len=10)
    assert r["target"] == 0.5
    assert r["linear"] == pytest.approx(512 / linear)
    assert r["encoder"] == pytest.approx(512 / enc)
    assert r["model"] == pytest.approx(512 / model_total)
    dense_macs = layers * (4 * h * h + 2 * h * ffn + 2 * 10 * h)
    assert r["counts"]["macs_per_token_dense"] == dense_macs
    assert r["flops_ratio"] == pytest.approx((dense_macs - 512) / dense_macs)
    assert r["heads_per_layer"] == [4, 4] and r["ffn_per_layer"] == [64, 64]
    json.dumps(r)

    # Compact: drop one head of layer 0 and 16 FFN neurons of layer 1; removed weights count as pruned.
    heads = [torch.tensor([True, False, True, True]), torch.ones(4, dtype=torch.bool)]
    neurons = [torch.ones(64, dtype=torch.bool), torch.arange(64) >= 16]
    compact(model, heads, neurons)
    r = sparsity_report(model, counts, 0.5, seq_len=10)
    removed_linear = 4 * 8 * h + 2 * 16 * h
    removed_params = removed_linear + 3 * 8 + 16
    zeroed = 8 * h  # of the 16 zeroed query rows, rows 8..15 belonged to the removed head
    assert r["linear"] == pytest.approx((removed_linear + zeroed) / linear)
    assert r["encoder"] == pytest.approx((removed_params + zeroed) / enc)
    assert r["heads_per_layer"] == [3, 4] and r["ffn_per_layer"] == [64, 48]
    kept_macs = dense_macs - removed_linear - zeroed - 2 * 10 * 8
    assert r["flops_ratio"] == pytest.approx(kept_macs / dense_macs)
    # The dense reference is recovered from the compacted model's config alone.
    assert dense_counts(model)["linear_weights"] == linear
    assert sparsity_report(model, None, 0.5, seq_len=10)["linear"] == pytest.approx(r["linear"])


def test_prunable_linears_and_clear_error():
    names = [n for n, _ in prunable_linears(tiny_bert())]
    assert len(names) == 12 and names[0] == "bert.encoder.layer.0.attention.self.query"
    assert names[-1] == "bert.encoder.layer.1.output.dense"
    with pytest.raises(CapbenchError, match="BERT-style"):
        prunable_linears(nn.Sequential(nn.Linear(2, 2)))
