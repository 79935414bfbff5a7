"""Probing tasks generated from a corpus (SentEval-like, no parser, no download), each with a control task.

Every generator is deterministic from its seed, balanced (the same number of examples per class in every
split) and split into train/dev/test with no sentence in two splits. Words are whitespace tokens; a word
*type* is a token with surrounding punctuation stripped, lower-cased.

The generators (``sentlen``, ``word_content``, ``bigram_shift``) live in `probing.generators`, the task
type, balanced splits and control labels in `probing.probe_task`; this module is their one entry point,
`make_task`, and re-exports both.

Control tasks (Hewitt & Liang 2019). H&L give every word *type* a random label, so a probe can learn the
control only by memorising word identity; selectivity = task accuracy - control accuracy at the same probe
capacity (the task's C). These tasks are sentence-level, so each example has one *control word* and its
control label is the random class of that word's type. Types are assigned greedily, most frequent first, to
the class with the fewest examples so far (ties broken at random), so control labels are roughly balanced.
Control examples are the task's own sentences and splits (same features, no extra forward pass). Which word
is the control word (``control=``):

- ``"first"`` (default): the sentence's first word (the target word of ``word_content`` is never the first
  word and ``bigram_shift`` never moves the first word, so it carries no task label). First words recur
  (``what``, ``how``, ``the``...), so the control is learnable by word identity as H&L require: on MiniLM's
  bigram_shift, control train accuracy 0.78-0.89 and test 0.61-0.73, with 83% of test control words seen
  in train (docs/probes.md).
- ``"chosen"``: a word the generator draws from its own random stream (for ``bigram_shift`` the left word of
  the chosen adjacent pair, for ``sentlen`` a random word, for ``word_content`` a random non-target word).
  The probe cannot locate it and 40% of test control words never occur in train, so this control is not
  learnable (test accuracy chance + 0.01-0.06): kept to reproduce older results, not as a control.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from capbench.errors import CapbenchError
from capbench.probing.generators import (
    GENERATORS,
    make_bigram_shift,
    make_sentlen,
    make_word_content,
    swap_positions,
)
from capbench.probing.probe_task import (
    CONTROL_MODES,
    DEFAULT_CONTROL,
    DEFAULT_N_WORDS,
    DEFAULT_SIZES,
    DEFAULT_SKIP_TOP,
    MAX_WORDS,
    MIN_WORD_CHARS,
    MIN_WORDS,
    PROBE_TASKS,
    PUNCT,
    SENTLEN_BINS,
    SPLITS,
    ProbeTask,
    _rng,
    assign_splits,
    chosen_word,
    control_mapping,
    first_word_type,
    per_class_sizes,
    word_type,
)

__all__ = [
    "CONTROL_MODES",
    "DEFAULT_CONTROL",
    "DEFAULT_N_WORDS",
    "DEFAULT_SIZES",
    "DEFAULT_SKIP_TOP",
    "GENERATORS",
    "MAX_WORDS",
    "MIN_WORDS",
    "MIN_WORD_CHARS",
    "PROBE_TASKS",
    "PUNCT",
    "ProbeTask",
    "SENTLEN_BINS",
    "SPLITS",
    "_rng",
    "assign_splits",
    "chosen_word",
    "control_mapping",
    "first_word_type",
    "make_bigram_shift",
    "make_sentlen",
    "make_task",
    "make_word_content",
    "per_class_sizes",
    "swap_positions",
    "word_type",
]


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
