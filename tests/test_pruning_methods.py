"""Every pruning method on the tiny model, following the training-loop contract of docs/ARCHITECTURE.md."""

import json

import pytest
import torch

from capbench.errors import CapbenchError
from capbench.pruning import METHODS, dense_counts, make_pruner, method_defaults, sparsity_report
from capbench.testing import random_batch, tiny_bert


def train_with(model, pruner, steps):
    """A minimal loop following the contract: attach, optimizer from params minus scores + param_groups,
    loss terms, step, after_step, finalize."""
    model.train()
    pruner.attach(model, steps)
    if getattr(pruner, "post_training", False):  # one-shot post-training methods: pruned once, then fixed
        pruner.calibrate([random_batch(model, seed=100 + i) for i in range(2)])
    ids = {id(p) for p in pruner.score_parameters()}
    params = [p for p in model.parameters() if id(p) not in ids]
    opt = torch.optim.AdamW([{"params": params, "lr": 1e-3, "weight_decay": 0.01}, *pruner.param_groups()])
    for step in range(steps):
        outputs = model(**random_batch(model, seed=step))
        terms = {"ce": outputs.loss, **pruner.loss_terms(step)}
        sum(terms.values()).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        pruner.after_step(step)
    return pruner.finalize(model)


# first_order needs more heads than the default tiny model (4 per layer, one kept per layer caps head sparsity
# at 75%, and the FFN alone cannot make up 90% of the weights).
OVERRIDES = {"first_order": {"num_attention_heads": 8}}


@pytest.mark.parametrize("sparsity", [0.5, 0.9])
# obert plans its own pruning steps inside training.train (tests/test_oneshot_methods.py)
@pytest.mark.parametrize("method", [m for m in METHODS if m != "obert"])
def test_smoke_every_method_hits_target(method, sparsity):
    model = tiny_bert(**OVERRIDES.get(method, {}))
    dense = dense_counts(model)
    pruner = make_pruner(method, sparsity)
    model = train_with(model, pruner, steps=12)
    report = sparsity_report(model, dense, sparsity)
    assert abs(report["linear"] - sparsity) <= 0.01, report
    assert abs(pruner.current_sparsity() - report["linear"]) < 1e-9
    assert 0 < report["flops_ratio"] < 1 and report["encoder"] < report["linear"]
    assert report["model"] < report["encoder"]
    config = pruner.config()
    json.dumps(config)
    assert config["method"] == method and config["sparsity"] == sparsity
    assert config["total_steps"] == 12
    if not getattr(pruner, "post_training", False):  # the cubic schedule's window
        assert config["warmup_steps"] == 1 and config["cooldown_steps"] == 2
    assert not config.get("forced_to_target_at_finalize")
    with torch.no_grad():
        logits = model(**random_batch(model)).logits
    assert torch.isfinite(logits).all()


def test_magnitude_oneshot_is_global_and_fixed():
    model = tiny_bert()
    pruner = make_pruner("magnitude", 0.7, {"oneshot": True})
    pruner.attach(model, 5)
    assert pruner.current_sparsity() == pytest.approx(0.7, abs=1e-4)
    masks = [m.mask.clone() for m in pruner.modules]
    per_layer = {round(float(1 - m.mask.mean()), 3) for m in pruner.modules}
    assert len(per_layer) > 1  # global threshold: sparsity differs between matrices
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for step in range(5):
        model(**random_batch(model, seed=step)).loss.backward()
        opt.step()
        opt.zero_grad()
        pruner.after_step(step)
    assert all(torch.equal(a, m.mask) for a, m in zip(masks, pruner.modules, strict=True))
    assert pruner.config()["scope"] == "global" and pruner.config()["schedule"] == "oneshot"


def test_scope_auto_resolution_with_all_defaults_passed():
    # The runner passes {**method_defaults(name), **overrides}: the oneshot rule must still apply.
    for name in ("magnitude", "random"):
        assert make_pruner(name, 0.5, method_defaults(name)).scope == "local"
        assert make_pruner(name, 0.5, {**method_defaults(name), "oneshot": True}).scope == "global"
    assert make_pruner("magnitude", 0.5, {"oneshot": True, "scope": "local"}).scope == "local"
    assert make_pruner("movement", 0.5, {"scope": "auto"}).scope == "local"


def test_gradual_magnitude_follows_schedule():
    model = tiny_bert()
    pruner = make_pruner("magnitude", 0.8, {"warmup": 2, "cooldown": 2})
    pruner.attach(model, 10)
    seen = []
    for step in range(10):
        pruner.after_step(step)
        seen.append(pruner.current_sparsity())
        assert seen[-1] == pytest.approx(pruner.scheduled_sparsity(step + 1), abs=1e-3)
    assert seen[0] == 0 and seen[-1] == pytest.approx(0.8, abs=1e-3)
    assert seen == sorted(seen)


@pytest.mark.parametrize("sparsity", [0.5, 0.9])
def test_soft_movement_calibration_hits_target(sparsity):
    model = tiny_bert()
    dense = dense_counts(model)
    pruner = make_pruner("soft_movement", sparsity, {"score_lr": 0.05})
    model = train_with(model, pruner, steps=40)
    report = sparsity_report(model, dense, sparsity)
    assert abs(report["linear"] - sparsity) <= 0.01
    cal = pruner.config()["calibration"]
    assert cal["mode"] == "threshold" and cal["tau_final"] == 0.1
    assert 0 < cal["tau_effective"] < 1 and 0 <= cal["sparsity_at_nominal_tau"] <= 1


def test_soft_movement_uncalibrated_reports_what_it_got():
    model = tiny_bert()
    dense = dense_counts(model)
    pruner = make_pruner("soft_movement", 0.5, {"calibrate": False})
    model = train_with(model, pruner, steps=10)
    cal = pruner.config()["calibration"]
    assert cal["mode"] == "none"
    assert sparsity_report(model, dense, 0.5)["linear"] == pytest.approx(cal["sparsity_at_nominal_tau"])


def test_param_groups_for_scores():
    pruner = make_pruner("movement", 0.5)
    pruner.attach(tiny_bert(), 10)
    (group,) = pruner.param_groups()
    assert group["lr"] == 1e-2 and group["weight_decay"] == 0.0
    assert len(group["params"]) == 12 and group["params"] == pruner.score_parameters()
    assert make_pruner("magnitude", 0.5).param_groups() == []


def test_factory_errors_and_defaults():
    with pytest.raises(CapbenchError, match="known methods: magnitude, movement"):
        make_pruner("lottery", 0.5)
    with pytest.raises(CapbenchError, match="known methods"):
        method_defaults("lottery")
    for bad in (1.0, -0.1, 1.5, "0.5"):
        with pytest.raises(CapbenchError, match="sparsity"):
            make_pruner("magnitude", bad)
    with pytest.raises(CapbenchError, match="unknown option"):
        make_pruner("magnitude", 0.5, {"score_lr": 0.1})
    with pytest.raises(CapbenchError, match="scope"):
        make_pruner("movement", 0.5, {"scope": "layer"})
    assert make_pruner("magnitude", 0.0) is not None
    defaults = method_defaults("movement")
    assert defaults["score_lr"] == 1e-2 and defaults["warmup"] == 0.1 and defaults["cooldown"] == 0.2
    defaults["score_lr"] = 5.0
    assert method_defaults("movement")["score_lr"] == 1e-2  # a copy
    for name in METHODS:
        json.dumps(method_defaults(name))
