import pytest
import torch
import torch.nn.functional as F

from capbench.speed import formats as fm
from capbench.speed.formats import FormatPolicy, build_formats, is_2to4
from capbench.speed.synthetic import make_mask, weight_like_trained


def _masked(kind, sparsity=0.8, shape=(32, 64), seed=0):
    w = weight_like_trained(*shape, seed=seed)
    if kind == "cols":
        keep = torch.rand(shape[1], generator=torch.Generator().manual_seed(seed)) > sparsity
        return w * keep[None, :]
    return w * make_mask(w, sparsity, kind, seed=seed)


@pytest.mark.parametrize("kind", ["random", "magnitude", "block4", "block16", "rows", "cols"])
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("contiguous", [True, False])
def test_every_available_format_matches_dense_masked(kind, with_bias, contiguous):
    w = _masked(kind)
    b = torch.randn(w.shape[0]) if with_bias else None
    formats = build_formats(w, b, FormatPolicy(contiguous=contiguous))
    assert list(formats)[0] == "dense"
    x = torch.randn(3, 5, w.shape[1])
    ref = F.linear(x, w, b)
    for name, fmt in formats.items():
        assert fmt.name == name
        if fmt.available:
            y = fmt(x)
            torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-4, msg=f"{kind}/{name}")
            assert y.is_contiguous() or not contiguous
    for name in ("csr", "bsr4", "bsr16", "bsr32"):
        assert formats[name].available, formats[name].reason
    if kind in ("rows", "cols"):
        assert formats["compact"].available, formats["compact"].reason


def test_mask_argument_and_single_token():
    w = weight_like_trained(16, 32)
    mask = make_mask(w, 0.5, "random")
    formats = build_formats(w, None, mask=mask)
    x = torch.randn(32)
    ref = F.linear(x, w * mask)
    for fmt in formats.values():
        if fmt.available:
            torch.testing.assert_close(fmt(x), ref, atol=1e-5, rtol=1e-4)


def test_compact_removes_rows_and_columns():
    w = weight_like_trained(16, 32)
    w[3] = 0
    w[10] = 0
    w[:, 5] = 0
    b = torch.randn(16)
    fmt = build_formats(w, b, formats=["compact"])["compact"]
    assert fmt.available and fmt.kept_shape == (14, 31)
    x = torch.randn(7, 32)
    torch.testing.assert_close(fmt(x), F.linear(x, w, b), atol=1e-5, rtol=1e-4)
    core = fm.CompactFormat(w, b, scatter=False)
    assert core(x).shape == (7, 14)


def test_unavailable_formats_are_reported_not_dropped():
    w = weight_like_trained(30, 64)  # 30 rows: no block size 4/16/32 divides it
    w[:, ::2] = 0  # a 2:4 pattern, still no CPU kernel
    formats = build_formats(w)
    for name in ("bsr4", "bsr16", "bsr32"):
        assert not formats[name].available and "does not divide" in formats[name].reason
    ss = formats["semi_structured_2to4"]
    assert not ss.available
    if not torch.cuda.is_available():
        assert "CUDA" in ss.reason
    assert is_2to4(w) and not is_2to4(weight_like_trained(4, 8))
    assert set(fm.FORMAT_ORDER) - {"bsr"} <= set(formats)
    with pytest.raises(RuntimeError, match="unavailable"):
        ss(torch.randn(2, 64))


def test_skips_are_reported_with_reason():
    w = _masked("random", sparsity=0.3)
    formats = build_formats(w, policy=FormatPolicy(min_sparsity=0.5))
    assert not formats["csr"].available and formats["csr"].reason.startswith("skipped")
    w = _masked("random", sparsity=0.9)
    formats = build_formats(w, policy=FormatPolicy(max_block_density=0.5))
    assert formats["csr"].available
    assert not formats["bsr16"].available and "blocks" in formats["bsr16"].reason


def test_a_failing_format_becomes_unavailable(monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("no kernel for this layout")

    monkeypatch.setattr(fm, "CsrFormat", boom)
    formats = build_formats(_masked("random"))
    assert not formats["csr"].available
    assert "no kernel for this layout" in formats["csr"].reason


def test_unknown_format_name():
    with pytest.raises(ValueError, match="unknown kernel formats"):
        build_formats(torch.zeros(4, 4), formats=["ell"])


@pytest.mark.parametrize("kind", ["random", "magnitude", "block4", "rows"])
def test_masks_have_requested_sparsity(kind):
    w = weight_like_trained(64, 128)
    mask = make_mask(w, 0.75, kind)
    assert mask.dtype == torch.bool
    assert 1 - mask.float().mean().item() == pytest.approx(0.75, abs=0.02)
