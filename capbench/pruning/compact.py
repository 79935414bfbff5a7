"""Physical compaction of a structurally pruned encoder (any ``capbench.layout`` family), and loading it back.

transformers 5 has no ``prune_heads`` and its self-attention modules derive everything from the config
(``num_attention_heads``/``n_heads``, ``attention_head_size = hidden_size // num_attention_heads``), so a
per-layer number of heads or FFN width cannot be expressed in the config.  Their forward does reshape with
``-1`` heads, though, so a layer works with fewer heads once its Q/K/V/output projections are sliced and its
head count (``Layout.set_heads``) updated.

One slicing step (``_slice_layer``) serves two entry points:

* ``compact(model, head_keep, ffn_keep)``: the structured pruner's ``finalize`` removes the units it pruned;
* ``compact_zeroed(model)``: for timing, a model saved full size with whole heads / FFN neurons zeroed runs
  as the smaller dense model it really is.  It removes an attention head whose value rows are all zero (its
  context is then the constant value bias, since every query's attention probabilities sum to one, so
  ``W_o[:, head] @ b_v[head]`` is folded into the output bias) or whose output-projection columns are all
  zero, and an FFN neuron whose input row is all zero (its activation is the constant ``act(b)``, folded
  into the output bias) or whose output column is all zero.  Same outputs as the masked model, up to float
  rounding.

Both record the per-layer shape in ``config.capbench_structure``; the original ``num_attention_heads`` and
FFN width stay in the config (they define the head size and the dense reference).  A plain
``from_pretrained`` on such a directory fails with size mismatches; ``load_compacted(path)`` builds the model
from the config, reshapes its layers to the recorded structure and loads the saved weights.  It also loads
ordinary (dense or unstructured) directories.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from pathlib import Path

import torch
import transformers
from torch import nn

from capbench.errors import CapbenchError
from capbench.layout import Layout

STRUCTURE_KEY = "capbench_structure"


def layer_shapes(model: nn.Module) -> list[dict]:
    """Per layer: heads, head size and FFN width as the modules currently are."""
    lay = Layout(model)
    out = []
    for layer in lay.layers:
        heads, size = lay.heads(layer)
        out.append({"heads": heads, "head_size": size, "ffn": lay.get(layer, "ffn_in").out_features})
    return out


def _slice_linear(layer: nn.Linear, index: torch.Tensor, dim: int) -> nn.Linear:
    """A new nn.Linear (same device and dtype) keeping ``index`` along ``dim`` of the weight (0: outputs)."""
    index = index.to(layer.weight.device)
    w = layer.weight.detach().index_select(dim, index).clone()
    bias = layer.bias
    if bias is not None:
        bias = bias.detach().index_select(0, index).clone() if dim == 0 else bias.detach().clone()
    new = nn.Linear(w.shape[1], w.shape[0], bias=bias is not None, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        new.weight.copy_(w)
        if bias is not None:
            new.bias.copy_(bias)
    return new


def _slice_layer(lay: Layout, layer: nn.Module, heads: torch.Tensor | None, neurons: torch.Tensor | None):
    """Keep only the heads and FFN neurons at these indices (None: keep all of them)."""
    if heads is not None:
        _, size = lay.heads(layer)
        rows = (heads.reshape(-1, 1) * size + torch.arange(size).reshape(1, -1)).reshape(-1)
        for role in ("query", "key", "value"):
            lay.set(layer, role, _slice_linear(lay.get(layer, role), rows, 0))
        lay.set(layer, "attn_out", _slice_linear(lay.get(layer, "attn_out"), rows, 1))
        lay.set_heads(layer, int(heads.numel()), size)
    if neurons is not None:
        lay.set(layer, "ffn_in", _slice_linear(lay.get(layer, "ffn_in"), neurons, 0))
        lay.set(layer, "ffn_out", _slice_linear(lay.get(layer, "ffn_out"), neurons, 1))


def compact(
    model: nn.Module, head_keep: Sequence[torch.Tensor], ffn_keep: Sequence[torch.Tensor]
) -> nn.Module:
    """Remove the heads/FFN neurons whose keep flag is False (in place); records ``config.capbench_structure``.

    The model's prunable linears must be plain ``nn.Linear`` (call ``masks.unwrap`` first).  Every layer keeps
    at least one head (the attention reshape needs one).
    """
    lay = Layout(model)
    layers = lay.layers
    if len(head_keep) != len(layers) or len(ffn_keep) != len(layers):
        raise ValueError("need one head mask and one FFN mask per encoder layer")
    for layer, heads, neurons in zip(layers, head_keep, ffn_keep, strict=True):
        n_heads, _ = lay.heads(layer)
        heads = torch.as_tensor(heads, dtype=torch.bool).reshape(-1).cpu()
        neurons = torch.as_tensor(neurons, dtype=torch.bool).reshape(-1).cpu()
        if heads.numel() != n_heads or not bool(heads.any()):
            raise ValueError(f"head mask must have {n_heads} entries with at least one kept")
        width = lay.get(layer, "ffn_in").out_features
        if neurons.numel() != width or not bool(neurons.any()):
            raise ValueError(f"FFN mask must have {width} entries with at least one kept")
        _slice_layer(
            lay,
            layer,
            None if bool(heads.all()) else torch.nonzero(heads).reshape(-1),
            None if bool(neurons.all()) else torch.nonzero(neurons).reshape(-1),
        )
    record_structure(model)
    return model


def _round_up(n: int, multiple: int, limit: int) -> int:
    if multiple <= 1:
        return n
    return min(limit, -(-n // multiple) * multiple)


def _fold_into_bias(out: nn.Linear, value: torch.Tensor) -> None:
    if out.bias is None:
        out.bias = nn.Parameter(
            torch.zeros(out.out_features, device=out.weight.device, dtype=out.weight.dtype)
        )
    out.bias += value


@torch.no_grad()
def _dead_heads(lay: Layout, layer: nn.Module) -> tuple[int, torch.Tensor | None]:
    """(heads, indices of the heads to keep or None for all); folds dead-value heads' bias into the output."""
    value, out = lay.get(layer, "value"), lay.get(layer, "attn_out")
    _, d = lay.heads(layer)
    heads = value.out_features // d
    v_w = value.weight.reshape(heads, d, -1)
    o_w = out.weight.reshape(out.out_features, heads, d)
    value_dead = (v_w == 0).flatten(1).all(dim=1)
    output_dead = (o_w == 0).permute(1, 0, 2).flatten(1).all(dim=1)
    removable = (value_dead | output_dead).tolist()
    keep = [h for h in range(heads) if not removable[h]]
    if len(keep) == heads:
        return heads, None
    for h in range(heads):
        # a dead-value head outputs the constant context b_v: fold it through W_o into the output bias
        if removable[h] and not output_dead[h] and value.bias is not None:
            _fold_into_bias(out, o_w[:, h, :] @ value.bias[h * d : (h + 1) * d])
    if not keep:  # keep one inert head so the attention reshape still has a head axis
        keep = [0]
        out.weight[:, :d] = 0
    return heads, torch.tensor(keep)


@torch.no_grad()
def _dead_neurons(lay: Layout, layer: nn.Module, multiple: int) -> tuple[int, torch.Tensor | None]:
    """(width, indices of the FFN neurons to keep or None for all); folds constant activations into the
    output bias."""
    inter, out = lay.get(layer, "ffn_in"), lay.get(layer, "ffn_out")
    width = inter.out_features
    row_dead = (inter.weight == 0).all(dim=1)
    col_dead = (out.weight == 0).all(dim=0)
    removable = row_dead | col_dead
    n_keep = width - int(removable.sum())
    if n_keep == width:
        return width, None
    target = _round_up(max(n_keep, 1), multiple, width)
    removable_idx = removable.nonzero().flatten()
    if target > n_keep:  # keep some removable neurons (unchanged, so still exact) to round the width up
        removable[removable_idx[: target - n_keep]] = False
    folded = removable & ~col_dead  # constant activation act(b_j) that still reaches the output
    if bool(folded.any()):
        b = inter.bias if inter.bias is not None else torch.zeros(width, device=inter.weight.device)
        _fold_into_bias(out, out.weight[:, folded] @ lay.ffn_activation(layer)(b[folded]))
    return width, (~removable).nonzero().flatten().cpu()


def compact_zeroed(model: nn.Module, *, multiple: int = 1, inplace: bool = False) -> tuple[nn.Module, dict]:
    """Remove zeroed heads and FFN neurons (see module doc); records ``config.capbench_structure`` if any.

    ``multiple`` rounds each kept FFN width up to a multiple (16 runs at full GEMM speed, odd widths lose
    8-20%). Returns the compacted model (a copy unless ``inplace``) and a report of heads and widths per
    layer.
    """
    if not inplace:
        model = copy.deepcopy(model)
    lay = Layout(model)
    report = {"layers": [], "changed": False}
    for layer in lay.layers:
        heads, head_keep = _dead_heads(lay, layer)
        width, ffn_keep = _dead_neurons(lay, layer, multiple)
        _slice_layer(lay, layer, head_keep, ffn_keep)
        after = (
            heads if head_keep is None else int(head_keep.numel()),
            width if ffn_keep is None else int(ffn_keep.numel()),
        )
        report["layers"].append({"heads": [heads, after[0]], "ffn": [width, after[1]]})
        report["changed"] |= after != (heads, width)
    if report["changed"]:
        record_structure(model)
    return model, report


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
    lay = Layout(model)
    layers = lay.layers
    heads, ffn = structure["num_attention_heads"], structure["intermediate_size"]
    size = int(structure["attention_head_size"])
    if len(heads) != len(layers) or len(ffn) != len(layers):
        raise CapbenchError(
            f"{STRUCTURE_KEY} describes {len(heads)} layers but the config builds {len(layers)}; the config.json "
            "was edited or belongs to another model"
        )

    def linear(old: nn.Linear, n_in: int, n_out: int) -> nn.Linear:
        return nn.Linear(n_in, n_out, bias=old.bias is not None)

    for layer, n_heads, width in zip(layers, heads, ffn, strict=True):
        hidden = lay.get(layer, "query").in_features
        width_in = int(n_heads) * size
        for role in ("query", "key", "value"):
            lay.set(layer, role, linear(lay.get(layer, role), hidden, width_in))
        old = lay.get(layer, "attn_out")
        lay.set(layer, "attn_out", linear(old, width_in, old.out_features))
        lay.set_heads(layer, int(n_heads), size)
        old_in, old_out = lay.get(layer, "ffn_in"), lay.get(layer, "ffn_out")
        lay.set(layer, "ffn_in", linear(old_in, old_in.in_features, int(width)))
        lay.set(layer, "ffn_out", linear(old_out, int(width), old_out.out_features))
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
