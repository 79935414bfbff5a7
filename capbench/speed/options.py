"""The settings of one speed measurement (`BenchOptions`) and the batch x sequence shapes it is taken at."""

from __future__ import annotations

from dataclasses import dataclass

from capbench.speed.formats import DEFAULT_BLOCK_SIZES, FormatPolicy
from capbench.speed.timing import Rounds

# batch x sequence length: a single sequence, a typical batch, and one large count (per layer) ...
DEFAULT_TOKEN_COUNTS = ("1x128", "32x128", "128x128")
# ... and the whole-model shapes.
DEFAULT_MODEL_TOKEN_COUNTS = ("1x128", "32x128")


def parse_token_count(spec: str | int | tuple[int, int]) -> tuple[int, int]:
    """``"32x128"`` -> (32, 128); a plain number N -> (1, N)."""
    if isinstance(spec, tuple):
        batch, seq = spec
    elif isinstance(spec, int):
        batch, seq = 1, spec
    else:
        text = str(spec).lower().replace("×", "x").strip()
        try:
            if "x" in text:
                b, s = text.split("x", 1)
                batch, seq = int(b), int(s)
            else:
                batch, seq = 1, int(text)
        except ValueError:
            raise ValueError(f"token count {spec!r} is not BATCHxSEQ (e.g. 32x128) or a number") from None
    if batch < 1 or seq < 1:
        raise ValueError(f"token count {spec!r} must be positive")
    return int(batch), int(seq)


def token_count_label(spec) -> str:
    batch, seq = parse_token_count(spec)
    return f"{batch}x{seq}"


@dataclass(frozen=True)
class BenchOptions:
    """What `bench_model` (and `capbench bench`) measures and how; token counts are normalised to labels.

    - `token_counts`: per-layer kernel shapes (batch x seq); `model_token_counts`: whole-model shapes;
    - `repeats` interleaved rounds after `warmup` calls; at most `layer_budget` seconds of rounds per layer
      and token count (`model_budget` per whole-model shape) once 3 rounds are done (None: no limit);
    - `breakdown`: the where-does-the-time-go breakdown at the largest whole-model shape;
    - `compact`: remove zeroed heads / FFN neurons first, widths rounded up to `compact_multiple`;
    - `min_sparsity`, `max_block_density`, `block_sizes`: which sparse formats are built (`FormatPolicy`);
    - `min_gain`: how much faster than dense a format must be to be chosen for a layer;
    - `threads`: torch intra-op threads (None: torch's choice; applied by the command line).
    """

    token_counts: tuple[str, ...] = DEFAULT_TOKEN_COUNTS
    model_token_counts: tuple[str, ...] = DEFAULT_MODEL_TOKEN_COUNTS
    repeats: int = 5
    warmup: int = 1
    layer_budget: float | None = 2.0
    model_budget: float | None = None
    breakdown: bool = True
    compact: bool = True
    compact_multiple: int = 16
    min_sparsity: float = 0.5
    max_block_density: float = 0.5
    block_sizes: tuple[int, ...] = DEFAULT_BLOCK_SIZES
    min_gain: float = 1.02
    threads: int | None = None

    def __post_init__(self):
        normalise = object.__setattr__  # frozen: normalise once, at construction
        normalise(self, "token_counts", tuple(token_count_label(t) for t in self.token_counts))
        normalise(self, "model_token_counts", tuple(token_count_label(t) for t in self.model_token_counts))
        normalise(self, "block_sizes", tuple(int(b) for b in self.block_sizes))
        if self.repeats < 1:
            raise ValueError("repeats must be at least 1")

    @property
    def policy(self) -> FormatPolicy:
        return FormatPolicy(
            block_sizes=self.block_sizes,
            min_sparsity=self.min_sparsity,
            max_block_density=self.max_block_density,
        )

    def rounds(self, budget: float | None) -> Rounds:
        return Rounds(repeats=self.repeats, warmup=self.warmup, budget=budget)


DEFAULT_OPTIONS = BenchOptions()
