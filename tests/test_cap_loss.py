import warnings

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from transformers import BertModel

from capbench.cap.banks import build_bank
from capbench.cap.config import CapConfig
from capbench.cap.loss import CapLoss, kd_loss
from capbench.cap.representation import model_inputs, represent, resolve_kind
from capbench.errors import CapbenchError
from capbench.testing import tiny_bert, tiny_bert_config

N = 16


def tiny_train_set(model, n=N, seq_len=8, seed=0, regression=False):
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        ids = torch.randint(5, model.config.vocab_size, (seq_len,), generator=g)
        ids[0] = 2
        mask = torch.ones(seq_len, dtype=torch.long)
        mask[seq_len - (i % 3) :] = 0
        label = float(i % 5) / 4 if regression else i % 2
        rows.append({"idx": i, "input_ids": ids, "attention_mask": mask, "labels": label})
    return rows


def collate(rows):
    return {k: torch.stack([torch.as_tensor(r[k]) for r in rows]) for k in rows[0]}


def loader_for(model, shuffle=False, batch_size=8, regression=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    data = tiny_train_set(model, regression=regression)
    return DataLoader(data, batch_size=batch_size, shuffle=shuffle, collate_fn=collate, generator=g)


def forward(model, batch):
    return model(**model_inputs(batch), labels=batch["labels"], output_hidden_states=True)


def first_batch(model, regression=False):
    return next(iter(loader_for(model, regression=regression)))


@pytest.fixture
def setup():
    model = tiny_bert(seed=0)
    teacher = tiny_bert(seed=1)
    loader = loader_for(model)
    banks = {"prc": build_bank(model, loader, "pooler"), "fic": build_bank(teacher, loader, "pooler")}
    return model, teacher, loader, banks


def make(setup, with_teacher=True, **options):
    model, teacher, loader, banks = setup
    # extra_examples >= N: every example is a candidate, so terms do not depend on sampling order.
    options.setdefault("extra_examples", 64)
    cfg = CapConfig.from_options(options)
    return CapLoss(
        model,
        cfg,
        teacher=teacher if with_teacher else None,
        loader=loader,
        prc_bank=banks["prc"],
        fic_bank=banks["fic"],
    )


def test_terms_are_weighted_and_kd_matches_formula(setup):
    model, teacher, _, _ = setup
    cap = make(setup)
    batch = first_batch(model)
    out = forward(model, batch)
    terms = cap(out, batch, 0)
    assert set(terms) == {"ce", "prc_unsup", "prc_sup", "fic_unsup", "fic_sup", "kd"}  # no snapshot yet
    assert torch.allclose(terms["ce"], 0.1 * out.loss)
    with torch.no_grad():
        t_logits = teacher(**model_inputs(batch)).logits
    t = 2.0
    manual = (
        F.kl_div(F.log_softmax(out.logits / t, -1), F.softmax(t_logits / t, -1), reduction="batchmean")
        * t
        * t
    )
    assert torch.allclose(terms["kd"], 0.9 * manual)
    assert all(torch.isfinite(v) for v in terms.values())
    assert kd_loss(t_logits, t_logits, 2.0).abs() < 1e-6


def test_module_and_loss_toggles_remove_exactly_their_terms(setup):
    model, *_ = setup
    batch = first_batch(model)
    out = forward(model, batch)
    full = make(setup)(out, batch, 0)
    cases = {
        (("prc",), True, True): {"prc_unsup", "prc_sup"},
        (("fic",), True, True): {"fic_unsup", "fic_sup"},
        (("prc", "fic"), False, True): {"prc_sup", "fic_sup"},
        (("prc", "fic"), True, False): {"prc_unsup", "fic_unsup"},
        ((), True, True): set(),
    }
    for (modules, unsup, sup), expected in cases.items():
        terms = make(setup, modules=",".join(modules), unsup=unsup, sup=sup)(out, batch, 0)
        assert set(terms) - {"ce", "kd"} == expected
        for name in expected:
            assert torch.allclose(terms[name], full[name], rtol=1e-5, atol=1e-6), name
    no_kd = make(setup, with_teacher=False)
    assert "kd" not in no_kd(out, batch, 0)
    # Weights scale their terms.
    heavier = make(setup, w_unsup=0.2, w_sup=5)(out, batch, 0)
    assert torch.allclose(heavier["prc_unsup"], 2 * full["prc_unsup"], rtol=1e-5)
    assert torch.allclose(heavier["fic_sup"], 0.5 * full["fic_sup"], rtol=1e-5)


def test_regression_task_has_no_supervised_term_and_uses_mse_kd():
    model = tiny_bert(num_labels=1, seed=0)
    teacher = tiny_bert(num_labels=1, seed=1)
    loader = loader_for(model, regression=True)
    cap = CapLoss(model, CapConfig(modules=("prc", "fic")), teacher=teacher, loader=loader)
    batch = next(iter(loader))
    out = forward(model, batch)
    terms = cap(out, batch, 0)
    assert set(terms) == {"ce", "prc_unsup", "fic_unsup", "kd"}
    with torch.no_grad():
        t_logits = teacher(**model_inputs(batch)).logits
    assert torch.allclose(terms["kd"], 0.9 * F.mse_loss(out.logits.view(-1), t_logits.view(-1)))


def test_gradients_reach_the_student_not_the_banks_or_teacher(setup):
    model, teacher, _, banks = setup
    cap = make(setup)
    before = {n: b.get(torch.arange(N)).clone() for n, b in banks.items()}
    batch = first_batch(model)
    model.train()
    terms = cap(forward(model, batch), batch, 0)
    assert "kd" in terms
    contrastive = sum(v for k, v in terms.items() if k not in ("ce", "kd"))
    contrastive.backward(retain_graph=True)
    assert model.bert.pooler.dense.weight.grad.abs().sum() > 0
    assert model.bert.embeddings.word_embeddings.weight.grad.abs().sum() > 0
    assert model.classifier.weight.grad is None  # contrastive terms bypass the head
    (terms["kd"] + terms["ce"]).backward()  # KD runs the teacher: none of it may reach the teacher
    assert model.classifier.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())
    for bank in banks.values():
        assert not bank._reps.requires_grad and bank._reps.grad is None
    torch.optim.SGD(model.parameters(), lr=1.0).step()
    for n, b in banks.items():
        assert torch.equal(b.get(torch.arange(N)), before[n])


def train_epoch(model, cap, loader, opt, step):
    model.train()
    for batch in loader:
        terms = cap(
            model(**model_inputs(batch), labels=batch["labels"], output_hidden_states=True), batch, step
        )
        total = sum(terms.values())
        assert torch.isfinite(total)
        total.backward()
        opt.step()
        opt.zero_grad()
        step += 1
    cap.on_epoch_end()
    return step, terms


def test_caploss_trains_a_few_steps_with_epoch_snapshots():
    model = tiny_bert(seed=0)
    teacher = tiny_bert(seed=1)
    bank_loader = loader_for(model)
    train_loader = loader_for(model, shuffle=True)
    cap = CapLoss(model, CapConfig(extra_examples=8), teacher=teacher, loader=bank_loader, seed=3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    step, terms = train_epoch(model, cap, train_loader, opt, 0)
    assert "snc_unsup" not in terms and cap.snapshots.taken == 0
    step, terms = train_epoch(model, cap, train_loader, opt, step)
    assert {"snc_unsup", "snc_sup"} <= set(terms)
    # The pending snapshot after the last epoch is never taken: no wasted pass.
    report = cap.cost_report()
    assert report["snapshots_taken"] == 1 and report["snapshots_kept"] == 1
    assert report["extra_forward_examples"] == {"prc": N, "fic": N, "snc": N}
    assert report["extra_forward_passes_total"] == 6
    row_bytes = 32 * 2
    assert report["bank_bytes"] == {
        "prc": N * (row_bytes + 8),
        "fic": N * (row_bytes + 8),
        "snc": N * (row_bytes + 8),
    }
    assert report["bank_bytes_peak"] == 3 * N * (row_bytes + 8)
    assert report["teacher_forward_examples"] == 2 * N and report["steps"] == 4
    assert report["representation"] == "pooler" and report["label"] == "prc+snc+fic/unsup+sup/pooler"


def test_snapshot_triggers_skip_untrained_models_and_stay_bounded(setup):
    model, *_ = setup
    loader = loader_for(model)
    cap = make(setup, modules="snc", snapshot_on="pruning_step", snapshot_gap="none")
    cap.on_pruning_step(0)  # nothing trained yet: would duplicate PrC
    assert cap.snapshots.taken == 0 and cap.snapshots_skipped == 1
    batch = next(iter(loader))
    cap(forward(model, batch), batch, 0)
    cap.on_epoch_end()  # ignored with snapshot_on=pruning_step
    cap.on_pruning_step(1)
    assert cap.snapshots.taken == 1

    cap = make(setup, modules="snc", snapshot_on="steps", snapshot_interval=1, max_snapshots=2)
    for step in range(5):
        terms = cap(forward(model, batch), batch, step)
    assert cap.snapshots.taken == 4 and len(cap.snapshots) == 2 and cap.snapshots.evicted == 2
    assert {"snc_unsup", "snc_sup"} <= set(terms)


def test_pruning_step_snapshots_wait_for_an_epoch_of_training(setup):
    model, *_ = setup
    batch = next(iter(loader_for(model)))  # 8 of the N = 16 train examples
    cap = make(setup, modules="snc", snapshot_on="pruning_step", snapshot_gap="epoch")
    taken = []
    for step in range(6):
        cap(forward(model, batch), batch, step)
        cap.on_pruning_step(step)  # a pruning event every half epoch
        taken.append(cap.snapshots.taken)
    assert taken == [0, 1, 1, 2, 2, 3]
    assert cap.snapshots_skipped == 3


def test_bank_on_disk_uses_memmaps_and_close_cleans_up():
    model = tiny_bert(seed=0)
    loader = loader_for(model)
    cfg = CapConfig(modules=("prc", "snc"), bank_on_disk=True, snapshot_on="steps", snapshot_interval=1)
    cap = CapLoss(model, cfg, loader=loader)
    directory = cap.bank_dir
    assert cap.banks["prc"].on_disk and (directory / "prc.npy").is_file()
    batch = next(iter(loader))
    for step in range(2):
        cap(forward(model, batch), batch, step)
    assert cap.snapshots.banks[0].on_disk
    cap.close()
    assert not directory.exists()


def test_missing_inputs_are_clear_errors(setup):
    model, _, loader, banks = setup
    with pytest.raises(CapbenchError, match="teacher"):
        CapLoss(model, CapConfig(modules=("fic",)), loader=loader)
    with pytest.raises(CapbenchError, match="loader"):
        CapLoss(model, CapConfig(modules=("snc",)))
    cap = CapLoss(model, CapConfig(modules=("prc",)), prc_bank=banks["prc"])
    batch = dict(first_batch(model))
    out = forward(model, batch)
    del batch["idx"]
    with pytest.raises(CapbenchError, match="idx"):
        cap(out, batch, 0)


def test_pooler_representation_is_the_bert_pooler_output_and_falls_back_without_one():
    model = tiny_bert(seed=0)
    batch = first_batch(model)
    with torch.no_grad():
        out = forward(model, batch)
        pooled = model.bert(**model_inputs(batch)).pooler_output
        assert torch.allclose(
            represent(model, out, batch["attention_mask"], "pooler"), F.normalize(pooled, dim=-1)
        )
    encoder = BertModel(tiny_bert_config(), add_pooling_layer=False).eval()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert resolve_kind(encoder, "pooler") == "cls"
    assert any("no pooler" in str(w.message) for w in caught)
    with torch.no_grad():
        enc_out = encoder(**model_inputs(batch), output_hidden_states=True)
    rep = represent(encoder, enc_out, batch["attention_mask"], "pooler")
    assert torch.allclose(rep, F.normalize(enc_out.last_hidden_state[:, 0], dim=-1))
