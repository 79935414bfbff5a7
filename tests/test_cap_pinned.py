"""Tests that pin CapLoss end to end against values computed independently of capbench's code.

* a 4-example case worked out by hand (candidate assembly, self mask, positives, tau, normalisation, the
  batch's rows kept out of the extras);
* a plain restatement of the authors' ``calculate_contrastive_loss`` (alibaba/AliceMind,
  ``ContrastivePruning/UnstructuredPruning/emmental/modeling_bert_masked.py``), written here line by line
  from the released code, for K = 1 and K = 2 snapshot rows per example and extras divided by K;
* the anchor's dropout (the classifier's, on the pooled output, in train mode only; never on bank rows);
* the loss-term record of the training loop (mean |term| over the last 10% of steps).
"""

from __future__ import annotations

import math
import random

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

import capbench.cap.loss as cap_loss_module
from capbench.cap.banks import MemoryBank, build_bank
from capbench.cap.config import CapConfig
from capbench.cap.loss import CapContext, CapLoss
from capbench.cap.representation import model_inputs, represent
from capbench.errors import CapbenchError
from capbench.testing import tiny_bert
from capbench.training import TrainConfig, train

# ---------------------------------------------------------------------------------------------- helpers


def bank_of(rows: torch.Tensor, labels: torch.Tensor) -> MemoryBank:
    bank = MemoryBank(rows.shape[0], rows.shape[1], dtype=torch.float32)
    bank.update(torch.arange(rows.shape[0]), rows, labels)
    return bank


class FixedOutputs:
    """Stands for a model forward whose anchors are given (``represent`` is replaced in the test)."""

    def __init__(self, loss: float = 0.0):
        self.loss = torch.tensor(loss)
        self.logits = torch.zeros(2, 2)


def hand_cap(monkeypatch, z, bank, labels_bank, **options):
    """A PrC-only CapLoss whose anchors are ``z`` and whose PrC bank is ``bank``."""
    monkeypatch.setattr(cap_loss_module, "represent", lambda *args, **kwargs: z)
    model = tiny_bert(seed=0)
    cfg = CapConfig(modules=("prc",), **options)
    return CapLoss(model, cfg, CapContext(prc_bank=bank_of(bank, labels_bank), num_labels=2))


def released_terms(z, idx, labels, bank, labels_bank, extra_idx, tau):
    """The authors' calculate_contrastive_loss, restated from the released code (unweighted unsup, sup).

    ``bank`` is [N, K, H] (K = rep_num), ``extra_idx`` the rows random.sample drew. Candidates are laid out
    as there: per batch example [its detached current row, its K bank rows], then K rows per extra example.
    """
    bsz, rep_num, hid = bank[idx].shape
    reps = torch.cat([z.detach().unsqueeze(1), bank[idx]], dim=1).reshape(bsz * (rep_num + 1), hid)
    reps = torch.cat([reps, bank[extra_idx].reshape(-1, hid)], dim=0)
    score = torch.mm(z, reps.t())
    mask = torch.unbind(torch.eye(bsz), dim=1)
    mask = torch.cat([torch.cat((m.unsqueeze(1), torch.zeros(bsz, rep_num)), dim=1) for m in mask], dim=1)
    mask = torch.cat((mask, torch.zeros(bsz, len(extra_idx) * rep_num)), dim=1)
    score = (score / tau).masked_fill(mask == 1, -1e6).log_softmax(dim=-1)
    out = []
    for keys, extra_keys in ((idx, extra_idx), (labels, labels_bank[extra_idx])):
        all_keys = torch.cat(
            (
                keys.unsqueeze(1).repeat(1, rep_num + 1).view(-1),
                extra_keys.unsqueeze(1).repeat(1, rep_num).view(-1),
            )
        )
        positive = keys.unsqueeze(1) == all_keys.unsqueeze(0)
        masked = score.masked_fill((~positive) | (mask == 1), 0)
        positive_num = positive.sum(dim=1, keepdim=True) - 1
        out.append(-torch.sum(masked / positive_num) / torch.sum(masked != 0))
    return out


# ---------------------------------------------------------------------------------------------- by hand


HAND_BANK = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])  # rows 0..3
HAND_LABELS = torch.tensor([0, 1, 0, 1])


def test_four_examples_by_hand(monkeypatch):
    """Batch rows 0 and 1 (anchors (1,0) and (0,1)), bank rows e0, e1, -e0, -e1, labels 0 1 0 1, tau 0.5.

    Candidates: the 2 detached anchors, the 2 batch rows of the bank, and the 2 rows outside the batch as
    extras (4 asked for, clamped: never the batch's own rows again). Anchor 0's scores / tau over
    [self (masked), z1, b0, b1, b2, b3] are [-, 0, 2, 0, -2, 0], anchor 1's the mirror image, so both have
    the softmax denominator S = 3 + e^2 + e^-2.
    unsup: one positive each (its bank row, score 2): paper_code = -(2 (2 - log S)) / 2 = log S - 2.
    sup: positives b0, b2 for anchor 0 (b1, b3 for anchor 1): each anchor's mean log p is -log S;
    paper_code divides the sum over anchors again by the 4 positives: 2 log S / 4; supcon: log S.
    """
    z = HAND_BANK[:2].clone().requires_grad_(True)
    batch = {"idx": torch.tensor([0, 1]), "labels": torch.tensor([0, 1])}
    log_s = math.log(3 + math.exp(2) + math.exp(-2))
    for normalization, sup_value in (("paper_code", log_s / 2), ("supcon", log_s)):
        cap = hand_cap(
            monkeypatch,
            z,
            HAND_BANK,
            HAND_LABELS,
            temperature=0.5,
            extra_examples=4,
            w_ce=0.5,
            w_unsup=1.0,
            w_sup=1.0,
            normalization=normalization,
        )
        terms = cap(FixedOutputs(loss=0.8), batch, 0)
        assert set(terms) == {"ce", "prc_unsup", "prc_sup"}
        assert terms["ce"].item() == pytest.approx(0.4)
        assert terms["prc_unsup"].item() == pytest.approx(log_s - 2, abs=1e-6)
        assert terms["prc_sup"].item() == pytest.approx(sup_value, abs=1e-6)
    # The weights scale their terms.
    cap = hand_cap(
        monkeypatch, z, HAND_BANK, HAND_LABELS, temperature=0.5, extra_examples=4, w_unsup=0.1, w_sup=10
    )
    terms = cap(FixedOutputs(), batch, 0)
    assert terms["prc_unsup"].item() == pytest.approx(0.1 * (log_s - 2), abs=1e-6)
    assert terms["prc_sup"].item() == pytest.approx(10 * log_s / 2, abs=1e-5)


def test_four_examples_by_hand_gradient_reaches_the_anchor_only(monkeypatch):
    """d(unsup)/dz_i = -(1/(2 tau)) (b_i - sum_j p_ij c_j) with the candidates c held constant."""
    z = HAND_BANK[:2].clone().requires_grad_(True)
    batch = {"idx": torch.tensor([0, 1]), "labels": torch.tensor([0, 1])}
    cap = hand_cap(
        monkeypatch, z, HAND_BANK, HAND_LABELS, temperature=0.5, extra_examples=4, w_unsup=1.0, sup=False
    )
    cap(FixedOutputs(), batch, 0)["prc_unsup"].backward()
    cand = torch.cat([HAND_BANK[:2], HAND_BANK])
    tau = 0.5
    expected = torch.zeros(2, 2)
    for i in range(2):
        scores = cand @ HAND_BANK[i] / tau
        scores[i] = -math.inf
        p = scores.softmax(0)
        expected[i] = -(HAND_BANK[i] - p @ cand) / (2 * tau)
    assert torch.allclose(z.grad, expected, atol=1e-6)


def test_extras_never_repeat_the_batch_rows_on_a_small_split():
    """4,096 extras clamped to a 40-row split: every row outside the batch once, none of the batch's."""
    bank = bank_of(F.normalize(torch.randn(40, 4), dim=-1), torch.arange(40) % 2)
    batch_rows = torch.tensor([3, 17, 5])
    drawn = bank.sample(4096, torch.Generator().manual_seed(0), exclude=batch_rows)
    assert sorted(drawn.tolist()) == sorted(set(range(40)) - {3, 17, 5})
    drawn = bank.sample(10, torch.Generator().manual_seed(1), exclude=batch_rows)
    assert len(set(drawn.tolist())) == 10 and not set(drawn.tolist()) & {3, 17, 5}


# ------------------------------------------------------------------------------- the authors' formula


N, B, H = 48, 6, 8


def random_banks(k: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    rows = F.normalize(torch.randn(N, k, H, generator=g), dim=-1)
    labels = torch.randint(0, 3, (N,), generator=g)
    return rows, labels


@pytest.fixture
def spy_extras(monkeypatch):
    """Record the extra rows CapLoss draws (MemoryBank.sample still does the drawing)."""
    drawn = []
    original = MemoryBank.sample

    def sample(self, n, generator=None, exclude=None):
        out = original(self, n, generator, exclude)
        drawn.append(out.clone())
        return out

    monkeypatch.setattr(MemoryBank, "sample", sample)
    return drawn


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("tau", [0.1, 0.7])
def test_caploss_equals_the_released_formula(monkeypatch, spy_extras, k, tau):
    """SnC with K snapshot banks (K rows per example) and 12 extras: extras // K examples, K rows each."""
    rows, labels = random_banks(k, seed=k)
    g = torch.Generator().manual_seed(10 + k)
    z = F.normalize(torch.randn(B, H, generator=g), dim=-1).requires_grad_(True)
    idx = torch.randperm(N, generator=g)[:B]
    batch_labels = labels[idx]
    monkeypatch.setattr(cap_loss_module, "represent", lambda *args, **kwargs: z)
    model = tiny_bert(seed=0, num_labels=3)
    cfg = CapConfig(
        modules=("snc",),
        temperature=tau,
        extra_examples=12,
        w_unsup=1.0,
        w_sup=1.0,
        snapshot_on="steps",
        snapshot_interval=1000,
    )
    cap = CapLoss(model, cfg, CapContext(loader=[], num_labels=3))
    for j in range(k):  # K snapshot banks, oldest first
        cap.snapshots.banks.append(bank_of(rows[:, j], labels))
        cap.snapshots.steps.append(j)
    terms = cap(FixedOutputs(), {"idx": idx, "labels": batch_labels}, 1)
    (extra_idx,) = spy_extras
    assert len(extra_idx) == 12 // k  # extra = extra_examples // rep_num
    assert not set(extra_idx.tolist()) & set(idx.tolist())
    unsup, sup = released_terms(z, idx, batch_labels, rows, labels, extra_idx, tau)
    assert terms["snc_unsup"].item() == pytest.approx(unsup.item(), rel=1e-5)
    assert terms["snc_sup"].item() == pytest.approx(sup.item(), rel=1e-5)
    # Gradients agree, with the candidates held constant (the current-batch rows are detached).
    (grad,) = torch.autograd.grad(terms["snc_unsup"] + terms["snc_sup"], z)
    (expected,) = torch.autograd.grad(unsup + sup, z)
    assert torch.allclose(grad, expected, atol=1e-5)


def test_released_formula_restatement_is_itself_right():
    """The restatement against the 4-example hand values (K = 1, extras = rows 2 and 3)."""
    z = HAND_BANK[:2]
    unsup, sup = released_terms(
        z,
        torch.tensor([0, 1]),
        torch.tensor([0, 1]),
        HAND_BANK.unsqueeze(1),
        HAND_LABELS,
        torch.tensor([2, 3]),
        0.5,
    )
    log_s = math.log(3 + math.exp(2) + math.exp(-2))
    assert unsup.item() == pytest.approx(log_s - 2, abs=1e-6)
    assert sup.item() == pytest.approx(log_s / 2, abs=1e-6)


# ---------------------------------------------------------------------------------------------- the model


def rows_of(model, n=16, seq_len=8):
    g = torch.Generator().manual_seed(5)
    out = []
    for i in range(n):
        ids = torch.randint(5, model.config.vocab_size, (seq_len,), generator=g)
        ids[0] = 2
        out.append(
            {
                "idx": i,
                "input_ids": ids,
                "attention_mask": torch.ones(seq_len, dtype=torch.long),
                "labels": i % 2,
            }
        )
    return out


def collate(rows):
    return {k: torch.stack([torch.as_tensor(r[k]) for r in rows]) for k in rows[0]}


def loader_of(model, batch_size=8, shuffle=False):
    return DataLoader(
        rows_of(model),
        batch_size=batch_size,
        shuffle=shuffle,
        collate_fn=collate,
        generator=torch.Generator().manual_seed(0),
    )


def pooled(model, hidden):
    return model.bert.pooler(hidden)  # tanh(dense(h[CLS])), what the classifier reads


@pytest.mark.parametrize("anchor_dropout", [True, False])
def test_model_anchor_dropout_and_released_formula(spy_extras, anchor_dropout):
    """The anchor is normalize(dropout_p(pooler output)) in train mode with p the classifier's dropout (the
    authors' ``self.dropout(pooled_output)`` before the contrastive terms); bank rows carry no dropout."""
    model = tiny_bert(seed=0, classifier_dropout=0.5)
    loader = loader_of(model)
    prc = build_bank(model, loader, "pooler", dtype=torch.float32)
    cfg = CapConfig(modules=("prc",), extra_examples=4, w_unsup=1.0, w_sup=1.0, anchor_dropout=anchor_dropout)
    cap = CapLoss(model, cfg, CapContext(prc_bank=prc, seed=3))
    model.train()
    batch = next(iter(loader))
    out = model(**model_inputs(batch), labels=batch["labels"], output_hidden_states=True)
    torch.manual_seed(123)
    terms = cap(out, batch, 0)
    torch.manual_seed(123)
    rep = pooled(model, out.hidden_states[-1])
    z = F.normalize(F.dropout(rep, 0.5, training=True) if anchor_dropout else rep, dim=-1)
    (extra_idx,) = spy_extras
    bank = prc.get(torch.arange(16)).unsqueeze(1)
    unsup, sup = released_terms(z, batch["idx"], batch["labels"], bank, prc.labels, extra_idx, 0.1)
    assert terms["prc_unsup"].item() == pytest.approx(unsup.item(), rel=1e-5)
    assert terms["prc_sup"].item() == pytest.approx(sup.item(), rel=1e-5)
    # Gradient through the student's pooler equals the formula's (candidates held constant).
    grads = torch.autograd.grad(
        terms["prc_unsup"] + terms["prc_sup"], model.bert.pooler.dense.weight, retain_graph=True
    )
    expected = torch.autograd.grad(unsup + sup, model.bert.pooler.dense.weight)
    assert torch.allclose(grads[0], expected[0], atol=1e-5)


def test_no_dropout_on_bank_rows_in_eval_mode_or_for_mean_pooling():
    model = tiny_bert(seed=0, classifier_dropout=0.5)
    loader = loader_of(model)
    batch = next(iter(loader))
    model.train()  # the bank pass switches to eval mode itself
    bank = build_bank(model, loader, "pooler", dtype=torch.float32)
    model.eval()
    with torch.no_grad():
        out = model(**model_inputs(batch), output_hidden_states=True)
        clean = F.normalize(pooled(model, out.hidden_states[-1]), dim=-1)
        assert torch.allclose(bank.get(batch["idx"]), clean, atol=1e-6)
        assert torch.equal(represent(model, out, batch["attention_mask"], "pooler", dropout=0.5), clean)
        model.train()
        mean = represent(model, out, batch["attention_mask"], "mean", dropout=0.5)
        hidden = out.hidden_states[-1]
        assert torch.allclose(mean, F.normalize(hidden.mean(dim=1), dim=-1), atol=1e-6)
        dropped = represent(model, out, batch["attention_mask"], "pooler", dropout=0.5)
        assert not torch.allclose(dropped, clean)


def test_teacher_and_banks_get_no_gradient_from_the_whole_loss():
    model, teacher = tiny_bert(seed=0), tiny_bert(seed=1)
    loader = loader_of(model)
    cap = CapLoss(
        model, CapConfig(modules=("prc", "fic"), extra_examples=4), CapContext(teacher=teacher, loader=loader)
    )
    before = {n: b.get(torch.arange(16)).clone() for n, b in cap.banks.items()}
    model.train()
    batch = next(iter(loader))
    terms = cap(model(**model_inputs(batch), labels=batch["labels"], output_hidden_states=True), batch, 0)
    assert set(terms) == {"ce", "kd", "prc_unsup", "prc_sup", "fic_unsup", "fic_sup"}
    sum(terms.values()).backward()  # every term, KD included
    assert all(p.grad is None for p in teacher.parameters())
    assert (
        model.classifier.weight.grad.abs().sum() > 0 and model.bert.pooler.dense.weight.grad.abs().sum() > 0
    )
    torch.optim.SGD(model.parameters(), lr=1.0).step()
    for name, bank in cap.banks.items():
        assert torch.equal(bank.get(torch.arange(16)), before[name])


# ---------------------------------------------------------------------------- snapshots and the record


class Recorder:
    """Wraps a CapLoss and keeps every step's terms (as floats) for an independent mean."""

    needs_hidden_states = True

    def __init__(self, inner):
        self.inner, self.seen = inner, []

    def attach(self, total_steps, steps_per_epoch):
        self.inner.attach(total_steps, steps_per_epoch)

    def on_epoch_end(self):
        self.inner.on_epoch_end()

    def __call__(self, outputs, batch, step):
        terms = self.inner(outputs, batch, step)
        self.seen.append({k: abs(float(v.detach())) for k, v in terms.items()})
        return terms


def test_loss_term_record_and_snapshots_within_one_epoch():
    """Half an epoch of 10 steps with snapshot_fraction 0.3: snapshots every ceil(0.3 * 10) = 3 steps (steps
    3, 6, 9 of 0..9), and the record's magnitudes are the mean |term| over the last step (10%)."""
    random.seed(0)
    model, teacher = tiny_bert(seed=0), tiny_bert(seed=1)
    bank_loader = loader_of(model)
    train_loader = DataLoader(
        rows_of(model) * 10, batch_size=8, shuffle=False, collate_fn=collate
    )  # 20 steps/epoch
    cap = CapLoss(
        model,
        CapConfig(extra_examples=4, snapshot_fraction=0.3),
        CapContext(teacher=teacher, loader=bank_loader),
    )
    recorder = Recorder(cap)
    stats = train(
        model, train_loader, TrainConfig(epochs=0.5, batch_size=8, learning_rate=1e-4), loss_fn=recorder
    )
    assert stats["steps"] == 10
    assert [s for s in cap.snapshots.steps] == [3, 6, 9]
    assert cap.cost_report()["snapshots_taken"] == 3 and cap.cost_report()["snapshots_planned"] == 3
    magnitudes = stats["loss_term_magnitudes"]
    assert set(magnitudes) == {
        "ce",
        "kd",
        "prc_unsup",
        "prc_sup",
        "snc_unsup",
        "snc_sup",
        "fic_unsup",
        "fic_sup",
    }
    last = recorder.seen[-1:]  # ceil(10% of 10 steps) = 1 step
    for name, value in magnitudes.items():
        assert value == pytest.approx(sum(s[name] for s in last) / len(last), rel=1e-5)
    assert stats["final_loss_terms"]["ce"] > 0


def test_loss_term_record_averages_the_last_tenth_of_steps():
    model = tiny_bert(seed=0)
    loader = DataLoader(rows_of(model) * 5, batch_size=4, shuffle=False, collate_fn=collate)  # 20 steps
    cap = CapLoss(model, CapConfig(modules=("prc",), extra_examples=4), CapContext(loader=loader_of(model)))
    recorder = Recorder(cap)
    stats = train(model, loader, TrainConfig(epochs=1.0, batch_size=4, learning_rate=1e-4), loss_fn=recorder)
    last = recorder.seen[-2:]  # 10% of 20 steps
    assert recorder.seen[-3]["ce"] != recorder.seen[-1]["ce"]
    for name in ("ce", "prc_unsup", "prc_sup"):
        assert stats["loss_term_magnitudes"][name] == pytest.approx(
            (last[0][name] + last[1][name]) / 2, rel=1e-5
        )


def test_snc_that_would_take_no_snapshot_is_refused_in_one_line():
    cfg = CapConfig()
    assert cfg.planned_snapshots(total_steps=500, steps_per_epoch=10_000) == 1  # QQP at ~500 steps: at 250
    assert cfg.planned_snapshots(total_steps=40, steps_per_epoch=20) == 1  # 2 epochs: at the epoch end
    assert cfg.planned_snapshots(total_steps=30, steps_per_epoch=30) == 1  # 1 epoch: at step 15
    assert CapConfig(snapshot_fraction=0.1).planned_snapshots(500, 10_000) == 9
    assert cfg.planned_snapshots(total_steps=100, steps_per_epoch=10) == 9
    with pytest.raises(CapbenchError, match="SnC is on but 1 training step") as caught:
        cfg.check_snapshots(1, 100)
    assert "\n" not in str(caught.value)
    steps = CapConfig(snapshot_on="steps", snapshot_interval=100)
    with pytest.raises(CapbenchError, match="take no snapshot"):
        steps.check_snapshots(100, 10)
    CapConfig(modules=("prc", "fic")).check_snapshots(1, 100)  # no SnC: nothing to refuse
    model = tiny_bert(seed=0)
    cap = CapLoss(model, CapConfig(modules=("snc",)), CapContext(loader=loader_of(model)))
    with pytest.raises(CapbenchError, match="take no snapshot"):
        cap.attach(1, 2)


@pytest.mark.parametrize("k", [1, 3])
def test_candidate_ids_and_labels_describe_the_candidate_rows(k):
    """Every candidate row is the bank row of the train row its id names (snapshot s = (j - B) % K for the
    bank part), and every candidate's label is that train row's label."""
    rows, labels = random_banks(k, seed=20 + k)
    model = tiny_bert(seed=0, num_labels=3)
    cfg = CapConfig(modules=("snc",), extra_examples=30, snapshot_on="steps", snapshot_interval=1000)
    cap = CapLoss(model, cfg, CapContext(loader=[], num_labels=3))
    for j in range(k):
        cap.snapshots.banks.append(bank_of(rows[:, j], labels))
        cap.snapshots.steps.append(j)
    idx = torch.tensor([7, 2, 40, 11])
    z = F.normalize(torch.randn(4, H), dim=-1)
    cand = cap.candidates("snc", z, idx)
    assert cand.k == k and len(cand.extra_idx) == 30 // k
    assert cand.rows.shape == (4 + 4 * k + (30 // k) * k, H) and len(cand.ids) == cand.rows.shape[0]
    assert torch.equal(cand.ids[:4], idx) and torch.equal(cand.rows[:4], z)
    for j in range(4, cand.rows.shape[0]):
        assert torch.equal(cand.rows[j], rows[cand.ids[j], (j - 4) % k]), j
    assert not set(cand.ids[4 + 4 * k :].tolist()) & set(idx.tolist())
    assert torch.equal(cap.candidate_labels(cand, labels[idx]), labels[cand.ids])


def test_pruning_step_gap_shrinks_to_the_snapshot_fraction_on_a_sub_epoch_budget():
    """snapshot_gap=epoch on a budget of half an epoch (10 steps, 20 per epoch, a 16-row split): the gap is
    snapshot_fraction of training, 16 rows * ceil(0.5 * 10) / 20 = 4 examples, under one batch of 8, so every
    pruning event after training snapshots; without the budget (no attach) it is an epoch, 16 examples."""
    model = tiny_bert(seed=0)
    loader = loader_of(model)
    cfg = CapConfig(modules=("snc",), snapshot_on="pruning_step", snapshot_gap="epoch", extra_examples=4)
    batch = next(iter(loader))
    taken = {}
    for attach in (False, True):
        cap = CapLoss(model, cfg, CapContext(loader=loader))
        if attach:
            cap.attach(10, 20)
        for step in range(4):
            cap(model(**model_inputs(batch), labels=batch["labels"], output_hidden_states=True), batch, step)
            cap.on_pruning_step(step)
        taken[attach] = cap.snapshots.taken
    assert taken == {False: 2, True: 4}
