import math

import pytest
import torch
import torch.nn.functional as F

from capbench.cap.contrastive import (
    contrastive_log_probs,
    positive_mask,
    positive_mean_loss,
    self_pair_mask,
    supervised_contrastive_loss,
    unsupervised_contrastive_loss,
)
from capbench.errors import CapbenchError

NORMS = ("paper_code", "supcon")


def _unit(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g), dim=-1)


def _batch_plus_bank(anchors, noise=0.05, seed=1):
    """Candidates laid out like CapLoss: detached current batch, then one bank row per example."""
    g = torch.Generator().manual_seed(seed)
    bank = F.normalize(anchors + noise * torch.randn(anchors.shape, generator=g), dim=-1)
    ids = torch.arange(anchors.shape[0])
    cand = torch.cat([anchors.detach(), bank])
    cand_ids = torch.cat([ids, ids])
    return cand, ids, cand_ids


@pytest.mark.parametrize("norm", NORMS)
def test_aligned_pairs_give_lower_loss_than_shuffled(norm):
    anchors = _unit(8, 16)
    cand, ids, cand_ids = _batch_plus_bank(anchors)
    self_index = torch.arange(8)
    aligned = unsupervised_contrastive_loss(anchors, ids, cand, cand_ids, 0.1, norm, self_index)
    shuffled_bank = cand[8:][torch.roll(torch.arange(8), 3)]
    shuffled = unsupervised_contrastive_loss(
        anchors, ids, torch.cat([cand[:8], shuffled_bank]), cand_ids, 0.1, norm, self_index
    )
    assert aligned < shuffled
    assert aligned < 0.5 < shuffled


def _hand_loss(anchors, cand, anchor_keys, cand_keys, self_index, tau, norm):
    """Direct loop computation of the CAP contrastive loss (no tensors ops beyond indexing)."""
    a = anchors.tolist()
    c = cand.tolist()
    per_anchor, counts = [], []
    for i, ai in enumerate(a):
        cols = [j for j in range(len(c)) if j != self_index[i]]
        scores = {j: sum(x * y for x, y in zip(ai, c[j], strict=True)) / tau for j in cols}
        log_z = math.log(sum(math.exp(s) for s in scores.values()))
        pos = [j for j in cols if cand_keys[j] == anchor_keys[i]]
        if not pos:
            continue
        per_anchor.append(sum(scores[j] - log_z for j in pos) / len(pos))
        counts.append(len(pos))
    if norm == "paper_code":
        return -sum(per_anchor) / sum(counts)
    return -sum(per_anchor) / len(per_anchor)


@pytest.mark.parametrize("norm", NORMS)
def test_matches_hand_computation(norm):
    anchors = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    cand = torch.tensor(
        [
            [1.0, 0.0],  # anchor 0, current batch (self of anchor 0)
            [0.6, 0.8],  # anchor 1, current batch (self of anchor 1)
            [0.8, 0.6],  # bank row of example 0
            [0.0, 1.0],  # bank row of example 1
            [-1.0, 0.0],  # extra example 7
            [0.8, -0.6],  # extra example 9
        ]
    )
    ids = torch.tensor([0, 1])
    cand_ids = torch.tensor([0, 1, 0, 1, 7, 9])
    labels = torch.tensor([1, 0])
    cand_labels = torch.tensor([1, 0, 1, 0, 1, 1])
    self_index = torch.tensor([0, 1])
    tau = 0.5
    got_u = unsupervised_contrastive_loss(anchors, ids, cand, cand_ids, tau, norm, self_index)
    want_u = _hand_loss(anchors, cand, ids.tolist(), cand_ids.tolist(), [0, 1], tau, norm)
    assert got_u.item() == pytest.approx(want_u, rel=1e-5)
    got_s = supervised_contrastive_loss(anchors, labels, cand, cand_labels, tau, norm, self_index)
    want_s = _hand_loss(anchors, cand, labels.tolist(), cand_labels.tolist(), [0, 1], tau, norm)
    assert got_s.item() == pytest.approx(want_s, rel=1e-5)


def test_normalizations_differ_by_mean_positive_count():
    anchors = _unit(6, 8)
    cand = torch.cat([anchors, _unit(20, 8, seed=3)])
    labels = torch.tensor([0, 1, 0, 1, 0, 2])
    cand_labels = torch.cat([labels, torch.randint(0, 3, (20,), generator=torch.Generator().manual_seed(4))])
    self_index = torch.arange(6)
    paper = supervised_contrastive_loss(anchors, labels, cand, cand_labels, 0.1, "paper_code", self_index)
    supcon = supervised_contrastive_loss(anchors, labels, cand, cand_labels, 0.1, "supcon", self_index)
    mask = positive_mask(labels, cand_labels, self_pair_mask(6, 26, self_index))
    counts = mask.sum(1).float()
    counts = counts[counts > 0]
    assert paper.item() == pytest.approx(supcon.item() / counts.mean().item(), rel=1e-5)
    # One positive per anchor (PrC/FiC unsupervised): both normalisations coincide.
    cand_u, ids, cand_ids = _batch_plus_bank(anchors)
    a = unsupervised_contrastive_loss(anchors, ids, cand_u, cand_ids, 0.1, "paper_code", self_index)
    b = unsupervised_contrastive_loss(anchors, ids, cand_u, cand_ids, 0.1, "supcon", self_index)
    assert a.item() == pytest.approx(b.item(), rel=1e-6)


@pytest.mark.parametrize("norm", NORMS)
def test_self_pair_is_excluded(norm):
    anchors = _unit(4, 8)
    cand, ids, cand_ids = _batch_plus_bank(anchors)
    self_index = torch.arange(4)
    base = unsupervised_contrastive_loss(anchors, ids, cand, cand_ids, 0.1, norm, self_index)
    # Overwrite anchor 0's own row with junk: the loss of the other anchors sees it as a negative, so
    # only check that anchor 0's own row never contributes to anchor 0 (a 1-anchor batch).
    one = anchors[:1]
    cand1 = torch.cat([one, cand[4:]])
    ids1 = torch.cat([ids[:1], cand_ids[4:]])
    l1 = unsupervised_contrastive_loss(one, ids[:1], cand1, ids1, 0.1, norm, torch.tensor([0]))
    cand1_junk = cand1.clone()
    cand1_junk[0] = -cand1[0]
    l1_junk = unsupervised_contrastive_loss(one, ids[:1], cand1_junk, ids1, 0.1, norm, torch.tensor([0]))
    assert l1.item() == pytest.approx(l1_junk.item(), rel=1e-6)
    # Without the mask the self copy (score 1/tau, same id) would be a near-perfect extra positive.
    unmasked = unsupervised_contrastive_loss(anchors, ids, cand, cand_ids, 0.1, norm, None)
    assert not torch.isclose(base, unmasked)
    mask = self_pair_mask(4, cand.shape[0], self_index)
    assert mask.sum() == 4 and mask[torch.arange(4), self_index].all()
    log_probs = contrastive_log_probs(anchors, cand, 0.1, mask)
    assert torch.isinf(log_probs[mask]).all()
    assert torch.allclose(log_probs[~mask].view(4, -1).exp().sum(1), torch.ones(4), atol=1e-5)


@pytest.mark.parametrize("norm", NORMS)
def test_supervised_term_uses_labels(norm):
    # Two well separated clusters; the labels either follow the clusters or cut across them.
    g = torch.Generator().manual_seed(0)
    centers = F.normalize(torch.randn(2, 16, generator=g), dim=-1)
    cluster = torch.tensor([0, 1, 0, 1, 0, 1, 0, 1])
    anchors = F.normalize(centers[cluster] + 0.05 * torch.randn(8, 16, generator=g), dim=-1)
    extra = F.normalize(centers[cluster] + 0.05 * torch.randn(8, 16, generator=g), dim=-1)
    cand = torch.cat([anchors, extra])
    self_index = torch.arange(8)
    good = cluster
    bad = torch.tensor([0, 0, 1, 1, 0, 0, 1, 1])
    loss_good = supervised_contrastive_loss(
        anchors, good, cand, torch.cat([good, good]), 0.1, norm, self_index
    )
    loss_bad = supervised_contrastive_loss(anchors, bad, cand, torch.cat([bad, bad]), 0.1, norm, self_index)
    assert loss_good < loss_bad
    # Changing a single candidate label changes the loss.
    flipped = torch.cat([good, good]).clone()
    flipped[10] = 1 - flipped[10]
    loss_flip = supervised_contrastive_loss(anchors, good, cand, flipped, 0.1, norm, self_index)
    assert not torch.isclose(loss_flip, loss_good)


def test_anchor_without_positive_is_ignored_not_nan():
    anchors = _unit(3, 8)
    cand = torch.cat([anchors, _unit(4, 8, seed=5)])
    labels = torch.tensor([0, 0, 2])  # label 2 appears only on its own (masked) row
    cand_labels = torch.tensor([0, 0, 2, 0, 0, 1, 1])
    loss = supervised_contrastive_loss(anchors, labels, cand, cand_labels, 0.1, "paper_code", torch.arange(3))
    assert torch.isfinite(loss)
    two = supervised_contrastive_loss(
        anchors[:2], labels[:2], cand, cand_labels, 0.1, "supcon", torch.arange(2)
    )
    three = supervised_contrastive_loss(anchors, labels, cand, cand_labels, 0.1, "supcon", torch.arange(3))
    assert three.item() == pytest.approx(two.item(), rel=1e-6)
    none = supervised_contrastive_loss(
        anchors[2:], labels[2:], cand, cand_labels, 0.1, "paper_code", torch.tensor([2])
    )
    assert none.item() == 0.0


def test_gradient_reaches_anchors_only():
    """The anchors' gradient is the closed form with every candidate held constant:
    dL/dz_i = -(1 / (B tau)) (b_i - sum_j p_ij c_j) for one positive b_i per anchor (paper_code = mean);
    the bank here is a leaf that asks for gradient: the pure function leaves detaching to its caller."""
    tau = 0.1
    anchors = _unit(4, 8).requires_grad_(True)
    bank = _unit(4, 8, seed=7).requires_grad_(True)
    cand = torch.cat([anchors.detach(), bank])
    ids = torch.arange(4)
    loss = unsupervised_contrastive_loss(anchors, ids, cand, torch.cat([ids, ids]), tau, "paper_code", ids)
    loss.backward()
    expected = torch.zeros(4, 8)
    with torch.no_grad():
        for i in range(4):
            scores = cand @ anchors[i] / tau
            scores[i] = -float("inf")
            p = scores.softmax(0)
            expected[i] = -(bank[i] - p @ cand) / (4 * tau)
    assert torch.allclose(anchors.grad, expected, atol=1e-5)
    assert bank.grad is not None  # the function does not detach: callers pass plain bank rows


def test_unknown_normalization_is_a_clear_error():
    with pytest.raises(CapbenchError, match="normalization"):
        positive_mean_loss(torch.zeros(1, 2), torch.ones(1, 2, dtype=torch.bool), "nope")


def _released_layout_loss(z, idx, labels, bank, bank_labels, extra_idx, tau, w_unsup, w_sup):
    """The released calculate_contrastive_loss, restated: per example [current, K bank rows], then extras,
    self masked at column b*(K+1), both terms double-normalised by the positive count."""
    bsz, k, dim = bank[idx].shape
    reps = torch.cat([z.detach().unsqueeze(1), bank[idx]], dim=1).reshape(bsz * (k + 1), dim)
    cand = torch.cat([reps, bank[extra_idx].reshape(-1, dim)])
    self_mask = torch.zeros(bsz, cand.shape[0], dtype=torch.bool)
    self_mask[torch.arange(bsz), torch.arange(bsz) * (k + 1)] = True
    score = (z @ cand.t() / tau).masked_fill(self_mask, -1e6).log_softmax(-1)
    total = 0.0
    for weight, keys, extra_keys in ((w_unsup, idx, extra_idx), (w_sup, labels, bank_labels[extra_idx])):
        all_keys = torch.cat([keys.repeat_interleave(k + 1), extra_keys.repeat_interleave(k)])
        pos = keys.view(-1, 1) == all_keys.view(1, -1)
        masked = score.masked_fill(~pos | self_mask, 0)
        num = pos.sum(1, keepdim=True) - 1
        total = total - weight * (masked / num).sum() / (masked != 0).sum()
    return total


def test_matches_the_released_code_layout_with_snapshots_and_extras():
    k, dim = 3, 8
    bank = _unit(12, k, dim, seed=11)
    bank_labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2])
    idx = torch.tensor([2, 5, 7, 8])
    labels = bank_labels[idx]
    z = _unit(4, dim, seed=12)
    extra_idx = torch.tensor([0, 5, 9, 11, 3])  # includes batch example 5: an extra positive
    want = _released_layout_loss(z, idx, labels, bank, bank_labels, extra_idx, 0.1, 0.1, 10.0)

    cand = torch.cat([z, bank[idx].reshape(-1, dim), bank[extra_idx].reshape(-1, dim)])
    ids = torch.cat([idx, idx.repeat_interleave(k), extra_idx.repeat_interleave(k)])
    cand_labels = torch.cat(
        [labels, labels.repeat_interleave(k), bank_labels[extra_idx].repeat_interleave(k)]
    )
    self_index = torch.arange(4)
    got = 0.1 * unsupervised_contrastive_loss(z, idx, cand, ids, 0.1, "paper_code", self_index)
    got = got + 10.0 * supervised_contrastive_loss(
        z, labels, cand, cand_labels, 0.1, "paper_code", self_index
    )
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
