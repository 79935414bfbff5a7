"""What a cell's model *is*, independent of the name it was given: file digests or a pinned hub revision.

A cell's digest covers this identity, so overwriting the weights in `--model DIR` (or the hub moving a
repo's main branch) turns every cell of that model back into "to run", while the same weights in another
folder or checkout resume the same cells. Three parts are hashed for a local directory:

* ``weights_sha256``: the weight files transformers loads (``*.safetensors`` where any exist, else
  ``*.bin``), with their sharding index, by name and content;
* ``config_sha256``: config.json as canonical JSON, without the bookkeeping keys transformers rewrites on
  every save (``transformers_version``, ``_name_or_path``);
* ``tokenizer_sha256``: the tokenizer files present (vocab, tokenizer.json, special tokens, merges, ...).

A hub id is named by its repository and the commit its revision resolves to (the Hub API, or the local
Hugging Face cache when offline).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from capbench.errors import CapbenchError

CHUNK = 1 << 20
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
)
CONFIG_BOOKKEEPING = ("transformers_version", "_name_or_path")

_CACHE: dict = {}


def _files_sha256(paths: list[Path], root: Path) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(f"{path.relative_to(root).as_posix()}\n".encode())
        with open(path, "rb") as handle:
            while chunk := handle.read(CHUNK):
                digest.update(chunk)
    return digest.hexdigest()[:20]


def weights_sha256(directory: str | Path) -> str | None:
    """sha256 (20 hex digits) of a saved model's weight files (``weight_files``); None when it has none."""
    directory = Path(directory)
    files = weight_files(directory)
    return _files_sha256(files, directory) if files else None


def weight_files(directory: Path) -> list[Path]:
    """The files `from_pretrained` reads weights from, safetensors first (as capbench loads them)."""
    safetensors = sorted(directory.glob("*.safetensors")) + sorted(directory.glob("*.safetensors.index.json"))
    if any(p.suffix == ".safetensors" for p in safetensors):
        return safetensors
    return sorted(directory.glob("*.bin")) + sorted(directory.glob("*.bin.index.json"))


def _config_sha256(directory: Path) -> str:
    config = json.loads((directory / "config.json").read_text())
    for key in CONFIG_BOOKKEEPING:
        config.pop(key, None)
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:20]


def local_identity(directory: str | Path) -> dict:
    """{"source": "local", "weights_sha256", "config_sha256", "tokenizer_sha256"} of a saved model directory.

    Raises CapbenchError when the directory holds no weight files. Digests are cached per process by
    the files' (size, mtime), so a grid hashes each model once.
    """
    directory = Path(directory)
    weights = weight_files(directory)
    if not weights:
        raise CapbenchError(
            f"--model {directory}: no weight files (*.safetensors or *.bin); save the model with save_pretrained"
        )
    tokenizer = sorted(directory / name for name in TOKENIZER_FILES if (directory / name).is_file())
    every = [directory / "config.json", *weights, *tokenizer]
    stamp = tuple((str(p), os.stat(p).st_size, os.stat(p).st_mtime_ns) for p in every)
    if stamp not in _CACHE:
        _CACHE[stamp] = {
            "source": "local",
            "weights_sha256": _files_sha256(weights, directory),
            "config_sha256": _config_sha256(directory),
            "tokenizer_sha256": _files_sha256(tokenizer, directory) if tokenizer else None,
        }
    return dict(_CACHE[stamp])


def hub_revision(repo_id: str, revision: str = "main") -> str:
    """The commit `revision` of `repo_id` resolves to: from the Hub API, else from the local HF cache."""
    try:
        from huggingface_hub import HfApi

        sha = HfApi().model_info(repo_id, revision=revision).sha
        if sha:
            return sha
    except Exception:  # offline, rate-limited, private: fall back to what is cached
        pass
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    except Exception:
        cached = None
    if isinstance(cached, str):
        return Path(cached).parent.name  # .../snapshots/<commit>/config.json
    raise CapbenchError(
        f"--model {repo_id}: cannot resolve its hub revision (no network and not in the Hugging Face cache); "
        "download it once, or pass a local directory"
    )


def model_identity(name_or_path: str) -> dict:
    """The identity of `--model` as the cell digest names it (see the module docstring)."""
    from capbench.models import resolve_model_path

    resolved = resolve_model_path(name_or_path)
    if Path(resolved).is_dir():
        return local_identity(resolved)
    return {"source": "hub", "repo_id": resolved, "revision": hub_revision(resolved)}
