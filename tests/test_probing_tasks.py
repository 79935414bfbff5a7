"""Probing corpora and task generators: deterministic, balanced, honest swaps, consistent controls."""

import json
import random
from collections import Counter

import numpy as np
import pytest

from capbench.errors import CapbenchError
from capbench.probing.corpus import file_sentences, glue_sentences, load_corpus
from capbench.probing.tasks import (
    CONTROL_MODES,
    PROBE_TASKS,
    SENTLEN_BINS,
    SPLITS,
    first_word_type,
    make_task,
    word_type,
)
from capbench.probing.transfer import make_transfer_task
from capbench.testing import TINY_WORDS

SIZES = {"train": 60, "dev": 30, "test": 30}
OPTIONS = {"word_content": {"n_words": 3}}


def tiny_corpus(n: int = 900, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(TINY_WORDS) for _ in range(rng.randint(5, 28))) for _ in range(n)]


def task(name, seed=0, corpus=None):
    return make_task(name, corpus or tiny_corpus(), seed=seed, sizes=SIZES, **OPTIONS.get(name, {}))


@pytest.mark.parametrize("name", PROBE_TASKS)
def test_generators_are_deterministic_and_seed_dependent(name):
    a, b, c = task(name), task(name), task(name, seed=1)
    assert a.texts == b.texts
    assert np.array_equal(a.labels, b.labels) and np.array_equal(a.split, b.split)
    assert np.array_equal(a.control_labels, b.control_labels)
    assert a.texts != c.texts or not np.array_equal(a.split, c.split)


@pytest.mark.parametrize("name", PROBE_TASKS)
def test_generators_are_balanced_split_and_disjoint(name):
    t = task(name)
    k = t.n_classes
    for split in SPLITS:
        counts = np.bincount(t.labels_of(split), minlength=k)
        assert (counts == SIZES[split] // k).all(), (split, counts)
    seen = [set(t.texts_of(s)) for s in SPLITS]
    assert not (seen[0] & seen[1] or seen[0] & seen[2] or seen[1] & seen[2])


def test_sentlen_labels_are_length_bins():
    t = task("sentlen")
    for text, label in zip(t.texts, t.labels, strict=True):
        lo, hi = SENTLEN_BINS[label]
        assert lo <= len(text.split()) <= hi


def test_word_content_sentences_contain_exactly_one_target():
    t = task("word_content")
    words = set(t.classes)
    assert len(words) == 3
    for text, label in zip(t.texts, t.labels, strict=True):
        present = {word_type(tok) for tok in text.split()} & words
        assert present == {t.classes[label]}
        assert first_word_type(text.split()) != t.classes[label]


def test_bigram_shift_really_swaps_adjacent_words():
    t = task("bigram_shift")
    sources, swap_at = t.meta["source"], t.meta["swap_at"]
    assert sum(t.labels) == len(t.labels) // 2
    for text, label, source, at in zip(t.texts, t.labels, sources, swap_at, strict=True):
        tokens, original = text.split(), source.split()
        if label == 0:
            assert text == source and at == -1
            continue
        assert at >= 1 and tokens[at].lower() != tokens[at + 1].lower()
        expected = list(original)
        expected[at], expected[at + 1] = expected[at + 1], expected[at]
        assert tokens == expected and tokens != original
        assert Counter(tokens) == Counter(original)
        diff = [i for i, (x, y) in enumerate(zip(tokens, original, strict=True)) if x != y]
        assert diff == [at, at + 1]


@pytest.mark.parametrize("control", CONTROL_MODES)
@pytest.mark.parametrize("name", PROBE_TASKS)
def test_control_labels_are_a_consistent_function_of_word_type(name, control):
    t = make_task(name, tiny_corpus(), sizes=SIZES, control=control, **OPTIONS.get(name, {}))
    assert t.texts == task(name).texts  # the control never changes the task's sentences
    mapping: dict = {}
    for i, (text, word, label) in enumerate(zip(t.texts, t.control_words, t.control_labels, strict=True)):
        types = [word_type(tok) for tok in text.split()]
        assert word in types
        if control == "first":
            assert word == first_word_type(text.split())
        if name == "word_content":
            assert word != t.classes[t.labels[i]]  # the target word never decides the control label
        if name == "bigram_shift" and control == "chosen":
            assert word == word_type(t.meta["source"][i].split()[t.meta["pair_at"][i]])
        assert mapping.setdefault(word, int(label)) == int(label)
    assert len(set(mapping.values())) == t.n_classes  # every class is used
    counts = np.bincount(t.control_labels, minlength=t.n_classes)
    assert counts.max() - counts.min() <= max(Counter(t.control_words).values())  # greedy balance
    ctl = t.control()
    assert ctl.name == f"{name}_control" and np.array_equal(ctl.split, t.split)
    assert ctl.texts == t.texts and np.array_equal(ctl.labels, t.control_labels)


def test_resplit_keeps_class_sizes_and_seed_gives_back_original():
    t = task("sentlen")
    assert np.array_equal(t.resplit(t.seed).split, t.split)
    other = t.resplit(5)
    assert not np.array_equal(other.split, t.split)
    for split in SPLITS:
        assert np.array_equal(np.bincount(other.labels_of(split)), np.bincount(t.labels_of(split)))


@pytest.mark.parametrize("name", PROBE_TASKS)
def test_test_split_is_fixed_so_no_seed_chooses_on_a_test_row(name):
    t = task(name)
    test = set(t.indices("test"))
    for seed in (0, 1, 2, 7):
        other = t.resplit(seed)
        assert set(other.indices("test")) == test  # seeds re-partition train/dev only
        assert not set(other.indices("dev")) & test and not set(other.indices("train")) & test


def test_default_control_is_learnable_by_word_identity():
    from capbench.probing.tasks import DEFAULT_CONTROL

    t = task("bigram_shift")
    assert DEFAULT_CONTROL == "first" and t.meta["control"] == "first"
    # a function of the first word type: every sentence starting with the same word has the same label
    by_word: dict = {}
    for text, label in zip(t.texts, t.control_labels, strict=True):
        assert by_word.setdefault(first_word_type(text.split()), label) == label


def test_too_small_corpus_and_unknown_probe_are_one_line_errors():
    with pytest.raises(CapbenchError, match="known probes: sentlen, word_content, bigram_shift"):
        make_task("parse_depth", tiny_corpus())
    with pytest.raises(CapbenchError, match="known controls: chosen, first"):
        make_task("sentlen", tiny_corpus(), control="last")
    with pytest.raises(CapbenchError, match="sentlen: the corpus has"):
        make_task("sentlen", tiny_corpus(20), sizes=SIZES)


def test_corpus_from_glue_dir_and_text_file(tmp_path):
    (tmp_path / "glue" / "rte").mkdir(parents=True)
    (tmp_path / "glue" / "cola").mkdir()
    rows = [
        {"sentence1": "b  one", "sentence2": "two", "label": 0, "idx": 0},
        {"sentence1": "two", "sentence2": "x", "label": 1, "idx": 1},
    ]
    (tmp_path / "glue" / "rte" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "glue" / "cola" / "train.jsonl").write_text(
        json.dumps({"sentence": "a cola", "label": 1, "idx": 0}) + "\n"
    )
    (tmp_path / "glue" / "cola" / "validation.jsonl").write_text(
        json.dumps({"sentence": "val", "label": 1, "idx": 0}) + "\n"
    )
    assert glue_sentences(tmp_path / "glue") == ["a cola", "b one", "two", "x"]
    assert glue_sentences(tmp_path / "glue", configs=["rte"]) == ["b one", "two", "x"]
    assert "val" in glue_sentences(tmp_path / "glue", splits=None)
    text = tmp_path / "corpus.txt"
    text.write_text("one  two\n\nthree\none two\n")
    assert file_sentences(text) == load_corpus(text) == ["one two", "three"]
    with pytest.raises(CapbenchError, match="no such file"):
        load_corpus(tmp_path / "missing.txt")
    with pytest.raises(CapbenchError, match="no train split for sst2"):
        glue_sentences(tmp_path / "glue", configs=["sst2"])


def test_transfer_task_is_balanced_with_fixed_test(tiny_glue):
    t = make_transfer_task("rte", tiny_glue, sizes={"train": 20, "dev": 10, "test": 16})
    assert isinstance(t.texts[0], tuple) and len(t.texts[0]) == 2
    for split, n in (("train", 10), ("dev", 5), ("test", 8)):
        assert (np.bincount(t.labels_of(split)) == n).all()
    other = t.resplit(3)
    assert np.array_equal(other.indices("test"), t.indices("test"))
    assert not np.array_equal(other.indices("train"), t.indices("train"))
    single = make_transfer_task("sst2", tiny_glue, sizes={"train": 20, "dev": 10, "test": 16})
    assert isinstance(single.texts[0], str)
    with pytest.raises(CapbenchError, match="regression"):
        make_transfer_task("stsb", tiny_glue)
