"""Probing tasks generated from a corpus (SentEval-like, no parser, no download), each with a control task.

Every generator is deterministic from its seed, balanced (the same number of examples per class in every
split) and split into train/dev/test with no sentence in two splits. Words are whitespace tokens; a word
*type* is a token with surrounding punctuation stripped, lower-cased.

- ``sentlen``: which length bin (in words) the sentence falls in; bins as SentEval (5-8, 9-12, ..., 26-28).
- ``word_content``: which of N mid-frequency words the sentence contains; every sentence contains exactly
  one of the N word types. The N words are the first N (by document frequency rank, after skipping the
  ``skip_top`` most frequent types, at most a fifth of the vocabulary) that each have enough sentences.
- ``bigram_shift``: whether two adjacent words were swapped. Half of the sentences get one swap of two
  adjacent, alphabetic, different words at a random position >= 1 (so the first word never moves and a
  capital first letter never gives the answer away); both classes are re-joined with single spaces.

Control tasks (Hewitt & Liang 2019). H&L give every word *type* a random label. These tasks are
sentence-level, so each example has one *control word* and its control label is the random class of that
word's type: a consistent function of a word type in the sentence. Types are assigned greedily, most
frequent first, to the class with the fewest examples so far (ties broken at random), so control labels are
roughly balanced. Control examples are the task's own sentences and splits (same features, no extra forward
pass), so selectivity = task accuracy - control accuracy. Which word is the control word (``control=``):

- ``"chosen"`` (default): the sentence's chosen word, drawn by the generator from its own random stream
  (so texts and task labels do not depend on it): for ``bigram_shift`` the left word of the chosen
  adjacent pair (the pair that is swapped in shifted sentences; a pair is drawn for original sentences
  too), for ``sentlen`` a random word, for ``word_content`` a random word other than the target (the target
  itself would make the control a relabelling of the task). The probe is not told which word it is, so it
  can only memorise word types that are chosen often enough to matter: control accuracy sits a little
  above chance.
- ``"first"``: the sentence's first word (the target word of ``word_content`` is never the first word and
  ``bigram_shift`` never moves the first word, so it carries no task label). The word is identifiable from
  the input, so this control measures how much a probe gains by memorising first-word identity: a stricter
  bar, high on corpora whose sentences mostly start with a few words ("what", "how", "the").
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
DEFAULT_CONTROL = "chosen"
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
    counts = {c: dict(per_class) for c in range(len(classes))}
    split = assign_splits(labels, counts, _rng(seed, name, 1))
    return ProbeTask(
        name=name,
        classes=tuple(classes),
        texts=list(texts),
        labels=labels,
        split=split,
        control_labels=control,
        control_words=tuple(control_words),
        seed=int(seed),
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


def make_sentlen(
    sentences: Sequence[str],
    seed: int = 0,
    sizes: Mapping[str, int] | None = None,
    bins: Sequence[tuple[int, int]] = SENTLEN_BINS,
    control: str = DEFAULT_CONTROL,
) -> ProbeTask:
    _check_control(control)
    per_class = per_class_sizes(sizes, len(bins), "sentlen")
    need = sum(per_class.values())
    pools: list[list[str]] = [[] for _ in bins]
    for sentence in sentences:
        tokens = sentence.split()
        if not first_word_type(tokens):
            continue
        for b, (lo, hi) in enumerate(bins):
            if lo <= len(tokens) <= hi:
                pools[b].append(" ".join(tokens))
                break
    rng = _rng(seed, "sentlen", 0)
    texts: list[str] = []
    labels: list[int] = []
    for b, pool in enumerate(pools):
        if len(pool) < need:
            raise _too_few("sentlen", f"length bin {bins[b][0]}-{bins[b][1]}", len(pool), need)
        pick = np.sort(rng.choice(len(pool), need, replace=False))
        texts += [pool[i] for i in pick]
        labels += [b] * need
    control_rng = _rng(seed, "sentlen", 2)
    if control == "first":
        control_words = [first_word_type(t.split()) for t in texts]
    else:
        control_words = [chosen_word(t.split(), control_rng)[1] for t in texts]
    classes = [f"{lo}-{hi}" for lo, hi in bins]
    meta = {"bins": list(bins), "control": control}
    return _assemble("sentlen", classes, texts, labels, control_words, seed, per_class, meta)


def make_word_content(
    sentences: Sequence[str],
    seed: int = 0,
    sizes: Mapping[str, int] | None = None,
    n_words: int = DEFAULT_N_WORDS,
    skip_top: int = DEFAULT_SKIP_TOP,
    min_words: int = MIN_WORDS,
    max_words: int = MAX_WORDS,
    control: str = DEFAULT_CONTROL,
) -> ProbeTask:
    _check_control(control)
    if n_words < 2:
        raise CapbenchError("probe word_content: needs at least 2 words")
    per_class = per_class_sizes(sizes, n_words, "word_content")
    need = sum(per_class.values())
    pool: list[str] = []
    firsts: list[str] = []
    postings: dict[str, list[int]] = {}
    for sentence in sentences:
        tokens = sentence.split()
        first = first_word_type(tokens)
        if not (min_words <= len(tokens) <= max_words) or not first:
            continue
        index = len(pool)
        pool.append(" ".join(tokens))
        firsts.append(first)
        kinds = {word_type(t) for t in tokens}
        for kind in kinds:
            if kind.isalpha() and len(kind) >= MIN_WORD_CHARS:
                postings.setdefault(kind, []).append(index)
    ranked = sorted(postings, key=lambda kind: (-len(postings[kind]), kind))
    start = min(skip_top, len(ranked) // 5)
    chosen = ranked[start : start + n_words]
    following = start + n_words
    if len(chosen) < n_words:
        raise CapbenchError(f"probe word_content: the corpus has {len(ranked)} word types, {n_words} needed")
    while True:
        hits = Counter(i for w in chosen for i in postings[w])
        # exactly one target type, which is not the first word (so the first word never gives the label away)
        usable = {w: [i for i in postings[w] if hits[i] == 1 and firsts[i] != w] for w in chosen}
        short = [w for w in chosen if len(usable[w]) < need]
        if not short:
            break
        for w in short:
            if following >= len(ranked) or len(postings[ranked[following]]) < need:
                best = max(len(usable[w]) for w in short)
                raise _too_few("word_content", f"{n_words} mid-frequency words (best word)", best, need)
            chosen[chosen.index(w)] = ranked[following]
            following += 1
    chosen = sorted(chosen)
    rng = _rng(seed, "word_content", 0)
    control_rng = _rng(seed, "word_content", 2)
    texts: list[str] = []
    labels: list[int] = []
    control_words: list[str] = []
    for label, word in enumerate(chosen):
        candidates = usable[word]
        pick = np.sort(rng.choice(len(candidates), need, replace=False))
        for j in pick:
            i = candidates[j]
            texts.append(pool[i])
            labels.append(label)
            if control == "first":
                control_words.append(firsts[i])
            else:  # the first word is never the target, so a non-target word always exists
                control_words.append(chosen_word(pool[i].split(), control_rng, exclude=word)[1])
    meta = {"words": chosen, "ranks": [ranked.index(w) for w in chosen], "control": control}
    return _assemble("word_content", chosen, texts, labels, control_words, seed, per_class, meta)


def swap_positions(tokens: Sequence[str]) -> list[int]:
    """Positions i >= 1 where tokens i and i+1 are alphabetic words that differ (case-insensitively)."""
    return [
        i
        for i in range(1, len(tokens) - 1)
        if tokens[i].isalpha() and tokens[i + 1].isalpha() and tokens[i].lower() != tokens[i + 1].lower()
    ]


def make_bigram_shift(
    sentences: Sequence[str],
    seed: int = 0,
    sizes: Mapping[str, int] | None = None,
    min_words: int = MIN_WORDS,
    max_words: int = MAX_WORDS,
    control: str = DEFAULT_CONTROL,
) -> ProbeTask:
    _check_control(control)
    per_class = per_class_sizes(sizes, 2, "bigram_shift")
    need = sum(per_class.values())
    pool: list[list[str]] = []
    for sentence in sentences:
        tokens = sentence.split()
        if min_words <= len(tokens) <= max_words and first_word_type(tokens) and swap_positions(tokens):
            pool.append(tokens)
    if len(pool) < 2 * need:
        raise _too_few("bigram_shift", "swappable sentences", len(pool), 2 * need)
    rng = _rng(seed, "bigram_shift", 0)
    control_rng = _rng(seed, "bigram_shift", 2)
    pick = np.sort(rng.choice(len(pool), 2 * need, replace=False))
    shifted = np.zeros(2 * need, dtype=bool)
    shifted[rng.permutation(2 * need)[:need]] = True
    texts, labels, control_words, sources, swap_at, pair_at = [], [], [], [], [], []
    for j, i in enumerate(pick):
        tokens = list(pool[i])
        sources.append(" ".join(tokens))
        if shifted[j]:
            at = int(rng.choice(swap_positions(tokens)))
        else:  # an original sentence's chosen (unswapped) pair, from the control stream: texts never depend on it
            at = int(control_rng.choice(swap_positions(tokens)))
        pair_at.append(at)
        control_words.append(first_word_type(tokens) if control == "first" else word_type(tokens[at]))
        if shifted[j]:
            tokens[at], tokens[at + 1] = tokens[at + 1], tokens[at]
        texts.append(" ".join(tokens))
        labels.append(int(shifted[j]))
        swap_at.append(at if shifted[j] else -1)
    meta = {"source": sources, "swap_at": swap_at, "pair_at": pair_at, "control": control}
    return _assemble(
        "bigram_shift", ("original", "shifted"), texts, labels, control_words, seed, per_class, meta
    )


GENERATORS = {"sentlen": make_sentlen, "word_content": make_word_content, "bigram_shift": make_bigram_shift}


def make_task(
    name: str, sentences: Sequence[str], seed: int = 0, sizes: Mapping[str, int] | None = None, **options
):
    """Generate probing task `name` (one of PROBE_TASKS) from corpus sentences.

    Options: `control` ("chosen" or "first", every task), `n_words` and `skip_top` (word_content), `bins`
    (sentlen), `min_words` and `max_words` (word_content, bigram_shift).
    """
    if name not in GENERATORS:
        raise CapbenchError(f"unknown probe {name!r}; known probes: {', '.join(PROBE_TASKS)}")
    return GENERATORS[name](sentences, seed=seed, sizes=sizes, **options)
