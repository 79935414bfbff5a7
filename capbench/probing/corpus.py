"""Probing corpora: the sentences of a GLUE data source (hub, local hub-schema dir, GLUE TSV dir), or a text
file with one sentence per line.

Both give a plain `list[str]`: whitespace-normalised, empty lines dropped, exact duplicates dropped (first
occurrence kept), in a deterministic order (config name, then split, then row, then text field). GLUE rows are
read by the core loader (`capbench.data.sources.load_split`) over the registered task specs, so every source
`capbench run` accepts is a probing corpus too.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from capbench.data.sources import DataSource, detect_source, load_split, split_file
from capbench.errors import CapbenchError
from capbench.tasks import TaskSpec, all_tasks

DEFAULT_SPLITS = ("train",)


def normalise(text: str) -> str:
    return " ".join(str(text).split())


def dedupe(texts: Iterable[str]) -> list[str]:
    seen: set[str] = set()
    out: list[str] = []
    for text in texts:
        text = normalise(text)
        if text and text not in seen:
            seen.add(text)
            out.append(text)
    return out


def text_fields(config: str, row: dict | None = None) -> tuple[str, ...]:
    """The text columns of a GLUE config (its task's text_fields), else every string column but label/idx."""
    from capbench.tasks import task_by_config

    task = task_by_config(config)
    if task is not None:
        return task.text_fields
    return tuple(k for k, v in (row or {}).items() if isinstance(v, str) and k not in ("label", "idx"))


def as_source(data: DataSource | str | os.PathLike) -> DataSource:
    """A DataSource as it is; a directory path as `--data-dir` would read it (hub schema or glue_data TSV)."""
    return data if isinstance(data, DataSource) else detect_source(data)


def _task_splits(task: TaskSpec, splits: Sequence[str] | None) -> list[str]:
    every = sorted({task.train_split, *task.eval_splits})
    if splits is None:
        return every
    # "validation" also matches mnli's validation_matched / validation_mismatched
    return [s for s in every if any(s == want or s.startswith(want + "_") for want in splits)]


def _has_split(source: DataSource, task: TaskSpec, split: str) -> bool:
    if source.kind == "hub":
        return True
    try:
        return split_file(source, task, split).is_file()
    except CapbenchError:
        return False


def _tasks_by_config() -> dict[str, TaskSpec]:
    return {task.config: task for task in sorted(all_tasks().values(), key=lambda t: t.config)}


def corpus_tasks(
    source: DataSource, configs: Sequence[str] | None, splits: Sequence[str] | None
) -> list[tuple[TaskSpec, list[str]]]:
    """[(task, its splits to read)], sorted by config: the chosen configs, or every one the source holds."""
    by_config = _tasks_by_config()
    present = {
        config: [s for s in _task_splits(task, splits) if _has_split(source, task, s)]
        for config, task in by_config.items()
    }
    available = [config for config, found in present.items() if found]
    chosen = available if configs is None else sorted(dict.fromkeys(configs))
    missing = [c for c in chosen if c not in available]
    if missing:
        raise CapbenchError(
            f"--data-dir {source.describe()}: no {'/'.join(splits or ('any',))} split for {', '.join(missing)} "
            f"(found: {', '.join(available) or 'none'})"
        )
    return [(by_config[config], present[config]) for config in chosen]


def source_sentences(
    data: DataSource | str | os.PathLike,
    configs: Sequence[str] | None = None,
    splits: Sequence[str] | None = DEFAULT_SPLITS,
) -> list[str]:
    """Every text field of the chosen configs and splits of a GLUE source, read by the core loader."""
    source = as_source(data)
    texts: list[str] = []
    for task, task_splits in corpus_tasks(source, configs, splits):
        for split in task_splits:
            rows = load_split(source, task, split)
            for fields in zip(*(rows[f] for f in task.text_fields), strict=True):
                texts.extend(text for text in fields if isinstance(text, str))
    sentences = dedupe(texts)
    if not sentences:
        raise CapbenchError(
            f"--data-dir {source.describe()}: no sentences found ({'/'.join(splits or ('all',))} splits)"
        )
    return sentences


def glue_sentences(
    data_dir: str | Path, configs: Sequence[str] | None = None, splits: Sequence[str] | None = DEFAULT_SPLITS
) -> list[str]:
    """`source_sentences` of a GLUE data directory (hub-schema `<config>/<split>.jsonl` or glue_data TSV)."""
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise CapbenchError(
            f"--data-dir {data_dir}: no such directory; give a local GLUE dir like ../shared/glue"
        )
    return source_sentences(root, configs, splits)


def file_sentences(path: str | Path) -> list[str]:
    """One sentence per line (UTF-8); blank lines and duplicates dropped."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CapbenchError(
            f"--probe-corpus {path}: no such file; give a text file with one sentence per line"
        )
    sentences = dedupe(path.read_text(encoding="utf-8").splitlines())
    if not sentences:
        raise CapbenchError(f"--probe-corpus {path}: the file has no sentences")
    return sentences


def load_corpus(
    source: DataSource | str | Path,
    configs: Sequence[str] | None = None,
    splits: Sequence[str] | None = DEFAULT_SPLITS,
) -> list[str]:
    """A GLUE source or data dir (see `source_sentences`) or a text file (see `file_sentences`)."""
    if isinstance(source, DataSource):
        return source_sentences(source, configs, splits)
    path = Path(source).expanduser()
    if path.is_dir():
        return glue_sentences(path, configs, splits)
    if not path.exists():
        raise CapbenchError(f"probe corpus {source}: no such file or directory")
    return file_sentences(path)


def corpus_digest(sentences: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for sentence in sentences:
        digest.update(sentence.encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()[:16]


def describe(data: DataSource | str | os.PathLike) -> str:
    """Where a corpus or transfer data came from, for a result's protocol: a directory, or the hub."""
    if isinstance(data, DataSource):
        return data.root or data.describe()
    return str(data)


@dataclass(frozen=True)
class Corpus:
    """Probing sentences and where they came from; `digest` names them by content."""

    sentences: tuple[str, ...]
    source: str = "sentences"

    @property
    def digest(self) -> str:
        return corpus_digest(self.sentences)

    def info(self) -> dict:
        return {"source": self.source, "n_sentences": len(self.sentences), "digest": self.digest}


def corpus_of(
    corpus: Corpus | Sequence[str] | DataSource | str | os.PathLike, configs: Sequence[str] | None = None
) -> Corpus:
    """A Corpus from sentences, a text file, a GLUE data directory or a DataSource (`configs` of GLUE)."""
    if isinstance(corpus, Corpus):
        return corpus
    if isinstance(corpus, (DataSource, str, os.PathLike)):
        return Corpus(tuple(load_corpus(corpus, configs)), describe(corpus))
    return Corpus(tuple(corpus))
