"""The generated probing tasks, each deterministic from its seed, balanced and split (see probing.tasks).

- ``sentlen``: which length bin (in words) the sentence falls in; bins as SentEval (5-8, 9-12, ..., 26-28).
- ``word_content``: which of N mid-frequency words the sentence contains; every sentence contains exactly
  one of the N word types. The N words are the first N (by document frequency rank, after skipping the
  ``skip_top`` most frequent types, at most a fifth of the vocabulary) that each have enough sentences.
- ``bigram_shift``: whether two adjacent words were swapped. Half of the sentences get one swap of two
  adjacent, alphabetic, different words at a random position >= 1 (so the first word never moves and a
  capital first letter never gives the answer away); both classes are re-joined with single spaces.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np

from capbench.errors import CapbenchError
from capbench.probing.probe_task import (
    DEFAULT_CONTROL,
    DEFAULT_N_WORDS,
    DEFAULT_SKIP_TOP,
    MAX_WORDS,
    MIN_WORD_CHARS,
    MIN_WORDS,
    SENTLEN_BINS,
    ProbeTask,
    _assemble,
    _check_control,
    _rng,
    _too_few,
    chosen_word,
    first_word_type,
    per_class_sizes,
    word_type,
)


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


def _word_pool(
    sentences: Sequence[str], min_words: int, max_words: int
) -> tuple[list[str], list[str], dict[str, list[int]]]:
    """(usable sentences, their first word types, word type -> indices of the sentences containing it)."""
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
    return pool, firsts, postings


def _choose_words(
    ranked: list[str], postings: dict, firsts: list[str], n_words: int, skip_top: int, need: int
) -> tuple[list[str], dict[str, list[int]]]:
    """The N target words (sorted) and, per word, the sentences usable for it; a word with too few is
    replaced by the next one down the frequency ranking."""
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
            return sorted(chosen), usable
        for w in short:
            if following >= len(ranked) or len(postings[ranked[following]]) < need:
                best = max(len(usable[w]) for w in short)
                raise _too_few("word_content", f"{n_words} mid-frequency words (best word)", best, need)
            chosen[chosen.index(w)] = ranked[following]
            following += 1


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
    pool, firsts, postings = _word_pool(sentences, min_words, max_words)
    ranked = sorted(postings, key=lambda kind: (-len(postings[kind]), kind))
    chosen, usable = _choose_words(ranked, postings, firsts, n_words, skip_top, need)
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
