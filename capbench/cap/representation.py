"""Sentence representations for CAP: what the classifier's final projection reads, or a masked mean of the
last layer, L2-normalised.

As in the authors' ``encode_example`` / ``calculate_contrastive_loss``: ``alignrep == 'cls'`` takes the
BERT pooler output ([CLS] -> dense -> tanh) and ``'mean-pooling'`` takes ``sum(h * mask) / sum(mask)``
over the last layer; both are normalised with ``F.normalize(p=2, dim=-1)``. There is no projection head.

Dropout. The authors' training forward applies the classifier's dropout to the pooled output *before*
the contrastive terms (alibaba/AliceMind ``ContrastivePruning/UnstructuredPruning/emmental/
modeling_bert_masked.py`` line 751, ``pooled_output = self.dropout(pooled_output)``, then lines 768-770
pass that ``pooled_output`` to ``calculate_contrastive_loss``; the structured ``model/PruneBert.py``
line 116, then lines 157-159, does the same), so the anchor and the detached current-batch
candidates carry dropout, while bank rows are encoded by ``encode_example`` (lines 743-749, returning before
the dropout) without it; ``mean-pooling`` recomputes from the last layer and has none. capbench follows
this by default (``anchor_dropout``: ``represent(..., dropout=p)`` with the classifier's dropout
probability, :func:`classifier_dropout`, in train mode only); banks are encoded in eval mode. One
difference: the dropout mask here is drawn apart from the one inside the model's own classifier forward.

``kind="pooler"`` generalises the first to every family in ``capbench.layout``: the vector the final
classifier projection reads (BERT's pooler output; RoBERTa's and ELECTRA's classification head after its
dense layer and activation; DistilBERT's after ``pre_classifier`` and ReLU).
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor

from capbench import layout
from capbench.errors import CapbenchError

KINDS = ("pooler", "mean", "cls")
MODEL_INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids", "position_ids")


def base_encoder(model: torch.nn.Module) -> torch.nn.Module:
    """The bare encoder of a HF model with a head (``model.bert`` for BERT), or the model itself."""
    return layout.base_model(model)


def _sentence_head(model: torch.nn.Module, hidden: Tensor) -> Tensor | None:
    """The input of the final classifier projection computed from ``hidden`` (None: the model has no head)."""
    return layout.Layout(model).sentence_representation(hidden)


def has_pooler(model: torch.nn.Module) -> bool:
    """True when the model has the module making the classifier's input (BERT's pooler, a head's dense)."""
    return layout.Layout(model).has_sentence_head()


def resolve_kind(model: torch.nn.Module, kind: str) -> str:
    """The representation actually used for ``model``: "pooler" falls back to "cls" without a pooler.

    The fallback follows the authors' pooler-less models (``TeacherBertForQuestionAnswering``,
    ``PruneBertForQuestionAnswering``), where ``alignrep == 'cls'`` takes the raw last-layer [CLS] state.
    """
    if kind not in KINDS:
        raise CapbenchError(f"CAP representation must be one of {list(KINDS)}, got {kind!r}")
    if kind == "pooler" and not has_pooler(model):
        warnings.warn(
            f"{type(model).__name__} has no pooler (or classification head): CAP uses the last-layer [CLS] "
            "state instead (set representation=mean to avoid this)",
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


def classifier_dropout(model: torch.nn.Module) -> float:
    """The dropout probability the model's classifier applies to its input (``classifier_dropout``, else
    ``hidden_dropout_prob``; DistilBERT's ``seq_classif_dropout``)."""
    config = model.config
    for key in ("classifier_dropout", "seq_classif_dropout", "hidden_dropout_prob", "dropout"):
        value = getattr(config, key, None)
        if value is not None:
            return float(value)
    return 0.0


def represent(
    model: torch.nn.Module, outputs, attention_mask: Tensor | None, kind: str = "pooler", dropout: float = 0.0
) -> Tensor:
    """[B, H] L2-normalised representation of a batch from the model's forward ``outputs``.

    ``kind="pooler"`` applies the family's sentence head (``model.bert.pooler`` for BERT, see the module
    doc) to ``outputs.hidden_states[-1]`` (so the head of the model being pruned receives gradient), falling
    back to "cls" for a model without one. ``dropout`` (pooler only) is applied before the normalisation
    when the model is in train mode, as the authors' anchor (see the module doc).
    """
    hidden = last_hidden_state(outputs)
    if kind == "pooler":
        rep = _sentence_head(model, hidden)
        rep = rep if rep is not None else hidden[:, 0]
        if dropout > 0 and model.training:
            rep = F.dropout(rep, p=dropout, training=True)
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


def model_inputs(
    batch: dict, device: torch.device | None = None, model: torch.nn.Module | None = None
) -> dict:
    """The encoder inputs of a batch (drops ``idx``, ``labels`` and anything else); given the ``model``, only
    those it takes (``capbench.layout.input_names``: no token_type_ids for RoBERTa or DistilBERT)."""
    keys = MODEL_INPUT_KEYS if model is None else (*layout.input_names(model), "position_ids")
    inputs = {k: batch[k] for k in keys if batch.get(k) is not None}
    if device is not None:
        inputs = {k: v.to(device) for k, v in inputs.items()}
    return inputs
