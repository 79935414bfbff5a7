"""The settings of one speed measurement (`BenchOptions`) and the batch x sequence shapes it is taken at."""

from __future__ import annotations

from dataclasses import dataclass

from capbench.speed.formats import DEFAULT_BLOCK_SIZES, FormatPolicy
from capbench.speed.load import BUSY_CORES
from capbench.speed.stats import CONFIDENCE
from capbench.speed.timing import Rounds

# batch x sequence length: the per-layer calibration shapes (a single sequence and a typical batch) ...
DEFAULT_TOKEN_COUNTS = ("1x128", "32x128")
# ... and the whole-model shapes (with sentences: batch size x longest sequence kept).
DEFAULT_MODEL_TOKEN_COUNTS = ("1x128", "32x128")
# On a GPU also batch 128: latency at batch 1, throughput at 32 and 128 (a GPU is far from busy at 32).
GPU_MODEL_TOKEN_COUNTS = ("1x128", "32x128", "128x128")


def model_token_counts_for(device, given=None) -> tuple[str, ...]:
    """The whole-model shapes: ``given`` when the user chose them, else the defaults of ``device``'s type."""
    if given is not None and tuple(given) != DEFAULT_MODEL_TOKEN_COUNTS:
        return tuple(given)
    if getattr(device, "type", device) == "cuda":
        return GPU_MODEL_TOKEN_COUNTS
    return DEFAULT_MODEL_TOKEN_COUNTS


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

    - `token_counts`: per-layer calibration shapes (batch x seq) on which each layer's format is chosen;
      `model_token_counts`: whole-model shapes, measured afresh after the choice (with sentences: batch size
      x the longest sequence kept);
    - rounds: `warmup` calls per candidate, then interleaved rounds until every speedup ratio's IQR / median
      is at most `target_spread` (None: no spread rule), never fewer than `min_repeats` per whole-model
      shape (`layer_min_repeats` per layer and calibration shape), at most `repeats` rounds and
      `model_budget` seconds per whole-model shape (`layer_budget` per layer and calibration shape; None: no
      time cap), and never shorter than `model_min_seconds` per whole-model shape;
    - `min_gain`: a sparse format is chosen for a layer only when the lower end of the `confidence` interval
      of its median speedup over dense exceeds it, so a format that wins by less than its noise does not;
    - `threads`: torch intra-op threads during the measurement (None: 1, the most repeatable on a shared machine; capbench.speed.bench.DEFAULT_THREADS),
      restored afterwards; `busy_cores`: other processes' CPU use (cores) above which a measurement is
      flagged busy (see `capbench.speed.load`);
    - `sentences`: how many evaluation sentences the whole model is timed on, when given; `seed` draws them;
    - `breakdown`: the where-does-the-time-go breakdown at the largest whole-model shape;
    - `compact`: remove zeroed heads / FFN neurons first, widths rounded up to `compact_multiple`;
    - `min_sparsity`, `max_block_density`, `block_sizes`: which sparse formats are built (`FormatPolicy`).

    ValueError on a value outside its domain.
    """

    token_counts: tuple[str, ...] = DEFAULT_TOKEN_COUNTS
    model_token_counts: tuple[str, ...] = DEFAULT_MODEL_TOKEN_COUNTS
    repeats: int = 40
    # 6: the fewest rounds whose order-statistic interval of the median reaches 95% ([min, max]: 96.9%); more
    # would cost minutes on a busy 2-core machine, where single-sentence forwards slow down 10x.
    min_repeats: int = 6
    # Calibration rounds are milliseconds each: 9, the fewest whose 95% interval leaves out the extreme rounds
    # (2nd and 8th of 9, 96.1%), so one preempted round does not decide a layer's format.
    layer_min_repeats: int = 9
    warmup: int = 2
    target_spread: float | None = 0.03
    layer_budget: float | None = 0.75
    model_budget: float | None = 40.0
    # A whole-model shape is timed for at least 10 s: on this shared VM the same forward drifts by 3-6% over
    # seconds, and a measurement that stopped after 6 tight rounds (4.5 s) read 1.45x where runs spanning
    # 30 s of the same model read 1.29-1.39x.
    model_min_seconds: float = 10.0
    breakdown: bool = True
    compact: bool = True
    compact_multiple: int = 16
    min_sparsity: float = 0.5
    max_block_density: float = 0.5
    block_sizes: tuple[int, ...] = DEFAULT_BLOCK_SIZES
    min_gain: float = 1.02
    confidence: float = CONFIDENCE
    threads: int | None = None
    busy_cores: float = BUSY_CORES
    sentences: int = 32
    seed: int = 0

    def __post_init__(self):
        normalise = object.__setattr__  # frozen: normalise once, at construction
        normalise(self, "token_counts", tuple(token_count_label(t) for t in self.token_counts))
        normalise(self, "model_token_counts", tuple(token_count_label(t) for t in self.model_token_counts))
        normalise(self, "block_sizes", tuple(int(b) for b in self.block_sizes))
        if self.repeats < 1:
            raise ValueError("repeats must be at least 1")
        if self.min_repeats < 1 or self.layer_min_repeats < 1:
            raise ValueError("min_repeats must be at least 1")
        if self.warmup < 0:
            raise ValueError("warmup must be at least 0")
        if self.threads is not None and self.threads < 1:
            raise ValueError("threads must be at least 1")
        if self.target_spread is not None and self.target_spread <= 0:
            raise ValueError("target_spread must be positive")
        if not 0 < self.confidence < 1:
            raise ValueError("confidence must be in (0, 1)")
        if self.model_min_seconds < 0:
            raise ValueError("model_min_seconds must be at least 0")
        if self.sentences < 1:
            raise ValueError("sentences must be at least 1")

    @property
    def policy(self) -> FormatPolicy:
        return FormatPolicy(
            block_sizes=self.block_sizes,
            min_sparsity=self.min_sparsity,
            max_block_density=self.max_block_density,
        )

    def rounds(
        self, budget: float | None, min_repeats: int | None = None, min_seconds: float = 0.0
    ) -> Rounds:
        return Rounds(
            repeats=self.repeats,
            warmup=self.warmup,
            budget=budget,
            min_repeats=self.min_repeats if min_repeats is None else min_repeats,
            target_spread=self.target_spread,
            confidence=self.confidence,
            min_seconds=min_seconds,
        )

    def calibration_rounds(self) -> Rounds:
        """Per layer and calibration shape: at least `layer_min_repeats`, at most `layer_budget` seconds."""
        return self.rounds(self.layer_budget, self.layer_min_repeats)

    def model_rounds(self) -> Rounds:
        """Per whole-model shape: at least `min_repeats` and `model_min_seconds`, at most `model_budget` s."""
        return self.rounds(self.model_budget, self.min_repeats, self.model_min_seconds)


DEFAULT_OPTIONS = BenchOptions()
