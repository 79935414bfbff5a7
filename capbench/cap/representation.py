"""Sentence representations for CAP: pooler output or masked mean of the last layer, L2-normalised.

As in the authors' ``encode_example`` / ``calculate_contrastive_loss``: ``alignrep == 'cls'`` takes the
BERT pooler output ([CLS] -> dense -> tanh, before the classifier's dropout) and ``'mean-pooling'``
takes ``sum(h * mask) / sum(mask)`` over the last layer; both are normalised with
``F.normalize(p=2, dim=-1)``. There is no projection head.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor

from capbench.errors import CapbenchError

KINDS = ("pooler", "mean", "cls")
MODEL_INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids", "position_ids")


def base_encoder(model: torch.nn.Module) -> torch.nn.Module:
    """The bare encoder of a HF model with a head (``model.bert`` for BERT), or the model itself."""
    return getattr(model, "base_model", model)


def has_pooler(model: torch.nn.Module) -> bool:
    return getattr(base_encoder(model), "pooler", None) is not None


def resolve_kind(model: torch.nn.Module, kind: str) -> str:
    """The representation actually used for ``model``: "pooler" falls back to "cls" without a pooler.

    The fallback follows the authors' pooler-less models (``TeacherBertForQuestionAnswering``,
    ``PruneBertForQuestionAnswering``), where ``alignrep == 'cls'`` takes the raw last-layer [CLS] state.
    """
    if kind not in KINDS:
        raise CapbenchError(f"CAP representation must be one of {list(KINDS)}, got {kind!r}")
    if kind == "pooler" and not has_pooler(model):
        warnings.warn(
            f"{type(model).__name__} has no pooler: CAP uses the last-layer [CLS] state instead "
            "(set representation=mean to avoid this)",
            stacklevel=2,
        )
        return "cls"
    return kind


def last_hidden_state(outputs) -> Tensor:
    hidden_states = getattr(outputs, "hidden_states", None)
    if hidden_states is not None:
        return hidden_states[-1]
    last = getattr(outputs, "last_hidden_state", None)
    if last is not None:
        return last
    raise CapbenchError("CAP needs the last hidden layer: call the model with output_hidden_states=True")


def represent(model: torch.nn.Module, outputs, attention_mask: Tensor | None, kind: str = "pooler") -> Tensor:
    """[B, H] L2-normalised representation of a batch from the model's forward ``outputs``.

    ``kind="pooler"`` applies ``model.bert.pooler`` to ``outputs.hidden_states[-1]`` (so the pooler of
    the model being pruned receives gradient), falling back to "cls" for a pooler-less model.
    """
    hidden = last_hidden_state(outputs)
    if kind == "pooler":
        pooler = getattr(base_encoder(model), "pooler", None)
        rep = pooler(hidden) if pooler is not None else hidden[:, 0]
    elif kind == "cls":
        rep = hidden[:, 0]
    elif kind == "mean":
        if attention_mask is None:
            rep = hidden.mean(dim=1)
        else:
            mask = attention_mask.to(hidden.dtype).unsqueeze(-1)
            rep = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)
    else:
        raise CapbenchError(f"CAP representation must be one of {list(KINDS)}, got {kind!r}")
    return F.normalize(rep.float(), p=2, dim=-1)


def model_inputs(batch: dict, device: torch.device | None = None) -> dict:
    """The encoder inputs of a batch (drops ``idx``, ``labels`` and anything else)."""
    inputs = {k: batch[k] for k in MODEL_INPUT_KEYS if batch.get(k) is not None}
    if device is not None:
        inputs = {k: v.to(device) for k, v in inputs.items()}
    return inputs
