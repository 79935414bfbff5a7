"""What a probing run measures: the probe names and the protocol options (`ProbeOptions`)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

from capbench.errors import CapbenchError
from capbench.probing.features import DEFAULT_BATCH_SIZE, DEFAULT_MAX_LENGTH, POOLINGS
from capbench.probing.probe import C_GRID, DEFAULT_SEEDS, MAX_ITER
from capbench.probing.tasks import DEFAULT_CONTROL, DEFAULT_N_WORDS, DEFAULT_SIZES, PROBE_TASKS
from capbench.probing.transfer import DEFAULT_TRANSFER_SIZES, TRANSFER_TASKS

KNOWN_PROBES = PROBE_TASKS + TRANSFER_TASKS

# The default probe set (`--probes default`): the probes on which the pre-trained MiniLM clears both chance
# and its own embeddings by the retention margin, and both floor models stay at or below 0.5 retention
# (measured: docs/probes.md; checked by tests/test_probe_validity.py). sentlen and word_content are solved
# by the embeddings (mean-pooled token and position embeddings) and are left out; sst2, cola, rte and mnli
# transfer gain less than the margin over the embeddings. A cell's own task is dropped from its transfer
# probes.
DEFAULT_PROBES = ("bigram_shift", "transfer:qnli", "transfer:qqp")


@dataclass(frozen=True)
class ProbeOptions:
    """The probing protocol: seeds (re-partitions), poolings (the first is the headline), split sizes,
    generator settings, the logistic-regression C grid and the feature extraction settings."""

    seeds: tuple[int, ...] = DEFAULT_SEEDS
    poolings: tuple[str, ...] = POOLINGS
    sizes: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_SIZES))
    transfer_sizes: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_TRANSFER_SIZES))
    data_seed: int = 0
    n_words: int = DEFAULT_N_WORDS
    control: str = DEFAULT_CONTROL
    corpus_configs: tuple[str, ...] | None = None  # GLUE configs whose sentences form the corpus; None: all
    max_length: int = DEFAULT_MAX_LENGTH
    batch_size: int = DEFAULT_BATCH_SIZE
    c_grid: tuple[float, ...] = C_GRID
    max_iter: int = MAX_ITER

    def __post_init__(self):
        set_ = object.__setattr__  # frozen: normalise the sequences once
        set_(self, "seeds", tuple(int(s) for s in self.seeds))
        set_(self, "poolings", tuple(self.poolings))
        set_(self, "c_grid", tuple(float(c) for c in self.c_grid))
        set_(self, "sizes", dict(self.sizes))
        set_(self, "transfer_sizes", {**DEFAULT_TRANSFER_SIZES, **dict(self.transfer_sizes)})
        if self.corpus_configs is not None:
            set_(self, "corpus_configs", tuple(self.corpus_configs))
        if not self.seeds:
            raise CapbenchError("probe options: give at least one seed")
        unknown = [p for p in self.poolings if p not in POOLINGS]
        if unknown or not self.poolings:
            raise CapbenchError(
                f"unknown pooling {', '.join(unknown)}; known poolings: {', '.join(POOLINGS)}"
            )

    def task_options(self, name: str) -> dict:
        """Generator options of generated probe `name` (word_content also takes the word count)."""
        if name == "word_content":
            return {"n_words": self.n_words, "control": self.control}
        return {"control": self.control}

    def to_dict(self) -> dict:
        return asdict(self)


def expand_probe_names(names: Iterable[str]) -> list[str]:
    """`names` with `default` replaced by DEFAULT_PROBES, blanks and repeats dropped (order kept)."""
    out: list[str] = []
    for raw in names:
        name = raw.strip()
        for one in DEFAULT_PROBES if name == "default" else (name,):
            if one and one not in out:
                out.append(one)
    return out


def split_probe_names(names: Iterable[str]) -> tuple[list[str], list[str]]:
    """(generated probes, transfer probes); a transfer probe may be written `sst2` or `transfer:sst2`;
    `default` stands for DEFAULT_PROBES. Raises CapbenchError naming an unknown probe."""
    generated: list[str] = []
    transfer: list[str] = []
    for raw in expand_probe_names(names):
        name = raw.strip()
        if not name:
            continue
        bare = name.removeprefix("transfer:")
        if name in PROBE_TASKS:
            target = generated
        elif bare in TRANSFER_TASKS:
            target, name = transfer, bare
        else:
            raise CapbenchError(
                f"unknown probe {raw!r}; known probes: {', '.join(PROBE_TASKS)} "
                f"and transfer probes {', '.join(TRANSFER_TASKS)}, or 'default'"
            )
        if name not in target:
            target.append(name)
    return generated, transfer


def probe_names(probes: Sequence[str], transfer: Sequence[str] = ()) -> list[str]:
    """One list of probe names, transfer probes prefixed (`transfer:sst2`), as probe_model takes them."""
    return [*probes, *(f"transfer:{t}" for t in transfer)]
