"""Physical compaction of a structurally pruned encoder, and loading it back.

transformers 5 has no ``prune_heads`` and ``BertSelfAttention`` derives everything from the config
(``num_attention_heads``, ``attention_head_size = hidden_size // num_attention_heads``), so a per-layer number
of heads or FFN width cannot be expressed in ``BertConfig``.  Its forward does reshape with ``-1`` heads,
though, so a layer works with fewer heads once its Q/K/V/output projections are sliced and its
``num_attention_heads``/``all_head_size`` attributes updated.

``compact`` does that (with ``transformers.pytorch_utils.prune_linear_layer``) and records the per-layer shape
in ``config.capbench_structure``; the original ``num_attention_heads``/``intermediate_size`` stay in the config
(they define the head size and the dense reference).  A plain ``from_pretrained`` on such a directory fails
with size mismatches; ``load_compacted(path)`` builds the model from the config, reshapes its layers to the
recorded structure and loads the saved weights.  It also loads ordinary (dense or unstructured) directories.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
import transformers
from torch import nn
from transformers.pytorch_utils import prune_linear_layer

from capbench.errors import CapbenchError
from capbench.pruning.layers import (
    ATTN_OUT,
    FFN_IN,
    FFN_OUT,
    KEY,
    QUERY,
    VALUE,
    attention_shape,
    encoder_layers,
    get_submodule,
    set_submodule,
)

STRUCTURE_KEY = "capbench_structure"


def layer_shapes(model: nn.Module) -> list[dict]:
    """Per layer: heads, head size and FFN width as the modules currently are."""
    out = []
    for layer in encoder_layers(model):
        heads, size = attention_shape(layer)
        out.append({"heads": heads, "head_size": size, "ffn": get_submodule(layer, FFN_IN).out_features})
    return out


def compact(
    model: nn.Module, head_keep: Sequence[torch.Tensor], ffn_keep: Sequence[torch.Tensor]
) -> nn.Module:
    """Remove the heads/FFN neurons whose keep flag is False (in place); updates ``config.capbench_structure``.

    The model's prunable linears must be plain ``nn.Linear`` (call ``masks.unwrap`` first).  Every layer keeps
    at least one head (BERT's attention reshape needs one).
    """
    layers = encoder_layers(model)
    if len(head_keep) != len(layers) or len(ffn_keep) != len(layers):
        raise ValueError("need one head mask and one FFN mask per encoder layer")
    for layer, heads, neurons in zip(layers, head_keep, ffn_keep, strict=True):
        n_heads, size = attention_shape(layer)
        heads = torch.as_tensor(heads, dtype=torch.bool).reshape(-1)
        neurons = torch.as_tensor(neurons, dtype=torch.bool).reshape(-1)
        if heads.numel() != n_heads or not bool(heads.any()):
            raise ValueError(f"head mask must have {n_heads} entries with at least one kept")
        if not bool(heads.all()):
            kept = torch.nonzero(heads).reshape(-1)
            rows = (kept[:, None] * size + torch.arange(size)[None, :]).reshape(-1)
            for path in (QUERY, KEY, VALUE):
                set_submodule(layer, path, prune_linear_layer(get_submodule(layer, path), rows, dim=0))
            set_submodule(layer, ATTN_OUT, prune_linear_layer(get_submodule(layer, ATTN_OUT), rows, dim=1))
            attn = get_submodule(layer, "attention.self")
            attn.num_attention_heads = int(kept.numel())
            attn.all_head_size = int(kept.numel()) * size
        ffn_in = get_submodule(layer, FFN_IN)
        if neurons.numel() != ffn_in.out_features or not bool(neurons.any()):
            raise ValueError(f"FFN mask must have {ffn_in.out_features} entries with at least one kept")
        if not bool(neurons.all()):
            idx = torch.nonzero(neurons).reshape(-1)
            set_submodule(layer, FFN_IN, prune_linear_layer(ffn_in, idx, dim=0))
            set_submodule(layer, FFN_OUT, prune_linear_layer(get_submodule(layer, FFN_OUT), idx, dim=1))
    record_structure(model)
    return model


def record_structure(model: nn.Module) -> dict:
    shapes = layer_shapes(model)
    structure = {
        "num_attention_heads": [s["heads"] for s in shapes],
        "attention_head_size": shapes[0]["head_size"],
        "intermediate_size": [s["ffn"] for s in shapes],
        "loader": "capbench.pruning.compact.load_compacted",
    }
    setattr(model.config, STRUCTURE_KEY, structure)
    return structure


def apply_structure(model: nn.Module, structure: dict) -> nn.Module:
    """Reshape a freshly built model's layers to ``structure`` (weights uninitialised: load them next)."""
    layers = encoder_layers(model)
    heads, ffn = structure["num_attention_heads"], structure["intermediate_size"]
    size = int(structure["attention_head_size"])
    if len(heads) != len(layers) or len(ffn) != len(layers):
        raise CapbenchError(
            f"{STRUCTURE_KEY} describes {len(heads)} layers but the config builds {len(layers)}; the config.json "
            "was edited or belongs to another model"
        )
    for layer, n_heads, width in zip(layers, heads, ffn, strict=True):
        q = get_submodule(layer, QUERY)
        hidden = q.in_features
        width_in = int(n_heads) * size
        for path in (QUERY, KEY, VALUE):
            old = get_submodule(layer, path)
            set_submodule(layer, path, nn.Linear(hidden, width_in, bias=old.bias is not None))
        old = get_submodule(layer, ATTN_OUT)
        set_submodule(layer, ATTN_OUT, nn.Linear(width_in, old.out_features, bias=old.bias is not None))
        attn = get_submodule(layer, "attention.self")
        attn.num_attention_heads, attn.attention_head_size, attn.all_head_size = int(n_heads), size, width_in
        old_in, old_out = get_submodule(layer, FFN_IN), get_submodule(layer, FFN_OUT)
        set_submodule(layer, FFN_IN, nn.Linear(old_in.in_features, int(width), bias=old_in.bias is not None))
        set_submodule(
            layer, FFN_OUT, nn.Linear(int(width), old_out.out_features, bias=old_out.bias is not None)
        )
    return model


def _state_dict(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    single = path / "model.safetensors"
    if single.is_file():
        return load_file(str(single))
    index = path / "model.safetensors.index.json"
    if index.is_file():
        state: dict[str, torch.Tensor] = {}
        for shard in sorted(set(json.loads(index.read_text())["weight_map"].values())):
            state.update(load_file(str(path / shard)))
        return state
    binary = path / "pytorch_model.bin"
    if binary.is_file():
        return torch.load(binary, map_location="cpu", weights_only=True)
    raise CapbenchError(f"no model.safetensors (or index, or pytorch_model.bin) in {path}")


def _model_class(config, model_class):
    if model_class is not None:
        return model_class
    for arch in getattr(config, "architectures", None) or []:
        cls = getattr(transformers, arch, None)
        if cls is not None:
            return cls
    return transformers.AutoModel


def load_compacted(path: str | Path, model_class=None, **kwargs) -> nn.Module:
    """Load a model saved after ``finalize`` (compacted or not).

    ``model_class`` defaults to ``config.architectures[0]`` from transformers; a base class (``AutoModel``,
    ``BertModel``) loads just the encoder of a saved task model, as ``from_pretrained`` does.  Directories without
    ``capbench_structure`` go straight to ``from_pretrained(path, **kwargs)``.
    """
    path = Path(path)
    config = transformers.AutoConfig.from_pretrained(path)
    cls = _model_class(config, model_class)
    structure = getattr(config, STRUCTURE_KEY, None)
    if not structure:
        return cls.from_pretrained(path, **kwargs)
    if cls is transformers.AutoModel:
        model = transformers.AutoModel.from_config(config)
    else:
        model = cls(config)
    apply_structure(model, structure)
    state = _state_dict(path)
    prefix = getattr(model, "base_model_prefix", "") + "."
    own = model.state_dict()
    if (
        prefix != "."
        and not any(k.startswith(prefix) for k in own)
        and any(k.startswith(prefix) for k in state)
    ):
        # a task model saved, its encoder asked for (e.g. AutoModel for probing): keep the base model's weights
        state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    result = model.load_state_dict(state, strict=False)
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    loaded = {p.data_ptr() for k, p in model.state_dict().items() if k in state}
    missing = [k for k in result.missing_keys if model.state_dict()[k].data_ptr() not in loaded]
    if missing or result.unexpected_keys:
        raise CapbenchError(
            f"{path} does not match its recorded structure (missing {missing[:3]}, unexpected "
            f"{result.unexpected_keys[:3]}); re-save it with capbench"
        )
    model.eval()
    return model
