"""The probing task type (`ProbeTask`), balanced splits and control labels, shared by every generator.

See `capbench.probing.tasks` for the tasks and their control tasks (Hewitt & Liang 2019).
"""

from __future__ import annotations

import string
import zlib
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from capbench.errors import CapbenchError

PROBE_TASKS = ("sentlen", "word_content", "bigram_shift")
SPLITS = ("train", "dev", "test")
DEFAULT_SIZES = {"train": 1200, "dev": 300, "test": 600}
SENTLEN_BINS = ((5, 8), (9, 12), (13, 16), (17, 20), (21, 25), (26, 28))
DEFAULT_N_WORDS = 10
DEFAULT_SKIP_TOP = 300
MIN_WORDS, MAX_WORDS = 5, 40
MIN_WORD_CHARS = 3
CONTROL_MODES = ("chosen", "first")
DEFAULT_CONTROL = "first"
PUNCT = string.punctuation + "\u201c\u201d\u2018\u2019\u00ab\u00bb\u2026\u2013\u2014"


def word_type(token: str) -> str:
    return token.strip(PUNCT).lower()


def first_word_type(tokens: Sequence[str]) -> str:
    for token in tokens:
        kind = word_type(token)
        if kind:
            return kind
    return ""


def _code(name: str) -> int:
    return zlib.crc32(name.encode())


def _rng(seed: int, name: str, purpose: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), _code(name), purpose])


@dataclass(frozen=True)
class ProbeTask:
    """Examples of one probing task. `texts` are strings or (text, text_pair) tuples."""

    name: str
    classes: tuple[str, ...]
    texts: list
    labels: np.ndarray
    split: np.ndarray
    control_labels: np.ndarray | None = None
    control_words: tuple[str, ...] | None = None
    seed: int = 0
    fixed_test: bool = False
    meta: dict = field(default_factory=dict, compare=False, repr=False)

    def indices(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.split == split)

    def texts_of(self, split: str) -> list:
        return [self.texts[i] for i in self.indices(split)]

    def labels_of(self, split: str) -> np.ndarray:
        return self.labels[self.indices(split)]

    @property
    def sizes(self) -> dict[str, int]:
        return {s: int(np.sum(self.split == s)) for s in SPLITS}

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def chance(self) -> float:
        """Accuracy of always predicting the most frequent test class."""
        test = self.labels_of("test")
        return float(np.bincount(test).max() / len(test)) if len(test) else 0.0

    def resplit(self, seed: int) -> ProbeTask:
        """Same examples, re-partitioned with the same per-class split sizes (train/dev only if fixed_test).

        With a fixed test split (every generated and transfer task) the dev examples of every seed are
        disjoint from the one test split, so choosing C or a layer on dev never sees test rows.
        `resplit(self.seed)` gives back the generator's own split.
        """
        movable = ("train", "dev") if self.fixed_test else SPLITS
        counts = {
            int(c): {s: int(np.sum((self.labels == c) & (self.split == s))) for s in movable}
            for c in np.unique(self.labels)
        }
        keep = ~np.isin(self.split, movable)
        split = assign_splits(self.labels, counts, _rng(seed, self.name, 1), candidates=~keep)
        split[keep] = self.split[keep]
        return replace(self, split=split, seed=int(seed))

    def control(self) -> ProbeTask:
        """The control task: same sentences and splits, labels randomised per control-word type."""
        if self.control_labels is None:
            raise CapbenchError(f"probe {self.name} has no control task")
        k = int(self.control_labels.max()) + 1
        return replace(
            self,
            name=self.name + "_control",
            classes=tuple(f"c{i}" for i in range(k)),
            labels=self.control_labels,
            control_labels=None,
        )


def assign_splits(
    labels: np.ndarray,
    counts: Mapping[int, Mapping[str, int]],
    rng: np.random.Generator,
    candidates: np.ndarray | None = None,
) -> np.ndarray:
    """Per class, shuffle that class's (candidate) examples and cut them into splits of the given sizes."""
    split = np.full(len(labels), "", dtype=object)
    for c in sorted(counts):
        mask = labels == c
        if candidates is not None:
            mask &= candidates
        perm = rng.permutation(np.flatnonzero(mask))
        start = 0
        for name, n in counts[c].items():
            split[perm[start : start + n]] = name
            start += n
    return split.astype(str)


def per_class_sizes(sizes: Mapping[str, int] | None, n_classes: int, task: str) -> dict[str, int]:
    sizes = dict(DEFAULT_SIZES if sizes is None else sizes)
    unknown = set(sizes) - set(SPLITS)
    if unknown:
        raise CapbenchError(f"probe sizes: unknown split {sorted(unknown)}; use train, dev, test")
    out = {s: int(sizes.get(s, DEFAULT_SIZES[s])) // n_classes for s in SPLITS}
    small = [s for s, n in out.items() if n < 1]
    if small:
        raise CapbenchError(
            f"probe {task}: {', '.join(small)} size below one example per class ({n_classes} classes); raise the sizes"
        )
    return out


def control_mapping(words: Sequence[str], n_classes: int, seed: int) -> dict[str, int]:
    """A random, roughly balanced class per word type (greedy by frequency, random tie-breaks)."""
    counts = Counter(words)
    rng = np.random.default_rng([int(seed), 0xC0])
    kinds = sorted(counts)
    kinds = [kinds[i] for i in rng.permutation(len(kinds))]
    kinds.sort(key=lambda kind: -counts[kind])  # stable: random order among equally frequent types
    load = np.zeros(n_classes, dtype=np.int64)
    mapping: dict[str, int] = {}
    for kind in kinds:
        least = np.flatnonzero(load == load.min())
        label = int(rng.choice(least))
        mapping[kind] = label
        load[label] += counts[kind]
    return mapping


def _assemble(
    name: str,
    classes: Sequence[str],
    texts: list,
    labels: Sequence[int],
    control_words: Sequence[str],
    seed: int,
    per_class: Mapping[str, int],
    meta: dict,
) -> ProbeTask:
    labels = np.asarray(labels, dtype=np.int64)
    mapping = control_mapping(control_words, len(classes), seed)
    control = np.asarray([mapping[w] for w in control_words], dtype=np.int64)
    # the test split is drawn once, from its own stream; seeds re-partition train/dev only (resplit)
    test_counts = {c: {"test": per_class["test"]} for c in range(len(classes))}
    is_test = assign_splits(labels, test_counts, _rng(seed, name, 3)) == "test"
    counts = {c: {s: per_class[s] for s in ("train", "dev")} for c in range(len(classes))}
    split = assign_splits(labels, counts, _rng(seed, name, 1), candidates=~is_test)
    split[is_test] = "test"
    return ProbeTask(
        name=name,
        classes=tuple(classes),
        texts=list(texts),
        labels=labels,
        split=split,
        control_labels=control,
        control_words=tuple(control_words),
        seed=int(seed),
        fixed_test=True,
        meta=meta,
    )


def _too_few(task: str, what: str, have: int, need: int) -> CapbenchError:
    return CapbenchError(
        f"probe {task}: the corpus has {have} sentences for {what}, {need} needed; "
        "use a bigger corpus or smaller probe sizes"
    )


def _check_control(control: str) -> None:
    if control not in CONTROL_MODES:
        raise CapbenchError(f"unknown control {control!r}; known controls: {', '.join(CONTROL_MODES)}")


def chosen_word(
    tokens: Sequence[str], rng: np.random.Generator, exclude: str | None = None
) -> tuple[int, str]:
    """(position, type) of a uniformly drawn token whose type is not empty (nor `exclude`)."""
    positions = [i for i, t in enumerate(tokens) if word_type(t) and word_type(t) != exclude]
    at = int(positions[int(rng.integers(len(positions)))])
    return at, word_type(tokens[at])
