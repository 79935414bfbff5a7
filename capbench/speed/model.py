"""Whole-model latency and throughput: a pruned model in its best kernel formats vs its dense model."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace

import torch
from torch import nn

from capbench.layout import Layout, max_positions, set_path
from capbench.speed.formats import DEFAULT_POLICY, FormatPolicy, KernelFormat, build_formats
from capbench.speed.inputs import ModelInputs, Sentences, model_inputs, random_inputs
from capbench.speed.kernels import iter_encoder_linears, layout_free_output
from capbench.speed.options import DEFAULT_MODEL_TOKEN_COUNTS, parse_token_count, token_count_label
from capbench.speed.timing import Clock, Rounds, resolve_clock, summarize, time_interleaved

MODEL_ROUNDS = Rounds(repeats=5)  # time_models' default: 5 interleaved rounds after 1 warm-up forward


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


def _format_for(name: str, module: nn.Module, wanted: str, policy: FormatPolicy) -> FormatLinear:
    """`module` running format `wanted` ("csr", "bsr16", "compact"...), laid out as `realise` says."""
    family = "bsr" if wanted.startswith("bsr") else wanted
    policy = replace(policy, contiguous=not layout_free_output(name))
    if family == "bsr":
        policy = replace(policy, block_sizes=(int(wanted[3:]),))
    fmt = build_formats(module.weight, module.bias, policy, formats=[family]).get(wanted)
    if fmt is None or not fmt.available:
        raise ValueError(f"{name}: format {wanted} unavailable: {getattr(fmt, 'reason', 'not built')}")
    return FormatLinear(fmt, module.weight, module.bias)


def realise(
    model: nn.Module,
    choices: Mapping[str, str],
    policy: FormatPolicy = DEFAULT_POLICY,
    *,
    inplace: bool = False,
) -> nn.Module:
    """A copy of `model` whose encoder linears named in `choices` run the chosen format ("dense": unchanged).

    Sparse formats return row-major outputs except on `layout_free_output` layers (the FFN input linear),
    whose column-major output feeds the activation and the next linear without a copy.
    """
    if not inplace:
        model = copy.deepcopy(model)
    for name, module in list(iter_encoder_linears(model)):
        wanted = choices.get(name, "dense")
        if wanted != "dense":
            set_path(model, name, _format_for(name, module, wanted, policy))
    return model


def format_counts(model: nn.Module) -> dict[str, int]:
    counts: dict[str, int] = {}
    for _, module in iter_encoder_linears(model):
        name = getattr(module, "format_name", "dense")
        counts[name] = counts.get(name, 0) + 1
    return counts


def check_shape(model: nn.Module, spec) -> tuple[int, int]:
    batch, seq = parse_token_count(spec)
    limit = max_positions(model.config)
    if limit is not None and seq > limit:
        raise ValueError(f"sequence length {seq} exceeds the model's max_position_embeddings {limit}")
    return batch, seq


_SCALED = ("median", "q1", "q3", "iqr", "mad", "min", "max", "mean", "ci_low", "ci_high")


def _per_forward(stats: dict, forwards: int) -> dict:
    """Statistics of a call's seconds -> of one forward's (a call runs `forwards` forwards back to back)."""
    return {k: (v / forwards if k in _SCALED else v) for k, v in stats.items()}


def _model_row(timing: dict, inputs: ModelInputs) -> dict:
    """Latency per forward, throughput (from the median call time) and speedup of each timed model."""
    described = inputs.description
    row = {
        "batch": inputs.batch,
        "seq": inputs.seq,
        "inputs": described,
        "forwards": inputs.forwards,
        "rounds": timing["rounds"],
        "stop": timing["stop"],
        "threads": timing["threads"],
        "models": {},
    }
    for name, t in timing["times"].items():
        call = t["median"]
        speedup = timing["speedup"][name]
        row["models"][name] = {
            "latency_s": _per_forward(t, inputs.forwards),
            "sequences_per_s": described["sequences"] / call if call > 0 else None,
            "tokens_per_s": described["tokens"] / call if call > 0 else None,
            "speedup": speedup["median"],
            "speedup_iqr": speedup["iqr"],
            "speedup_ci": [speedup["ci_low"], speedup["ci_high"]],
            "speedup_ci_coverage": speedup["ci_coverage"],
        }
    return row


def _runs(model: nn.Module, batches: list[dict]) -> Callable[[], None]:
    def run() -> None:
        for batch in batches:
            model(**batch)

    return run


def time_models(
    models: Mapping[str, nn.Module],
    token_counts: Iterable = DEFAULT_MODEL_TOKEN_COUNTS,
    rounds: Rounds = MODEL_ROUNDS,
    *,
    baseline: str | None = None,
    clock: Clock | None = None,
    seed: int = 0,
    sentences: Sentences | None = None,
) -> dict:
    """End-to-end forward latency of each model, interleaved, per batch x sequence shape.

    Each model runs the same inputs (`capbench.speed.inputs.model_inputs`: the sentences in batches of the
    shape's batch size, cut at its sequence length, or random ids of exactly that shape). Returns per shape:
    latency statistics (seconds per forward), throughput (sequences and real tokens per second from the median
    call), the inputs used, why rounds stopped, and the speedup of each model vs `baseline` (median of
    per-round ratios, with its interval).
    """
    baseline = baseline or next(iter(models))
    out: dict = {}
    for spec in token_counts:
        batch, seq = check_shape(models[baseline], spec)
        inputs = {name: model_inputs(m, batch, seq, sentences, seed) for name, m in models.items()}
        fns = {name: _runs(m, inputs[name].batches) for name, m in models.items()}
        for m in models.values():
            m.eval()
        with torch.inference_mode():
            timing = time_interleaved(fns, rounds, baseline=baseline, number=1, clock=clock)
        out[token_count_label(spec)] = _model_row(timing, inputs[baseline])
    return out


_PARTS = ("total", "embeddings", "encoder_linears", "attention_core", "other")


class _PartTimer:
    """Forward hooks adding each hooked module's time to its parts: embeddings, every encoder linear
    ("encoder_linears", Q/K/V also "qkv") and every self-attention module ("self_attention")."""

    def __init__(self, model: nn.Module, clock: Clock):
        self.clock = clock
        self.acc = dict.fromkeys(("embeddings", "encoder_linears", "self_attention", "qkv"), 0.0)
        self.starts: dict[int, float] = {}
        self.handles: list = []
        lay = Layout(model)
        linears = {id(m): m for _, m in iter_encoder_linears(model)}
        self._hook(lay.embeddings, "embeddings")
        for layer in lay.layers:
            self._hook(lay.attention(layer), "self_attention")
            for role in ("query", "key", "value"):
                proj = linears.pop(id(lay.get(layer, role)), None)
                if proj is not None:
                    self._hook(proj, "encoder_linears", "qkv")
        for module in linears.values():
            self._hook(module, "encoder_linears")

    def _hook(self, module: nn.Module, *keys: str) -> None:
        def pre(mod, args):
            self.starts[id(mod)] = self.clock()

        def post(mod, args, output):
            elapsed = self.clock() - self.starts.pop(id(mod))
            for key in keys:
                self.acc[key] += elapsed

        self.handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]

    def forward(self, model: nn.Module, inputs: dict) -> dict[str, float]:
        """One timed forward: seconds of each of `_PARTS` (attention core = self-attention minus Q/K/V)."""
        for key in self.acc:
            self.acc[key] = 0.0
        t0 = self.clock()
        model(**inputs)
        total = self.clock() - t0
        acc = self.acc
        core = acc["self_attention"] - acc["qkv"]
        other = total - acc["embeddings"] - acc["encoder_linears"] - core
        return dict(zip(_PARTS, (total, acc["embeddings"], acc["encoder_linears"], core, other), strict=True))

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def time_breakdown(
    model: nn.Module,
    token_count="32x128",
    *,
    repeats: int = 3,
    warmup: int = 1,
    clock: Clock | None = None,
    seed: int = 0,
    inputs: dict | None = None,
) -> dict:
    """Where one forward's time goes: embeddings, encoder linears, attention core, the rest.

    Forward hooks time the embeddings, every encoder linear (in whatever format it runs) and every
    self-attention module; the attention core is self-attention minus its Q/K/V projections (scores,
    softmax, weighted sum, reshapes). "other" is the rest of the forward: layer norms, activations, residual
    adds, pooler and classifier, Python overhead. Seconds are medians over `repeats` forwards; fractions are
    of the median total. `inputs`: one batch to run (default: random ids of `token_count`).
    """
    if inputs is None:
        batch, seq = check_shape(model, token_count)
        inputs = random_inputs(model, batch, seq, seed).batches[0]
    model.eval()
    timer = _PartTimer(model, resolve_clock(clock))
    try:
        with torch.inference_mode():
            for _ in range(warmup):
                model(**inputs)
            forwards = [timer.forward(model, inputs) for _ in range(repeats)]
    finally:
        timer.remove()
    medians = {part: summarize([f[part] for f in forwards])["median"] for part in _PARTS}
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
