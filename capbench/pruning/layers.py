"""Which layers are pruned: the encoder's attention Q, K, V and output projections and the FFN in/out.

Embeddings, the pooler and the classifier are never pruned (the convention of movement pruning and CAP).
"""

from __future__ import annotations

from torch import nn

from capbench.errors import CapbenchError

# Paths inside one encoder layer (BERT, RoBERTa, ELECTRA, MiniLM... share them).
QUERY, KEY, VALUE = "attention.self.query", "attention.self.key", "attention.self.value"
ATTN_OUT = "attention.output.dense"
FFN_IN, FFN_OUT = "intermediate.dense", "output.dense"
LINEAR_PATHS = (QUERY, KEY, VALUE, ATTN_OUT, FFN_IN, FFN_OUT)

_FIX = (
    "capbench prunes BERT-style encoders: it expects model.base_model.encoder.layer[i] with "
    + ", ".join(LINEAR_PATHS)
    + " as nn.Linear; use a BERT-family checkpoint (bert, roberta, electra, MiniLM) or add the layout to "
    "capbench/pruning/layers.py"
)


def base_model(model: nn.Module) -> nn.Module:
    return getattr(model, "base_model", model)


def encoder(model: nn.Module) -> nn.Module:
    enc = getattr(base_model(model), "encoder", None)
    if enc is None or not hasattr(enc, "layer"):
        raise CapbenchError(f"{type(model).__name__} has no encoder.layer list. {_FIX}")
    return enc


def encoder_layers(model: nn.Module) -> list[nn.Module]:
    layers = list(encoder(model).layer)
    if not layers:
        raise CapbenchError(f"{type(model).__name__} has an empty encoder. {_FIX}")
    return layers


def get_submodule(layer: nn.Module, path: str) -> nn.Module:
    module = layer
    for part in path.split("."):
        module = getattr(module, part, None)
        if module is None:
            raise CapbenchError(f"encoder layer {type(layer).__name__} has no {path}. {_FIX}")
    return module


def set_submodule(layer: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, attr = path.rpartition(".")
    parent = get_submodule(layer, parent_path) if parent_path else layer
    setattr(parent, attr, new)


def prunable_linears(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """(qualified name, module) of every pruned linear, layer by layer in LINEAR_PATHS order."""
    names = {id(m): n for n, m in model.named_modules()}
    out = []
    for layer in encoder_layers(model):
        for path in LINEAR_PATHS:
            module = get_submodule(layer, path)
            if not isinstance(module, nn.Linear):
                raise CapbenchError(f"{path} is a {type(module).__name__}, not nn.Linear. {_FIX}")
            out.append((names.get(id(module), path), module))
    return out


def attention_shape(layer: nn.Module) -> tuple[int, int]:
    """(number of heads, head size) of one encoder layer as its self-attention module sees them."""
    attn = get_submodule(layer, "attention.self")
    heads = getattr(attn, "num_attention_heads", None)
    size = getattr(attn, "attention_head_size", None)
    if heads is None or size is None:
        raise CapbenchError(f"{type(attn).__name__} lacks num_attention_heads/attention_head_size. {_FIX}")
    return int(heads), int(size)
