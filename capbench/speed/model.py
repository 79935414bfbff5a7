"""Whole-model latency and throughput: a pruned model in its best kernel formats vs its dense model."""

from __future__ import annotations

import copy
import time
from collections.abc import Iterable, Mapping

import torch
from torch import nn

from capbench.layout import Layout, input_names, max_positions
from capbench.speed.formats import KernelFormat, build_formats
from capbench.speed.kernels import (
    iter_encoder_linears,
    layout_free_output,
    parse_token_count,
    token_count_label,
)
from capbench.speed.timing import Clock, summarize, time_interleaved

DEFAULT_MODEL_TOKEN_COUNTS = ("1x128", "32x128")


class FormatLinear(nn.Module):
    """Drop-in replacement for an nn.Linear that runs a kernel format (CSR, BSR, compact...)."""

    is_format_linear = True

    def __init__(self, fmt: KernelFormat, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        if not fmt.available:
            raise ValueError(f"format {fmt.name} is unavailable: {fmt.reason}")
        self.fmt = fmt
        self.format_name = fmt.name
        self.in_features = fmt.in_features
        self.out_features = fmt.out_features
        # kept (not as parameters) so sparsity accounting and re-building still see the real weight
        self.register_buffer("weight", weight.detach(), persistent=False)
        self.register_buffer("bias", None if bias is None else bias.detach(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fmt(x)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, format={self.format_name}"


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, module)


def realise(
    model: nn.Module, choices: Mapping[str, str], *, inplace: bool = False, **format_kwargs
) -> nn.Module:
    """A copy of `model` whose encoder linears named in `choices` run the chosen format ("dense": unchanged).

    Sparse formats return row-major outputs except on `layout_free_output` layers (the FFN input linear),
    whose column-major output feeds the activation and the next linear without a copy.
    """
    if not inplace:
        model = copy.deepcopy(model)
    for name, module in list(iter_encoder_linears(model)):
        wanted = choices.get(name, "dense")
        if wanted == "dense":
            continue
        family = "bsr" if wanted.startswith("bsr") else wanted
        kwargs = {"contiguous": not layout_free_output(name), **format_kwargs}
        if family == "bsr":
            kwargs["block_sizes"] = (int(wanted[3:]),)
        formats = build_formats(module.weight, module.bias, formats=[family], **kwargs)
        fmt = formats.get(wanted)
        if fmt is None or not fmt.available:
            raise ValueError(f"{name}: format {wanted} unavailable: {getattr(fmt, 'reason', 'not built')}")
        _set_submodule(model, name, FormatLinear(fmt, module.weight, module.bias))
    return model


def format_counts(model: nn.Module) -> dict[str, int]:
    counts: dict[str, int] = {}
    for _, module in iter_encoder_linears(model):
        name = getattr(module, "format_name", "dense")
        counts[name] = counts.get(name, 0) + 1
    return counts


def model_inputs(model: nn.Module, batch: int, seq: int, seed: int = 0) -> dict:
    """Random token ids (no padding) of shape batch x seq, with the inputs the model's family takes."""
    config = model.config
    g = torch.Generator().manual_seed(seed)
    low = min(5, config.vocab_size - 1)
    input_ids = torch.randint(low, config.vocab_size, (batch, seq), generator=g)
    device = next(model.parameters()).device
    inputs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
    if "token_type_ids" in input_names(model):
        inputs["token_type_ids"] = torch.zeros_like(input_ids)
    return {k: v.to(device) for k, v in inputs.items()}


def check_shape(model: nn.Module, spec) -> tuple[int, int]:
    batch, seq = parse_token_count(spec)
    limit = max_positions(model.config)
    if limit is not None and seq > limit:
        raise ValueError(f"sequence length {seq} exceeds the model's max_position_embeddings {limit}")
    return batch, seq


def time_models(
    models: Mapping[str, nn.Module],
    token_counts: Iterable = DEFAULT_MODEL_TOKEN_COUNTS,
    *,
    baseline: str | None = None,
    repeats: int = 5,
    warmup: int = 1,
    budget: float | None = None,
    clock: Clock = time.perf_counter,
    seed: int = 0,
) -> dict:
    """End-to-end forward latency of each model, interleaved, per batch x sequence shape.

    Returns per shape: latency statistics (seconds per forward), throughput (sequences and tokens per second
    from the median latency) and the speedup of each model vs `baseline` (median of per-round ratios).
    """
    names = list(models)
    baseline = baseline or names[0]
    out: dict = {}
    for spec in token_counts:
        batch, seq = check_shape(models[baseline], spec)
        inputs = {name: model_inputs(m, batch, seq, seed) for name, m in models.items()}
        fns = {name: (lambda m=m, i=inputs[name]: m(**i)) for name, m in models.items()}
        for m in models.values():
            m.eval()
        with torch.inference_mode():
            timing = time_interleaved(
                fns, baseline=baseline, repeats=repeats, warmup=warmup, number=1, budget=budget, clock=clock
            )
        row = {
            "batch": batch,
            "seq": seq,
            "rounds": timing["rounds"],
            "threads": timing["threads"],
            "models": {},
        }
        for name in names:
            t = timing["times"][name]
            row["models"][name] = {
                "latency_s": t,
                "sequences_per_s": batch / t["median"] if t["median"] > 0 else None,
                "tokens_per_s": batch * seq / t["median"] if t["median"] > 0 else None,
                "speedup": timing["speedup"][name]["median"],
                "speedup_iqr": timing["speedup"][name]["iqr"],
            }
        out[token_count_label(spec)] = row
    return out


def time_breakdown(
    model: nn.Module,
    token_count="32x128",
    *,
    repeats: int = 3,
    warmup: int = 1,
    clock: Clock = time.perf_counter,
    seed: int = 0,
) -> dict:
    """Where one forward's time goes: embeddings, encoder linears, attention core, the rest.

    Forward hooks time the embeddings, every encoder linear (in whatever format it runs) and every
    self-attention module; the attention core is self-attention minus its Q/K/V projections (scores,
    softmax, weighted sum, reshapes). "other" is the rest of the forward: layer norms, activations, residual
    adds, pooler and classifier, Python overhead. Seconds are medians over `repeats` forwards; fractions are
    of the median total.
    """
    batch, seq = check_shape(model, token_count)
    inputs = model_inputs(model, batch, seq, seed)
    lay = Layout(model)
    linear_ids = {id(m) for _, m in iter_encoder_linears(model)}
    acc = {"embeddings": 0.0, "encoder_linears": 0.0, "self_attention": 0.0, "qkv": 0.0}
    starts: dict[int, float] = {}
    handles = []

    def add(module: nn.Module, key: str, extra: str | None = None):
        def pre(mod, args, kwargs=None):
            starts[id(mod)] = clock()

        def post(mod, args, output, kwargs=None):
            elapsed = clock() - starts.pop(id(mod))
            acc[key] += elapsed
            if extra is not None:
                acc[extra] += elapsed

        handles.append(module.register_forward_pre_hook(pre))
        handles.append(module.register_forward_hook(post))

    add(lay.embeddings, "embeddings")
    for layer in lay.layers:
        add(lay.attention(layer), "self_attention")
        for proj in (lay.get(layer, role) for role in ("query", "key", "value")):
            if id(proj) in linear_ids:
                add(proj, "encoder_linears", "qkv")
                linear_ids.discard(id(proj))
    for _, module in iter_encoder_linears(model):
        if id(module) in linear_ids:
            add(module, "encoder_linears")

    samples: dict[str, list[float]] = {
        k: [] for k in ("total", "embeddings", "encoder_linears", "attention_core", "other")
    }
    model.eval()
    try:
        with torch.inference_mode():
            for _ in range(warmup):
                model(**inputs)
            for _ in range(repeats):
                for k in acc:
                    acc[k] = 0.0
                t0 = clock()
                model(**inputs)
                total = clock() - t0
                core = acc["self_attention"] - acc["qkv"]
                samples["total"].append(total)
                samples["embeddings"].append(acc["embeddings"])
                samples["encoder_linears"].append(acc["encoder_linears"])
                samples["attention_core"].append(core)
                samples["other"].append(total - acc["embeddings"] - acc["encoder_linears"] - core)
    finally:
        for h in handles:
            h.remove()
    medians = {k: summarize(v)["median"] for k, v in samples.items()}
    total = medians["total"]
    return {
        "token_count": token_count_label(token_count),
        "repeats": repeats,
        "seconds": medians,
        "fractions": {k: (v / total if total > 0 else None) for k, v in medians.items() if k != "total"},
    }


def encoder_flops_per_token(model: nn.Module, seq: int) -> dict:
    """Multiply-add FLOPs per token of the encoder: linears counted by non-zero weights, attention core
    (Q K^T and probs @ V) by kept head width. Embeddings, pooler and classifier are left out (small)."""
    linear_dense, linear_nnz, attention = 0, 0, 0
    for _, module in iter_encoder_linears(model):
        w = module.weight
        linear_dense += 2 * w.numel()
        linear_nnz += 2 * int(torch.count_nonzero(w))
    lay = Layout(model)
    for layer in lay.layers:
        attention += 2 * 2 * seq * lay.get(layer, "value").out_features
    return {"linear_dense": linear_dense, "linear_nonzero": linear_nnz, "attention_core": attention}
