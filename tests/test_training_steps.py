"""Cheaper training steps: length-grouped batches, runs set in steps, sorted evaluation, cached teacher logits."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Dataset

from capbench.cli import main
from capbench.distill import DistillationLoss, KDConfig
from capbench.records import RECORDS_DIR
from capbench.teacher_logits import CACHE_FILE, TeacherLogits
from capbench.testing import random_batch, tiny_bert, tiny_tokenizer
from capbench.training import (
    LengthGroupedBatches,
    TrainConfig,
    eval_loader,
    make_loader,
    predict,
    row_lengths,
    train,
)
from tests.test_runner import run_args


def _lengths(n=1000, seed=0):
    return np.random.default_rng(seed).integers(3, 120, size=n)


def test_length_grouped_batches_cover_every_row_once_per_epoch_in_a_seeded_order():
    lengths = _lengths()
    sampler = LengthGroupedBatches(lengths, batch_size=32, seed=7)
    first, second = list(sampler), list(sampler)
    for epoch in (first, second):
        rows = [i for batch in epoch for i in batch]
        assert sorted(rows) == list(range(len(lengths)))
        assert len(epoch) == len(sampler) == 32  # ceil(1000 / 32)
    assert first != second  # a new order every epoch
    again = LengthGroupedBatches(lengths, batch_size=32, seed=7)
    assert list(again) == first  # reproducible from the seed
    assert list(LengthGroupedBatches(lengths, batch_size=32, seed=8)) != first


def test_length_grouped_batches_pad_far_less_than_a_plain_shuffle():
    lengths = _lengths()
    grouped = list(LengthGroupedBatches(lengths, batch_size=32, seed=0))
    plain = np.random.default_rng(0).permutation(len(lengths))
    shuffled = [plain[i : i + 32] for i in range(0, len(plain), 32)]

    def padded(batches):
        return sum(len(b) * lengths[b].max() for b in batches)

    assert padded(grouped) < 0.75 * padded(shuffled)


def test_train_config_fields_added_later_stay_out_of_the_spec_at_their_defaults():
    assert set(TrainConfig().to_dict()) == {
        "epochs",
        "batch_size",
        "learning_rate",
        "weight_decay",
        "warmup_ratio",
        "max_grad_norm",
        "eval_batch_size",
    }
    data = TrainConfig(max_steps=5, group_by_length=True).to_dict()
    assert data["max_steps"] == 5 and data["group_by_length"] is True
    assert TrainConfig(**data) == TrainConfig(max_steps=5, group_by_length=True)
    assert TrainConfig(max_steps=7).run_steps(3) == 7
    assert TrainConfig(epochs=2.0).run_steps(3) == 6


def _dataset(n=40, seed=0):
    """Tokenized rows of random length (ids of the tiny vocabulary), with labels and idx."""
    rng = np.random.default_rng(seed)
    ids = [[2, *rng.integers(5, 40, size=int(rng.integers(2, 20))).tolist(), 3] for _ in range(n)]
    return Dataset.from_dict(
        {
            "input_ids": ids,
            "attention_mask": [[1] * len(row) for row in ids],
            "token_type_ids": [[0] * len(row) for row in ids],
            "labels": rng.integers(0, 2, size=n).tolist(),
            "idx": list(range(n)),
        }
    )


def test_a_run_set_in_steps_takes_exactly_that_many_steps_over_several_epochs(tmp_path):
    model = tiny_bert()
    data = _dataset()
    loader = make_loader(data, tiny_tokenizer(tmp_path), 8, shuffle=True, seed=0, group_by_length=True)
    stats = train(model, loader, TrainConfig(max_steps=13, batch_size=8, learning_rate=1e-3))
    assert len(loader) == 5 and stats["steps"] == 13


def test_evaluation_sorted_by_length_gives_the_rows_in_their_order(tmp_path):
    model = tiny_bert().eval()
    data = _dataset(37)
    plain_logits, plain_labels = predict(model, make_loader(data, tiny_tokenizer(tmp_path), 8, shuffle=False))
    loader, order = eval_loader(data, tiny_tokenizer(tmp_path), 8)
    lengths = row_lengths(data)
    assert (np.diff(lengths[order]) >= 0).all()
    logits, labels = predict(model, loader)
    restore = np.argsort(order)
    np.testing.assert_array_equal(labels[restore], plain_labels)
    np.testing.assert_allclose(logits[restore], plain_logits, atol=1e-5)


def test_a_bank_of_length_sorted_batches_holds_each_row_where_the_in_order_bank_does(tmp_path):
    from capbench.cap.banks import build_bank

    model = tiny_bert()
    data = _dataset(37)
    tok = tiny_tokenizer(tmp_path)
    in_order = build_bank(model, make_loader(data, tok, 8, shuffle=False), "mean")
    loader, order = eval_loader(data, tok, 8)
    assert order.tolist() != list(range(37))  # the rows really are visited in another order
    sorted_bank = build_bank(model, loader, "mean")
    assert torch.equal(sorted_bank.labels, in_order.labels)
    torch.testing.assert_close(
        sorted_bank.get(torch.arange(37)), in_order.get(torch.arange(37)), atol=2e-3, rtol=0
    )


def test_cached_teacher_logits_are_bit_for_bit_the_forward_pass_and_follow_the_weights(tmp_path):
    teacher = tiny_bert(num_labels=3).eval()
    teacher.save_pretrained(tmp_path)
    batches = [random_batch(teacher, seed=s) for s in range(3)]
    cold = TeacherLogits(teacher, tmp_path)
    first = [cold(b) for b in batches]
    assert cold.report() == {"computed_batches": 3, "reused_batches": 0}
    with torch.no_grad():
        direct = teacher(**{k: v for k, v in batches[0].items() if k != "labels"}).logits
    assert torch.equal(first[0], direct)
    cold.save()
    assert (tmp_path / CACHE_FILE).is_file()
    warm = TeacherLogits(teacher, tmp_path)
    again = [warm(b) for b in batches]
    assert warm.report() == {"computed_batches": 0, "reused_batches": 3}
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    # The same batch padded one token wider is another input: computed, not looked up.
    wider = {k: torch.nn.functional.pad(v, (0, 1)) if v.ndim == 2 else v for k, v in batches[0].items()}
    warm(wider)
    assert warm.computed == 1
    # Weights retrained in place: the cache names other weights and is ignored.
    other = tiny_bert(num_labels=3, seed=1).eval()
    other.save_pretrained(tmp_path)
    fresh = TeacherLogits(other, tmp_path)
    assert not torch.equal(fresh(batches[0]), first[0]) and fresh.computed == 1


def test_teacher_logits_take_a_known_weights_digest_instead_of_hashing_the_file_again(tmp_path, monkeypatch):
    import capbench.teacher_logits as teacher_logits

    teacher = tiny_bert(num_labels=3).eval()
    teacher.save_pretrained(tmp_path)
    digest = teacher_logits.weights_sha256(tmp_path)
    assert TeacherLogits(teacher, tmp_path).weights == digest
    calls = []
    monkeypatch.setattr(teacher_logits, "weights_sha256", lambda d: calls.append(d) or "hashed")
    given = TeacherLogits(teacher, tmp_path, digest)
    assert given.weights == digest and calls == []
    given(random_batch(teacher, seed=0))
    given.save()
    assert TeacherLogits(teacher, tmp_path).weights == "hashed" and calls  # no digest given: hashed
    assert TeacherLogits(teacher, None, digest).weights is None  # no directory: no cache to key


def test_distillation_reads_the_teacher_through_the_cache():
    teacher = tiny_bert(num_labels=2).eval()
    student = tiny_bert(num_labels=2, seed=3)
    loss = DistillationLoss(teacher, KDConfig())
    batch = random_batch(student)
    outputs = student(**{k: v for k, v in batch.items() if k != "labels"}, labels=batch["labels"])
    first = loss(outputs, batch, 0)
    second = loss(outputs, batch, 1)
    assert loss.teacher_logits.report() == {"computed_batches": 1, "reused_batches": 1}
    assert torch.equal(first["kd"], second["kd"])


def _record(out: Path) -> dict:
    (path,) = (out / RECORDS_DIR).glob("*magnitude*.json")
    return json.loads(path.read_text())


def _with_dropout(model_dir: Path) -> Path:
    """The tiny model with dropout on, as every real checkpoint has: training then draws from the global
    RNG, so a cache that consumed a draw on a miss would change the result (the tiny default has none)."""
    path = model_dir / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "hidden_dropout_prob": 0.1}))
    return model_dir


def test_a_kd_cell_is_identical_with_a_cold_and_a_warm_teacher_logit_cache(
    tiny_model_dir, tiny_glue, tmp_path
):
    model, cache = _with_dropout(tiny_model_dir), tmp_path / "cache"
    extra = ("--methods", "magnitude", "--sparsity", "0.5", "--steps", "6")
    assert main(run_args(model, tiny_glue, tmp_path / "a", cache, *extra)) == 0
    assert main(run_args(model, tiny_glue, tmp_path / "b", cache, *extra)) == 0
    cold, warm = _record(tmp_path / "a"), _record(tmp_path / "b")
    assert cold["train"]["teacher_logits"] == {"computed_batches": 6, "reused_batches": 0}
    assert warm["train"]["teacher_logits"] == {"computed_batches": 0, "reused_batches": 6}
    assert cold["train"]["steps"] == 6 and cold["spec"]["train"]["max_steps"] == 6
    assert cold["metrics"] == warm["metrics"]
    assert cold["train"]["final_loss_terms"] == warm["train"]["final_loss_terms"]
    assert cold["predictions"]["sha256"] == warm["predictions"]["sha256"]


def test_steps_and_epochs_together_are_refused_before_any_work(tiny_model_dir, tiny_glue, tmp_path, capsys):
    args = run_args(
        tiny_model_dir, tiny_glue, tmp_path / "a", tmp_path / "c", "--steps", "5", "--epochs", "1"
    )
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "--steps 5 and --epochs 1: give one of them" in err
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize("value", ["0", "-3"])
def test_steps_below_one_are_refused(tiny_model_dir, tiny_glue, tmp_path, capsys, value):
    args = run_args(tiny_model_dir, tiny_glue, tmp_path / "a", tmp_path / "c", "--steps", value)
    assert main(args) == 2
    assert "--steps" in capsys.readouterr().err


@pytest.mark.parametrize("case", ["continuous", "ties", "pruned", "pruned+ties"])
def test_kth_smallest_equals_kthvalue(case):
    from capbench.pruning.masks import kth_smallest

    g = torch.Generator().manual_seed(hash(case) % 1000)
    for _ in range(25):
        n = int(torch.randint(70_000, 300_000, (1,), generator=g))
        x = torch.randn(n, generator=g)
        if "ties" in case:
            x = (x * 3).round()
        if "pruned" in case:
            x[torch.rand(n, generator=g) < float(torch.rand(1, generator=g))] = -float("inf")
        for k in (1, int(torch.randint(1, n + 1, (1,), generator=g)), n):
            assert torch.equal(kth_smallest(x, k), x.kthvalue(k).values), (case, n, k)


def test_a_weight_made_non_finite_is_caught_within_the_weight_check_interval(tmp_path):
    from capbench.training import WEIGHT_CHECK_EVERY, TrainingDiverged

    model = tiny_bert()
    data = _dataset(16)
    loader = make_loader(data, tiny_tokenizer(tmp_path), 8, shuffle=True, seed=0)

    class PoisonAtStep3:
        """A 'pruner' whose after_step writes inf into a weight the batches never use (the last position
        embedding): the loss and gradients stay finite, only the weight check can see it."""

        def attach(self, model, steps):
            self.model = model

        def score_parameters(self):
            return []

        def param_groups(self):
            return []

        def loss_terms(self, step):
            return {}

        def after_step(self, step):
            if step == 2:
                with torch.no_grad():
                    self.model.bert.embeddings.position_embeddings.weight[-1, 0] = float("inf")

    with pytest.raises(TrainingDiverged) as caught:
        train(
            model,
            loader,
            TrainConfig(max_steps=2 * WEIGHT_CHECK_EVERY, learning_rate=1e-3),
            pruner=PoisonAtStep3(),
        )
    assert caught.value.step == WEIGHT_CHECK_EVERY and "is not finite" in str(caught.value)


def test_a_cap_cell_is_identical_with_cold_and_warm_caches(tiny_model_dir, tiny_glue, tmp_path):
    """The first CAP cell of a (task, seed) builds the PrC and FiC banks and computes the teacher's logits;
    later cells load them. Neither may change the cell's result: a grid's cells run in any order."""
    model, cache = _with_dropout(tiny_model_dir), tmp_path / "cache"
    teacher = ("--methods", "dense", "--steps", "6")
    assert main(run_args(model, tiny_glue, tmp_path / "t", cache, *teacher)) == 0  # the teacher exists
    extra = ("--methods", "cap_magnitude", "--sparsity", "0.5", "--steps", "6")
    assert main(run_args(model, tiny_glue, tmp_path / "a", cache, *extra)) == 0
    assert main(run_args(model, tiny_glue, tmp_path / "b", cache, *extra)) == 0
    cold, warm = _record(tmp_path / "a"), _record(tmp_path / "b")
    assert cold["cap"]["extra_forward_examples"]["prc"] > 0 == warm["cap"]["extra_forward_examples"]["prc"]
    assert cold["train"]["teacher_logits"]["computed_batches"] == 6
    assert warm["train"]["teacher_logits"]["computed_batches"] == 0
    assert cold["train"]["final_loss_terms"] == warm["train"]["final_loss_terms"]
    assert cold["predictions"]["sha256"] == warm["predictions"]["sha256"]


@pytest.mark.parametrize(
    "method",
    [
        ("magnitude",),
        ("cap_magnitude",),
        ("wanda",),  # one-shot on the fine-tuned teacher, then fine-tuned
        ("magnitude", "--method-option", "oneshot=true", "--method-option", "start=finetuned"),
    ],
    ids=["gradual", "cap", "wanda", "oneshot-magnitude"],
)
def test_a_cell_does_not_depend_on_what_its_process_ran_before(method, tiny_model_dir, tiny_glue, tmp_path):
    """A grid worker runs many cells in one process: a cell's training must draw from an RNG seeded by the
    cell's seed, whatever state the cells before it left the global generator in."""
    model, cache = _with_dropout(tiny_model_dir), tmp_path / "cache"
    extra = ("--methods", *method, "--sparsity", "0.5", "--steps", "6")
    results = []
    for history in (1, 2):
        torch.manual_seed(history)  # what the cells before it left behind
        torch.rand(history)
        out = tmp_path / f"run{history}"
        assert main(run_args(model, tiny_glue, out, cache, *extra)) == 0
        (path,) = (out / RECORDS_DIR).glob(f"*{method[0]}-0.5-*.json")
        results.append(json.loads(path.read_text())["predictions"]["sha256"])
    assert results[0] == results[1]
