"""Encoder layout: the one place that knows where each supported model family keeps its parts.

Every walk over an encoder (pruning masks, structured pruning and compaction, sparsity accounting, CAP's
sentence representation, probing features, speed) goes through this module. Per family (the config's
``model_type``):

    family      encoder layers         Q, K, V / attention output            FFN in / out
    bert        bert.encoder.layer     attention.self.{query,key,value} /    intermediate.dense /
    (MiniLM)                           attention.output.dense                output.dense
    roberta     roberta.encoder.layer  as bert                               as bert
    electra     electra.encoder.layer  as bert                               as bert
    distilbert  distilbert.            attention.{q_lin,k_lin,v_lin} /       ffn.lin1 / ffn.lin2
                transformer.layer      attention.out_lin

The vector the final classifier projection reads (CAP's sentence representation):

    bert        the pooler output, tanh(pooler.dense(h[CLS]))  -> classifier
    roberta     tanh(classifier.dense(h[CLS]))                  -> classifier.out_proj
    electra     gelu(classifier.dense(h[CLS]))                  -> classifier.out_proj
    distilbert  relu(pre_classifier(h[CLS]))                    -> classifier

In every family the prunable weights are the same six linears per encoder layer (Q, K, V, attention output,
FFN in, FFN out); the embeddings and the classification head (BERT's pooler included) are never pruned, so
sparsities compare across families. The sentence representation is taken without dropout (dropout is the
identity in eval mode, where it equals the projection's input exactly). Any other model type is refused
with one line naming the supported ones.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from capbench.errors import CapbenchError

ROLES = ("query", "key", "value", "attn_out", "ffn_in", "ffn_out")
_BERT_PATHS = (
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "attention.output.dense",
    "intermediate.dense",
    "output.dense",
)


def _pooler_output(model: nn.Module, hidden: Tensor) -> Tensor | None:
    pooler = getattr(base_model(model), "pooler", None)
    return pooler(hidden) if pooler is not None else None


def _classifier_dense(activation: Callable[[nn.Module], Callable]) -> Callable:
    """RoBERTa/ELECTRA heads: activation(classifier.dense(h[CLS])), the input of classifier.out_proj."""

    def represent(model: nn.Module, hidden: Tensor) -> Tensor | None:
        head = getattr(model, "classifier", None)
        dense = getattr(head, "dense", None)
        return activation(head)(dense(hidden[:, 0])) if isinstance(dense, nn.Module) else None

    return represent


def _pre_classifier(model: nn.Module, hidden: Tensor) -> Tensor | None:
    pre = getattr(model, "pre_classifier", None)
    return F.relu(pre(hidden[:, 0])) if pre is not None else None


@dataclass(frozen=True)
class Family:
    """Where one model family keeps its parts; paths are dotted attribute paths."""

    model_type: str
    encoder: str  # inside the base model: the module whose ``.layer`` lists the encoder layers
    attention: str  # inside a layer: the self-attention module (head count and head size)
    paths: tuple[str, ...]  # inside a layer: the linears of ROLES, in that order
    heads_attr: str  # attribute of the self-attention module holding its number of heads
    ffn_activation: str  # inside a layer: the FFN activation function
    ffn_config: str  # config key of the dense FFN width
    dropout_config: tuple[str, str]  # config keys of the hidden and attention dropout
    head: tuple[str, ...]  # inside the task model: the classification head's modules
    projection: str  # inside the task model: the classifier's final projection
    represent: Callable[[nn.Module, Tensor], Tensor | None]  # (task model, last hidden) -> projection input
    sentence_head: str  # inside the model: the module ``represent`` needs (absent: no representation)
    token_types: bool = True  # takes token_type_ids (used only when config.type_vocab_size > 1)
    positions_after_padding: bool = False  # position ids start at pad_token_id + 1 (RoBERTa)

    def path(self, role: str) -> str:
        return self.paths[ROLES.index(role)]


_BERT_LIKE = dict(
    encoder="encoder",
    attention="attention.self",
    paths=_BERT_PATHS,
    heads_attr="num_attention_heads",
    ffn_activation="intermediate.intermediate_act_fn",
    ffn_config="intermediate_size",
    dropout_config=("hidden_dropout_prob", "attention_probs_dropout_prob"),
    head=("classifier",),
)
FAMILIES = {
    "bert": Family(
        "bert",
        projection="classifier",
        represent=_pooler_output,
        sentence_head="base_model.pooler",
        **_BERT_LIKE,
    ),
    "roberta": Family(
        "roberta",
        projection="classifier.out_proj",
        represent=_classifier_dense(lambda head: torch.tanh),
        sentence_head="classifier.dense",
        positions_after_padding=True,
        **_BERT_LIKE,
    ),
    "electra": Family(
        "electra",
        projection="classifier.out_proj",
        represent=_classifier_dense(lambda head: head.activation),
        sentence_head="classifier.dense",
        **_BERT_LIKE,
    ),
    "distilbert": Family(
        "distilbert",
        encoder="transformer",
        attention="attention",
        paths=(
            "attention.q_lin",
            "attention.k_lin",
            "attention.v_lin",
            "attention.out_lin",
            "ffn.lin1",
            "ffn.lin2",
        ),
        heads_attr="n_heads",
        ffn_activation="ffn.activation",
        ffn_config="hidden_dim",
        dropout_config=("dropout", "attention_dropout"),
        head=("pre_classifier", "classifier"),
        projection="classifier",
        represent=_pre_classifier,
        sentence_head="pre_classifier",
        token_types=False,
    ),
}
SUPPORTED_MODEL_TYPES = tuple(FAMILIES)
# FFN-input linears of every family (their output feeds only an activation and the next linear).
FFN_IN_PATHS = tuple(dict.fromkeys(f.path("ffn_in") for f in FAMILIES.values()))


def unsupported(model_type, name: str = "model") -> CapbenchError:
    return CapbenchError(
        f"{name}: model type {model_type!r} is not a supported encoder (supported: "
        f"{', '.join(SUPPORTED_MODEL_TYPES)}); capbench prunes BERT-style encoders"
    )


def family(obj, name: str | None = None) -> Family:
    """The Family of a model, a config or a model_type string; CapbenchError (one line) if unsupported."""
    if isinstance(obj, str):
        model_type = obj
    else:
        config = getattr(obj, "config", obj)
        model_type = getattr(config, "model_type", None)
    found = FAMILIES.get(model_type) if isinstance(model_type, str) else None
    if found is None:
        raise unsupported(model_type, name or type(obj).__name__)
    return found


def get_path(root: nn.Module, path: str, what: str = "module"):
    module = root
    for part in path.split("."):
        module = getattr(module, part, None)
        if module is None:
            raise CapbenchError(
                f"{type(root).__name__} has no {path}; not the {what} layout capbench expects "
                f"(supported: {', '.join(SUPPORTED_MODEL_TYPES)})"
            )
    return module


def set_path(root: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, attr = path.rpartition(".")
    setattr(get_path(root, parent_path) if parent_path else root, attr, new)


def base_model(model: nn.Module) -> nn.Module:
    """The bare encoder of a task model (``model.bert``, ``model.distilbert``...), or the model itself."""
    base = getattr(model, "base_model", None)
    return base if isinstance(base, nn.Module) else model


class Layout:
    """The encoder layout of one model: its family's paths applied to its modules."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.family = family(model)

    @property
    def base(self) -> nn.Module:
        return base_model(self.model)

    @property
    def embeddings(self) -> nn.Module:
        return get_path(self.base, "embeddings", self.family.model_type)

    @property
    def encoder(self) -> nn.Module:
        enc = get_path(self.base, self.family.encoder, self.family.model_type)
        if not hasattr(enc, "layer"):
            raise CapbenchError(f"{type(self.model).__name__} has no {self.family.encoder}.layer list")
        return enc

    @property
    def layers(self) -> list[nn.Module]:
        layers = list(self.encoder.layer)
        if not layers:
            raise CapbenchError(f"{type(self.model).__name__} has an empty encoder")
        return layers

    def get(self, layer: nn.Module, role: str) -> nn.Module:
        return get_path(layer, self.family.path(role), self.family.model_type)

    def set(self, layer: nn.Module, role: str, module: nn.Module) -> None:
        set_path(layer, self.family.path(role), module)

    def attention(self, layer: nn.Module) -> nn.Module:
        return get_path(layer, self.family.attention, self.family.model_type)

    def heads(self, layer: nn.Module) -> tuple[int, int]:
        """(number of heads, head size) of one layer as its self-attention module sees them."""
        attn = self.attention(layer)
        heads = getattr(attn, self.family.heads_attr, None)
        size = getattr(attn, "attention_head_size", None)
        if heads is None or size is None:
            raise CapbenchError(f"{type(attn).__name__} lacks {self.family.heads_attr}/attention_head_size")
        return int(heads), int(size)

    def set_heads(self, layer: nn.Module, heads: int, size: int | None = None) -> None:
        """Tell a (resliced) self-attention module its head count (and head size); its forward reshapes with
        -1 heads and ``attention_head_size``, so this is all it needs."""
        attn = self.attention(layer)
        size = int(size if size is not None else attn.attention_head_size)
        setattr(attn, self.family.heads_attr, int(heads))
        attn.attention_head_size = size
        if hasattr(attn, "all_head_size"):
            attn.all_head_size = int(heads) * size

    def ffn_activation(self, layer: nn.Module) -> Callable[[Tensor], Tensor]:
        return get_path(layer, self.family.ffn_activation, self.family.model_type)

    def linears(self) -> list[tuple[str, nn.Module]]:
        """(qualified name, module) of every prunable linear, layer by layer in ROLES order; the modules are
        whatever sits there (nn.Linear, a MaskedLinear, a speed FormatLinear)."""
        names = {id(m): n for n, m in self.model.named_modules()}
        out = []
        for layer in self.layers:
            for role in ROLES:
                module = self.get(layer, role)
                out.append((names.get(id(module), self.family.path(role)), module))
        return out

    def dense_shape(self) -> tuple[int, int]:
        """(heads, FFN width) per layer of the dense model, from the config."""
        config = self.model.config
        return int(config.num_attention_heads), int(getattr(config, self.family.ffn_config))

    def projection(self) -> nn.Module | None:
        """The classifier's final projection (None on a bare encoder)."""
        module = getattr_path(self.model, self.family.projection)
        return module if isinstance(module, nn.Module) else None

    def sentence_representation(self, hidden: Tensor) -> Tensor | None:
        """What the final classifier projection reads, from the last hidden state (None without a head)."""
        return self.family.represent(self.model, hidden)

    def has_sentence_head(self) -> bool:
        """True when the model has what ``sentence_representation`` needs (BERT's pooler, a head's dense)."""
        return isinstance(getattr_path(self.model, self.family.sentence_head), nn.Module)

    def input_names(self) -> tuple[str, ...]:
        """The batch keys the model takes: token_type_ids only where the family uses them and the config
        has more than one token type (RoBERTa has one; DistilBERT has none)."""
        types = self.family.token_types and int(getattr(self.model.config, "type_vocab_size", 0) or 0) > 1
        return ("input_ids", "attention_mask", "token_type_ids") if types else ("input_ids", "attention_mask")

    def check(self, name: str = "model") -> None:
        """Every layer has the six prunable linears as nn.Linear; CapbenchError otherwise."""
        for index, layer in enumerate(self.layers):
            for role in ROLES:
                path = self.family.path(role)
                module = getattr_path(layer, path)
                if not isinstance(module, nn.Linear):
                    kind = self.family.model_type
                    raise CapbenchError(
                        f"{name}: layer {index} lacks the linear {path}; not a {kind} encoder"
                    )


def getattr_path(root, path: str):
    """``root.a.b.c`` for "a.b.c", or None where a part is missing."""
    for part in path.split("."):
        root = getattr(root, part, None)
    return root


def prunable_linears(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """(qualified name, module) of every pruned linear, layer by layer in ROLES order (checked nn.Linear)."""
    out = Layout(model).linears()
    for name, module in out:
        if not isinstance(module, nn.Linear):
            raise CapbenchError(f"{name} is a {type(module).__name__}, not nn.Linear")
    return out


def input_names(model: nn.Module) -> tuple[str, ...]:
    return Layout(model).input_names()


def max_positions(config) -> int | None:
    """The longest input the config's position embeddings allow (RoBERTa's start at pad_token_id + 1)."""
    limit = getattr(config, "max_position_embeddings", None)
    if limit is None:
        return None
    if FAMILIES.get(getattr(config, "model_type", None), FAMILIES["bert"]).positions_after_padding:
        return int(limit) - int(getattr(config, "pad_token_id", 1) or 0) - 1
    return int(limit)
