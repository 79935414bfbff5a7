"""oBERT math (capbench.pruning.fisher): the block Fisher inverse against a direct inverse, the OBS score and
update against their closed forms on a hand-sized example, block independence, masks, memory, errors."""

import math

import pytest
import torch

from capbench.pruning.fisher import EPS, BlockFisherInverse, obs_scores, obs_update


def direct_block_inverses(grads: torch.Tensor, d: int, B: int, m: int, damp: float) -> torch.Tensor:
    """inv(damp * I + (1/m) sum_k g_k g_k^T) per block of B, in float64, by torch.linalg.inv (zero padding)."""
    nb = math.ceil(d / B)
    padded = torch.zeros(grads.shape[0], nb * B, dtype=torch.float64)
    padded[:, :d] = grads.to(torch.float64)
    blocks = padded.view(-1, nb, B)  # (k, nb, B)
    F = damp * torch.eye(B, dtype=torch.float64) + torch.einsum("kbi,kbj->bij", blocks, blocks) / m
    return torch.linalg.inv(F)


def dense_from_blocks(blocks: torch.Tensor, d: int) -> torch.Tensor:
    return torch.block_diag(*blocks)[:d, :d]


@pytest.mark.parametrize("d,B", [(10, 5), (7, 3)])
@pytest.mark.parametrize("num_added", [2, 6])  # fewer than m, and all m (more than B: full rank)
def test_block_inverse_matches_direct_inverse_float64(d, B, num_added):
    m, damp = 6, 0.3
    gen = torch.Generator().manual_seed(d * 100 + num_added)
    grads = torch.randn(num_added, d, generator=gen, dtype=torch.float64)
    finv = BlockFisherInverse(d, B, num_grads=m, damp=damp, dtype=torch.float64)
    for g in grads:
        finv.add_grad(g)
    assert finv.added == num_added
    expected = direct_block_inverses(grads, d, B, m, damp)
    assert finv.F_inv.shape == (math.ceil(d / B), B, B)
    torch.testing.assert_close(finv.F_inv, expected, rtol=1e-10, atol=1e-12)
    dense = dense_from_blocks(expected, d)
    torch.testing.assert_close(finv.diag(), torch.diagonal(dense), rtol=1e-10, atol=1e-12)
    v = torch.randn(d, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(finv.mul(v), dense @ v, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("d,B", [(10, 5), (7, 3)])
def test_block_inverse_float32_default_close_to_float64(d, B):
    m, damp = 8, 0.1
    gen = torch.Generator().manual_seed(7)
    grads = torch.randn(m, d, generator=gen)
    finv = BlockFisherInverse(d, B, num_grads=m, damp=damp)
    assert finv.F_inv.dtype == torch.float32
    for g in grads:
        finv.add_grad(g.view(1, d))  # any shape with d elements
    torch.testing.assert_close(
        finv.F_inv.double(), direct_block_inverses(grads, d, B, m, damp), rtol=1e-4, atol=1e-4
    )


# ---------------------------------------------------------------------------- hand-sized OBS (issue check)
LAMBDA = 0.5
G = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)
W = torch.tensor([0.3, -1.0, 0.2], dtype=torch.float64)


def hand_finv() -> torch.Tensor:
    """Sherman-Morrison closed form of inv(lambda I + g g^T / m) for m = 1:
    F^-1 = (1/lambda) (I - g g^T / (lambda m + g^T g))."""
    m = 1
    return (torch.eye(3, dtype=torch.float64) - torch.outer(G, G) / (LAMBDA * m + G @ G)) / LAMBDA


def hand_fisher_inverse(dtype=torch.float64) -> BlockFisherInverse:
    finv = BlockFisherInverse(3, 3, num_grads=1, damp=LAMBDA, dtype=dtype)
    finv.add_grad(G.to(dtype))
    return finv


def test_hand_example_closed_form_inverse_is_what_the_numbers_say():
    # g^T g = 5.25, lambda m + g^T g = 5.75: diag(F^-1) = 2 (1 - g_i^2 / 5.75).
    expected_diag = torch.tensor([2 * 4.75 / 5.75, 2 * 1.75 / 5.75, 2 * 5.5 / 5.75], dtype=torch.float64)
    torch.testing.assert_close(torch.diagonal(hand_finv()), expected_diag, rtol=1e-15, atol=0)
    F = LAMBDA * torch.eye(3, dtype=torch.float64) + torch.outer(G, G)
    torch.testing.assert_close(hand_finv() @ F, torch.eye(3, dtype=torch.float64), rtol=0, atol=1e-14)


def test_hand_example_scores_equal_closed_form():
    finv = hand_fisher_inverse()
    torch.testing.assert_close(finv.F_inv[0], hand_finv(), rtol=1e-14, atol=1e-14)
    scores = obs_scores(W, finv, eps=0.0)
    expected = W**2 / (2 * torch.diagonal(hand_finv()))
    torch.testing.assert_close(scores, expected, rtol=1e-14, atol=0)
    # 0.09 / 3.304 = 0.0272, 1 / 1.217 = 0.822, 0.04 / 3.826 = 0.0105: the last weight goes first.
    assert int(scores.argmin()) == 2
    # The sparseml default eps (float32 eps in the denominator) and the float32 default dtype barely move them.
    torch.testing.assert_close(obs_scores(W, finv), expected, rtol=1e-6, atol=0)
    torch.testing.assert_close(
        obs_scores(W.float(), hand_fisher_inverse(torch.float32)).double(), expected, rtol=1e-5, atol=0
    )


def test_hand_example_update_is_the_obs_update_and_its_loss_is_the_score():
    finv = hand_fisher_inverse()
    scores = obs_scores(W, finv, eps=0.0)
    q = int(scores.argmin())
    newly = torch.zeros(3, dtype=torch.bool)
    newly[q] = True
    new_w = obs_update(W, finv, newly, eps=0.0)

    Finv = hand_finv()
    e_q = torch.zeros(3, dtype=torch.float64)
    e_q[q] = 1.0
    dw = -(W[q] / Finv[q, q]) * (Finv @ e_q)
    torch.testing.assert_close(new_w - W, dw, rtol=1e-13, atol=1e-15)
    assert new_w[q].item() == 0.0  # exactly
    assert (W + dw)[q].abs().item() < 1e-15  # the update itself reaches 0; obs_update then sets it exactly
    # Second-order loss increase of the update: 0.5 dw^T F dw equals the score rho_q.
    F = LAMBDA * torch.eye(3, dtype=torch.float64) + torch.outer(G, G)
    loss_increase = 0.5 * dw @ F @ dw
    assert loss_increase.item() == pytest.approx(scores[q].item(), abs=1e-6, rel=1e-12)
    # ...and it is the smallest such increase: any other weight pruned the same way costs more.
    for other in range(3):
        dwo = -(W[other] / Finv[other, other]) * Finv[:, other]
        assert 0.5 * dwo @ F @ dwo >= loss_increase - 1e-15

    # The default path (float32 blocks, sparseml eps) agrees within float32 precision, w_q still exactly 0.
    new32 = obs_update(W.float(), hand_fisher_inverse(torch.float32), newly)
    assert new32.dtype == torch.float32 and new32[q].item() == 0.0
    torch.testing.assert_close(new32.double(), W + dw, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------- masks, blocks, shapes
def filled_finv(d: int, B: int, m: int = 4, damp: float = 0.2, seed: int = 0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    finv = BlockFisherInverse(d, B, num_grads=m, damp=damp, dtype=dtype)
    for _ in range(m):
        finv.add_grad(torch.randn(d, generator=gen, dtype=dtype))
    return finv


def test_masked_entries_score_minus_inf():
    finv = filled_finv(6, 3)
    w = torch.arange(1.0, 7.0, dtype=torch.float64).view(2, 3)
    mask = torch.tensor([[1, 0, 1], [1, 1, 0]], dtype=torch.float32)
    scores = obs_scores(w, finv, mask)
    assert scores.shape == (2, 3)
    assert torch.isneginf(scores[mask == 0]).all()
    assert torch.isfinite(scores[mask == 1]).all() and (scores[mask == 1] > 0).all()
    torch.testing.assert_close(scores[mask == 1], obs_scores(w, finv)[mask == 1], rtol=0, atol=0)
    with pytest.raises(ValueError, match="mask"):
        obs_scores(w, finv, mask.view(-1))


def test_blocks_do_not_affect_each_other():
    d, B = 10, 5
    finv = filled_finv(d, B)
    w = torch.randn(d, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    newly = torch.zeros(d, dtype=torch.bool)
    newly[1] = True  # block 0
    new_w = obs_update(w, finv, newly)
    assert new_w[1].item() == 0.0
    assert torch.equal(new_w[B:], w[B:])  # block 1 untouched, bit for bit
    assert not torch.equal(new_w[:B], w[:B])  # block 0 compensated
    # The scores of block 1 depend only on block 1's gradients: another gradient history for block 0 keeps them.
    other = filled_finv(d, B, seed=11)
    other.F_inv[1] = finv.F_inv[1]
    torch.testing.assert_close(obs_scores(w, other)[B:], obs_scores(w, finv)[B:], rtol=0, atol=0)


def test_padded_last_block_and_2d_weight():
    d, B, m, damp = 7, 3, 4, 0.2  # blocks of 3, 3, and 1 real weight + 2 of padding
    gen = torch.Generator().manual_seed(5)
    grads = torch.randn(m, 7, 1, generator=gen)
    finv = BlockFisherInverse(d, B, num_grads=m, damp=damp)
    for g in grads:
        finv.add_grad(g)
    assert finv.diag().shape == (7,)
    # Alone in its block: [F^-1]_66 = 1 / (damp + sum_k g_k6^2 / m); the padding does not couple with it.
    f66 = 1.0 / (damp + (grads[:, 6, 0].double() ** 2).sum() / m)
    assert finv.diag()[6].item() == pytest.approx(f66.item(), rel=1e-5)
    w = torch.randn(7, 1, generator=gen)
    scores = obs_scores(w, finv)
    assert scores.shape == (7, 1)
    assert scores[6, 0].item() == pytest.approx(w[6, 0].item() ** 2 / (2 * f66.item()), rel=1e-5)
    newly = torch.zeros(7, 1, dtype=torch.bool)
    newly[6, 0] = True
    new_w = obs_update(w, finv, newly)
    assert new_w.shape == (7, 1) and new_w[6, 0].item() == 0.0
    assert torch.equal(new_w[:6], w[:6])


def test_several_pruned_in_one_block_sum_single_updates():
    """The reference's approximation: the joint update is the sum of the single-weight OBS updates."""
    d, B = 5, 5
    finv = filled_finv(d, B)
    w = torch.randn(d, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    both = torch.tensor([True, False, True, False, False])
    singles = []
    for q in (0, 2):
        one = torch.zeros(d, dtype=torch.bool)
        one[q] = True
        singles.append(obs_update(w, finv, one, eps=0.0) - w)
    summed = w + singles[0] + singles[1]
    summed[both] = 0.0
    torch.testing.assert_close(obs_update(w, finv, both, eps=0.0), summed, rtol=1e-12, atol=1e-14)


def test_masked_gradients_keep_pruned_weights_at_zero():
    d, B = 6, 6
    mask = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 1.0])
    finv = BlockFisherInverse(d, B, num_grads=3, damp=0.1, dtype=torch.float64)
    gen = torch.Generator().manual_seed(2)
    for _ in range(3):
        finv.add_grad(torch.randn(d, generator=gen), mask=mask)
    # Pruned weights are decoupled: their rows of F^-1 are e_i / damp.
    torch.testing.assert_close(
        finv.F_inv[0, 1], torch.eye(d, dtype=torch.float64)[1] / 0.1, rtol=0, atol=1e-12
    )
    w = torch.randn(d, generator=gen, dtype=torch.float64) * mask
    newly = torch.tensor([False, False, True, False, False, False])
    new_w = obs_update(w, finv, newly)
    assert new_w[1].item() == 0.0 and new_w[4].item() == 0.0 and new_w[2].item() == 0.0


def test_obs_update_returns_a_new_tensor_of_the_weight_dtype():
    finv = filled_finv(8, 4, dtype=torch.float32)
    w = torch.nn.Parameter(torch.randn(2, 4, dtype=torch.bfloat16))
    before = w.detach().clone()
    newly = torch.zeros(2, 4, dtype=torch.bool)
    newly[0, 0] = True
    new_w = obs_update(w, finv, newly)
    assert torch.equal(w.detach(), before)  # input untouched
    assert new_w.dtype == torch.bfloat16 and new_w.shape == (2, 4) and not new_w.requires_grad
    assert new_w[0, 0].item() == 0.0
    assert obs_scores(w, finv).dtype == torch.float32
    with pytest.raises(ValueError, match="bool"):
        obs_update(w, finv, newly.float())
    with pytest.raises(ValueError, match="shape"):
        obs_update(w, finv, newly.view(-1))
    with pytest.raises(ValueError, match="elements"):
        obs_update(torch.zeros(9), finv, torch.zeros(9, dtype=torch.bool))


# ------------------------------------------------------------------------------------------ memory, errors
@pytest.mark.parametrize(
    "d,B,dtype",
    [(10, 5, torch.float32), (7, 3, torch.float32), (7, 3, torch.float64), (1, 50, torch.float16)],
)
def test_bytes_needed_matches_nbytes(d, B, dtype):
    finv = BlockFisherInverse(d, B, num_grads=2, damp=1e-7, dtype=dtype)
    assert BlockFisherInverse.bytes_needed(d, B, dtype) == finv.nbytes
    assert finv.nbytes == math.ceil(d / B) * B * B * torch.empty((), dtype=dtype).element_size()


def test_bert_base_memory_estimate():
    # BERT-base's prunable encoder weights with the paper's B = 50 in fp32: about 17 GB.
    d = 12 * (4 * 768 * 768 + 2 * 768 * 3072)  # 84,934,656 prunable weights
    assert BlockFisherInverse.bytes_needed(d, 50) == math.ceil(d / 50) * 50 * 50 * 4  # ~17.0 GB
    assert 16.9e9 < BlockFisherInverse.bytes_needed(d, 50) < 17.0e9


def test_add_grad_past_num_grads_raises():
    finv = BlockFisherInverse(4, 2, num_grads=2, damp=0.1)
    finv.add_grad(torch.ones(4))
    finv.add_grad(torch.ones(2, 2))
    before = finv.F_inv.clone()
    with pytest.raises(ValueError, match="num_grads"):
        finv.add_grad(torch.ones(4))
    assert finv.added == 2 and torch.equal(finv.F_inv, before)


def test_bad_inputs_raise():
    finv = BlockFisherInverse(4, 2, num_grads=3, damp=0.1)
    with pytest.raises(ValueError, match="elements"):
        finv.add_grad(torch.ones(5))
    with pytest.raises(ValueError, match="non-finite"):
        finv.add_grad(torch.tensor([1.0, float("nan"), 0.0, 0.0]))
    assert finv.added == 0
    with pytest.raises(ValueError, match="elements"):
        obs_scores(torch.ones(3), finv)
    for kwargs in (
        dict(num_weights=0),
        dict(block_size=0),
        dict(num_grads=0),
        dict(damp=0.0),
        dict(damp=-1.0),
    ):
        args = dict(num_weights=4, block_size=2, num_grads=3, damp=0.1) | kwargs
        with pytest.raises(ValueError):
            BlockFisherInverse(**args)
    with pytest.raises(ValueError, match="floating"):
        BlockFisherInverse(4, 2, 3, 0.1, dtype=torch.int64)


def test_eps_is_the_float32_eps_of_sparseml():
    assert EPS == torch.finfo(torch.float32).eps
