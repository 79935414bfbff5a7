"""Probing corpora: the sentences of a local GLUE data dir, or a text file with one sentence per line.

Both give a plain `list[str]`: whitespace-normalised, empty lines dropped, exact duplicates dropped (first
occurrence kept), in a deterministic order (config name, then split, then row, then text field).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

from capbench.errors import CapbenchError

NON_TEXT_FIELDS = ("label", "idx")
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


def read_jsonl(path: Path) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise CapbenchError(
                    f"{path}:{number}: not valid JSON ({exc.msg}); expected one object per line"
                ) from exc
    return rows


def text_fields(config: str, row: dict) -> tuple[str, ...]:
    """The text columns of a GLUE config (its task's text_fields), else every string column but label/idx."""
    from capbench.tasks import task_by_config

    task = task_by_config(config)
    if task is not None:
        return task.text_fields
    return tuple(k for k, v in row.items() if isinstance(v, str) and k not in NON_TEXT_FIELDS)


def glue_configs(data_dir: Path) -> list[str]:
    """Config sub-directories of a local GLUE data dir that hold jsonl files, sorted by name."""
    return sorted(p.name for p in Path(data_dir).iterdir() if p.is_dir() and any(p.glob("*.jsonl")))


def split_files(config_dir: Path, splits: Sequence[str] | None) -> list[Path]:
    files = sorted(config_dir.glob("*.jsonl"))
    if splits is None:
        return files
    # "validation" also matches mnli's validation_matched / validation_mismatched
    return [f for f in files if any(f.stem == s or f.stem.startswith(s + "_") for s in splits)]


def glue_sentences(
    data_dir: str | Path, configs: Sequence[str] | None = None, splits: Sequence[str] | None = DEFAULT_SPLITS
) -> list[str]:
    """All text fields of the chosen configs and splits of a local GLUE jsonl dir (`<dir>/<config>/<split>.jsonl`)."""
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise CapbenchError(
            f"--data-dir {data_dir}: no such directory; give a local GLUE dir like ../shared/glue"
        )
    available = glue_configs(root)
    chosen = available if configs is None else list(configs)
    missing = [c for c in chosen if c not in available]
    if missing:
        raise CapbenchError(
            f"--data-dir {data_dir}: no jsonl files for {', '.join(missing)} (found: {', '.join(available) or 'none'})"
        )
    texts: list[str] = []
    for config in sorted(chosen):
        for path in split_files(root / config, splits):
            for row in read_jsonl(path):
                texts.extend(row[f] for f in text_fields(config, row) if isinstance(row.get(f), str))
    sentences = dedupe(texts)
    if not sentences:
        raise CapbenchError(
            f"--data-dir {data_dir}: no sentences found in {', '.join(chosen)} ({splits or 'all'} splits)"
        )
    return sentences


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
    source: str | Path, configs: Sequence[str] | None = None, splits: Sequence[str] | None = DEFAULT_SPLITS
) -> list[str]:
    """A GLUE data dir (see `glue_sentences`) or a text file (see `file_sentences`)."""
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
