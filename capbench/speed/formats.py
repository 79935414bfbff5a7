"""Kernel formats for one linear layer: the same `y = x W^T + b` computed by different kernels.

Every format is built from the layer's (masked) weight and bias and, when available, returns exactly what
`F.linear(x, weight * mask, bias)` returns, up to float rounding. A format this machine or torch build
cannot run is still returned, with ``available=False`` and the reason, so reports show it rather than
silently leaving it out.

Formats:
- ``dense``: `F.linear` on the masked weight (the baseline: zeros cost as much as anything else).
- ``csr``: torch.sparse CSR, multiplied in the fast orientation ``W_csr @ X^T`` (3-5x faster on CPU than
  `F.linear(x, W_csr)`), via `torch.addmm` so the bias is fused.
- ``bsr{b}``: torch.sparse BSR with b x b blocks, same orientation; only block sizes dividing both sides.
- ``compact``: the dense layer with all-zero output rows and all-zero input columns removed; the input is
  gathered and the output scattered back (rows removed give just their bias), so it is a drop-in. In a
  physically compacted model the gather and scatter disappear (see `capbench.pruning.compact.compact_zeroed`).
- ``semi_structured_2to4``: NVIDIA 2:4 sparsity (`torch.sparse.to_sparse_semi_structured`), CUDA only.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

DEFAULT_BLOCK_SIZES = (4, 16, 32)
FORMAT_ORDER = ("dense", "csr", "bsr", "compact", "semi_structured_2to4")


def format_label(counts: dict[str, int], compacted: bool) -> str:
    """How the model ran: "compacted", then each format with its share of the encoder linears."""
    parts = ["compacted"] if compacted else []
    total = sum(counts.values())
    for name, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        if name != "dense":
            parts.append(name if n == total else f"{name} {n}/{total}")
    return " + ".join(parts) if parts else "dense"


class KernelFormat:
    """One way of computing a linear layer. Subclasses set `name` and implement `_forward2d`."""

    name = "format"

    def __init__(self, out_features: int, in_features: int, *, available: bool = True, reason: str = ""):
        self.out_features = out_features
        self.in_features = in_features
        self.available = available
        self.reason = reason
        self.stored = 0  # number of stored weight values (incl. zeros kept inside blocks)

    @property
    def column_major_output(self) -> bool:
        """Whether outputs come back column-major (the next linear then receives a column-major input)."""
        return False

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not self.available:
            raise RuntimeError(f"format {self.name} is unavailable: {self.reason}")
        lead = x.shape[:-1]
        y = self._forward2d(x.reshape(-1, self.in_features))
        return y.reshape(*lead, self.out_features)

    def _forward2d(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self) -> dict:
        numel = self.out_features * self.in_features
        return {
            "name": self.name,
            "available": self.available,
            "reason": self.reason,
            "stored_fraction": (self.stored / numel) if (self.available and numel) else None,
        }

    def __repr__(self) -> str:
        state = "available" if self.available else f"unavailable: {self.reason}"
        return f"<{type(self).__name__} {self.name} {self.out_features}x{self.in_features} {state}>"


class Unavailable(KernelFormat):
    def __init__(self, name: str, out_features: int, in_features: int, reason: str):
        super().__init__(out_features, in_features, available=False, reason=reason)
        self.name = name


class DenseFormat(KernelFormat):
    name = "dense"

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__(*weight.shape)
        self.weight = weight.contiguous()
        self.bias = bias
        self.stored = weight.numel()

    def _forward2d(self, x):
        return F.linear(x, self.weight, self.bias)


class _SparseLeftFormat(KernelFormat):
    """Sparse weight on the left: ``y^T = W_sparse @ x^T (+ b)``.

    With `contiguous=True` (the default) the result is copied back to row-major, a true drop-in for
    `F.linear`. With `contiguous=False` it is returned as the transposed view of ``y^T`` (same values and
    shape, column-major strides), which saves a copy costing up to half the sparse matmul at high sparsity.
    Only worth it where the consumer does not care about layout: an elementwise activation followed by a
    linear (a dense GEMM takes either layout, and the next sparse layer wants exactly ``x^T`` contiguous).
    Fed to attention or LayerNorm it is slower (measured: the attention core 3.6x slower on MiniLM), see
    `capbench.speed.kernels.layout_free_output`.
    """

    def __init__(
        self, sparse_weight, bias: torch.Tensor | None, out_features, in_features, contiguous: bool = True
    ):
        super().__init__(out_features, in_features)
        self.sparse_weight = sparse_weight
        self.bias_col = None if bias is None else bias.reshape(-1, 1)
        self.contiguous = contiguous

    @property
    def column_major_output(self) -> bool:
        return not self.contiguous

    def _forward2d(self, x):
        if self.bias_col is None:
            yt = torch.mm(self.sparse_weight, x.t())
        else:
            yt = torch.addmm(self.bias_col, self.sparse_weight, x.t())
        return yt.t().contiguous() if self.contiguous else yt.t()


class CsrFormat(_SparseLeftFormat):
    name = "csr"

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, contiguous: bool = True):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*[Ss]parse.*beta.*")
            csr = weight.to_sparse_csr()
        super().__init__(csr, bias, *weight.shape, contiguous=contiguous)
        self.stored = int(csr.values().numel())


class BsrFormat(_SparseLeftFormat):
    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, block: int, contiguous: bool = True):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*[Ss]parse.*beta.*")
            bsr = weight.to_sparse_bsr((block, block))
        super().__init__(bsr, bias, *weight.shape, contiguous=contiguous)
        self.name = f"bsr{block}"
        self.block = block
        self.stored = int(bsr.values().numel())


class CompactFormat(KernelFormat):
    """Dense matmul on the kept rows x kept columns; output scattered back (`scatter=False`: kept rows only)."""

    name = "compact"

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, *, scatter: bool = True):
        out_features, in_features = weight.shape
        super().__init__(out_features, in_features)
        nz = weight != 0
        rows = nz.any(dim=1).nonzero().flatten()
        cols = nz.any(dim=0).nonzero().flatten()
        self.rows = None if rows.numel() == out_features else rows
        self.cols = None if cols.numel() == in_features else cols
        kept = weight
        if self.rows is not None:
            kept = kept.index_select(0, rows)
        if self.cols is not None:
            kept = kept.index_select(1, cols)
        self.weight = kept.contiguous()
        self.scatter = scatter
        self.full_bias = bias
        self.bias = None if bias is None else (bias if self.rows is None else bias.index_select(0, rows))
        self.kept_shape = tuple(self.weight.shape)
        self.stored = self.weight.numel()

    def _forward2d(self, x):
        if self.cols is not None:
            x = x.index_select(1, self.cols)
        y = F.linear(x, self.weight, self.bias)
        if self.rows is None or not self.scatter:
            return y
        if self.full_bias is None:
            out = x.new_zeros(x.shape[0], self.out_features)
        else:
            out = self.full_bias.expand(x.shape[0], self.out_features).clone()
        return out.index_copy_(1, self.rows, y)

    def __call__(self, x):
        if self.scatter or self.rows is None:
            return super().__call__(x)
        lead = x.shape[:-1]
        return self._forward2d(x.reshape(-1, self.in_features)).reshape(*lead, self.weight.shape[0])

    def describe(self) -> dict:
        d = super().describe()
        d["kept_shape"] = list(self.kept_shape)
        return d


class SemiStructuredFormat(KernelFormat):
    name = "semi_structured_2to4"

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        from torch.sparse import to_sparse_semi_structured

        super().__init__(*weight.shape)
        self.sparse_weight = to_sparse_semi_structured(weight)
        self.bias = bias
        self.stored = weight.numel() // 2

    def _forward2d(self, x):
        return F.linear(x, self.sparse_weight, self.bias)


def is_2to4(weight: torch.Tensor) -> bool:
    """Every group of 4 consecutive weights in a row has at most 2 non-zeros."""
    if weight.shape[-1] % 4:
        return False
    groups = (weight != 0).reshape(weight.shape[0], -1, 4).sum(-1)
    return bool((groups <= 2).all())


def semi_structured_unavailable_reason(weight: torch.Tensor) -> str | None:
    """Why 2:4 cannot run for this weight here, or None if it can be tried."""
    if not hasattr(torch.sparse, "to_sparse_semi_structured"):
        return f"torch {torch.__version__} has no torch.sparse.to_sparse_semi_structured"
    if weight.device.type != "cuda":
        where = "no CUDA device on this machine" if not torch.cuda.is_available() else "weight is not on CUDA"
        return f"CUDA only: torch has no CPU kernel for 2:4 semi-structured sparsity ({where})"
    if not is_2to4(weight):
        return "weight is not pruned to the 2:4 pattern"
    return None


def sparsity_of(weight: torch.Tensor) -> float:
    return 1.0 - int(torch.count_nonzero(weight)) / max(1, weight.numel())


def block_density(weight: torch.Tensor, block: int) -> float:
    """Fraction of b x b blocks holding at least one non-zero (what BSR has to store)."""
    out_features, in_features = weight.shape
    nz = (weight != 0).reshape(out_features // block, block, in_features // block, block)
    return float(nz.any(dim=3).any(dim=1).float().mean())


# Agreement with dense a format must reach (relative to the output's scale): half-precision kernels sum
# in another order and round each product to 8 (bf16) or 11 (fp16) mantissa bits.
CHECK_TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-4, torch.float16: 1e-2, torch.bfloat16: 4e-2}


def _check(
    fmt: KernelFormat, weight, bias, atol: float | None = None, rtol: float | None = None
) -> KernelFormat:
    """Run the format on a few random tokens; a format giving wrong results is reported unavailable.
    Tolerances default to the weight's dtype (``CHECK_TOLERANCE``)."""
    tolerance = CHECK_TOLERANCE.get(weight.dtype, 1e-4)
    atol = tolerance if atol is None else atol
    rtol = tolerance if rtol is None else rtol
    g = torch.Generator(device="cpu").manual_seed(1234)
    x = torch.randn(3, weight.shape[1], generator=g).to(weight.device, weight.dtype)
    ref = F.linear(x, weight, bias)
    got = fmt(x)
    scale = float(ref.abs().max()) if ref.numel() else 0.0
    if got.shape != ref.shape or not torch.allclose(got, ref, atol=atol * max(1.0, scale), rtol=rtol):
        return Unavailable(fmt.name, *weight.shape, reason="self-check failed: output differs from dense")
    return fmt


@dataclass(frozen=True)
class FormatPolicy:
    """Which sparse formats are worth building for a layer, and how they run.

    Sparse formats are marked unavailable ("skipped: ...") when the layer's sparsity is below `min_sparsity`,
    and a BSR block size when the fraction of non-zero blocks exceeds `max_block_density`: they cannot beat
    dense there and timing them costs minutes at large token counts. The defaults skip nothing.
    `contiguous=False` lets the sparse formats return a column-major view instead of copying (see
    `_SparseLeftFormat`); `check` runs each built format once against dense and drops wrong ones.
    """

    block_sizes: tuple[int, ...] = DEFAULT_BLOCK_SIZES
    min_sparsity: float = 0.0
    max_block_density: float = 1.0
    contiguous: bool = True
    check: bool = True


DEFAULT_POLICY = FormatPolicy()


def _attempt(name: str, factory, weight, bias, policy: FormatPolicy) -> KernelFormat:
    """Build one format; one this build cannot run (or that fails its check) is reported, never dropped."""
    try:
        fmt = factory()
        return _check(fmt, weight, bias) if policy.check else fmt
    except Exception as exc:
        return Unavailable(name, *weight.shape, f"{type(exc).__name__}: {exc}")


def _csr(weight, bias, policy: FormatPolicy, low: str | None) -> dict[str, KernelFormat]:
    if not hasattr(weight, "to_sparse_csr"):
        return {"csr": Unavailable("csr", *weight.shape, "torch has no sparse CSR tensors")}
    if low:
        return {"csr": Unavailable("csr", *weight.shape, low)}
    return {"csr": _attempt("csr", lambda: CsrFormat(weight, bias, policy.contiguous), weight, bias, policy)}


def _bsr_reason(weight, block: int, policy: FormatPolicy, low: str | None) -> str | None:
    out_features, in_features = weight.shape
    if out_features % block or in_features % block:
        return f"block size {block} does not divide the {out_features}x{in_features} weight"
    if low:
        return low
    dens = block_density(weight, block)
    if dens > policy.max_block_density:
        return (
            f"skipped: {dens:.0%} of {block}x{block} blocks hold a non-zero "
            f"(limit {policy.max_block_density:.0%}), BSR would store nearly the dense weight"
        )
    return None


def _bsr(weight, bias, policy: FormatPolicy, low: str | None) -> dict[str, KernelFormat]:
    out: dict[str, KernelFormat] = {}
    for b in policy.block_sizes:
        name = f"bsr{b}"
        reason = _bsr_reason(weight, b, policy, low)
        if reason is not None:
            out[name] = Unavailable(name, *weight.shape, reason)
        else:
            out[name] = _attempt(
                name, lambda b=b: BsrFormat(weight, bias, b, policy.contiguous), weight, bias, policy
            )
    return out


def _compact(weight, bias, policy: FormatPolicy, low: str | None) -> dict[str, KernelFormat]:
    nz = weight != 0
    if bool(nz.any(dim=1).all()) and bool(nz.any(dim=0).all()):
        reason = "nothing to compact: no all-zero rows or columns"
        return {"compact": Unavailable("compact", *weight.shape, reason)}
    return {"compact": _attempt("compact", lambda: CompactFormat(weight, bias), weight, bias, policy)}


def _semi_structured(weight, bias, policy: FormatPolicy, low: str | None) -> dict[str, KernelFormat]:
    name = "semi_structured_2to4"
    reason = semi_structured_unavailable_reason(weight)
    if reason is not None:
        return {name: Unavailable(name, *weight.shape, reason)}
    return {name: _attempt(name, lambda: SemiStructuredFormat(weight, bias), weight, bias, policy)}


# format family -> builder of its formats (FORMAT_ORDER without dense)
_BUILDERS = {"csr": _csr, "bsr": _bsr, "compact": _compact, "semi_structured_2to4": _semi_structured}


def build_formats(
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    policy: FormatPolicy = DEFAULT_POLICY,
    *,
    formats: Iterable[str] | None = None,
    mask: torch.Tensor | None = None,
) -> dict[str, KernelFormat]:
    """All kernel formats for one linear layer, keyed by name, dense first, built as `policy` says.

    `formats` restricts the families built (names from `FORMAT_ORDER`; default all); `mask` multiplies the
    weight first.
    """
    weight = weight.detach()
    if mask is not None:
        weight = weight * mask.to(weight.dtype)
    bias = None if bias is None else bias.detach()
    wanted = list(FORMAT_ORDER if formats is None else formats)
    unknown = [f for f in wanted if f not in FORMAT_ORDER]
    if unknown:
        raise ValueError(f"unknown kernel formats {unknown}; known: {list(FORMAT_ORDER)}")
    s = sparsity_of(weight)
    low = None
    if s < policy.min_sparsity:
        low = f"skipped: sparsity {s:.2f} below {policy.min_sparsity:.2f}, sparse kernels cannot beat dense there"
    result: dict[str, KernelFormat] = {"dense": DenseFormat(weight, bias)}
    for family, build in _BUILDERS.items():
        if family in wanted:
            result.update(build(weight, bias, policy, low))
    return result
