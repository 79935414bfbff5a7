"""Why movement pruning collapses MiniLM at sparsity 0.9 on SST-2 (docs/presets.md, "Movement pruning at these
budgets"). An analysis script, not part of capbench: it reads pruned models that ``capbench run`` saved.

    # the models (ci budget, seed 0; about 10 minutes on 2 cores)
    capbench run --tasks sst2 --methods magnitude,movement --sparsity 0.9 --seeds 0 --preset ci \\
        --data-dir ../shared/glue --out runs/movement-ci
    # the diagnostic variant: movement whose score gradient sees centred inputs (below), same cell otherwise
    python docs/experiments/movement_collapse.py centred run --tasks sst2 --methods movement --sparsity 0.9 \\
        --seeds 0 --preset ci --data-dir ../shared/glue --out runs/movement-ci-centred
    # the tables
    python docs/experiments/movement_collapse.py report runs/movement-ci/models/* runs/movement-ci-centred/models/*

``report`` prints, per encoder linear and model:

* coherence: for each output unit i, |sum_j W_ij m_j| / sum_j |W_ij m_j| over the kept weights, where W is the
  *pre-trained* weight (so only the mask differs between models) and m the mean over tokens of the linear's
  input in the pre-trained model on 64 SST-2 train sentences; averaged over units. 1: every kept term pushes
  the unit the same way on the mean input, so the unit writes a large input-independent value; kept terms of
  mixed sign cancel.
* in each trained model on 64 SST-2 validation sentences: the token-averaged norm of W'x split into its
  input-dependent part (|W'x - mean_t W'x|) and its constant part (|W' mean_t x|).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from torch.nn import functional as F

SHARED = Path(__file__).resolve().parents[3] / "shared" / "glue" / "sst2"


def _sentences(split: str, n: int = 64) -> list[str]:
    with open(SHARED / f"{split}.jsonl") as f:
        return [json.loads(line)["sentence"] for line, _ in zip(f, range(n), strict=False)]


def _linear_inputs(model, enc, prefix: str) -> dict[str, torch.Tensor]:
    """Each encoder linear's inputs over the real (unpadded) tokens: name -> (tokens, in_features)."""
    keep = enc["attention_mask"].bool()
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        mod.register_forward_pre_hook(lambda _m, inp, n=n: seen.__setitem__(n[len(prefix) :], inp[0][keep]))
        for n, mod in model.named_modules()
        if isinstance(mod, torch.nn.Linear) and ".encoder." in f".{n}"
    ]
    with torch.no_grad():
        model(**enc)
    for h in hooks:
        h.remove()
    return seen


def report(model_dirs: list[str]) -> None:
    from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

    from capbench.models import DEFAULT_MODEL, offline_model_path

    torch.set_num_threads(1)
    path = str(offline_model_path(DEFAULT_MODEL))
    tok = AutoTokenizer.from_pretrained(path)
    pre = AutoModel.from_pretrained(path).eval()
    pre_w = {n: p.detach() for n, p in pre.named_parameters()}
    train = tok(_sentences("train"), padding=True, return_tensors="pt")
    mean_in = {n: x.mean(0) for n, x in _linear_inputs(pre, train, "").items()}
    dev = tok(_sentences("validation"), padding=True, return_tensors="pt")
    names = [f"{Path(d).parent.parent.name}/{Path(d).name.split('-seed')[0]}" for d in model_dirs]
    print("coherence of the kept pre-trained weights on the mean input | varying / constant norm of W'x")
    print(f"{'linear':36s} " + " | ".join(f"{n[:40]:>40s}" for n in names))
    rows: list[list[float]] = [[] for _ in names]
    models = [AutoModelForSequenceClassification.from_pretrained(d).eval() for d in model_dirs]
    inputs = [_linear_inputs(m, dev, "bert.") for m in models]
    for lin, m in mean_in.items():
        cells = []
        for k, (model, xs) in enumerate(zip(models, inputs, strict=True)):
            w_trained = model.get_parameter(f"bert.{lin}.weight").detach()
            t = pre_w[f"{lin}.weight"] * (w_trained != 0) * m
            coherence = (t.sum(1).abs() / t.abs().sum(1).clamp_min(1e-12)).mean().item()
            x = xs[lin]
            wx = x @ w_trained.T
            varying = (wx - wx.mean(0)).norm(dim=1).mean().item()
            constant = (x.mean(0) @ w_trained.T).norm().item()
            rows[k].append(coherence)
            cells.append(f"{coherence:8.3f} {varying:13.2f} / {constant:7.2f}       ")
        print(f"{lin[len('encoder.') :]:36s} " + " | ".join(f"{c:>40s}" for c in cells))
    print(f"{'mean coherence':36s} " + " | ".join(f"{sum(v) / len(v):8.3f}{'':32s}" for v in rows))


def centred(argv: list[str]) -> int:
    """``capbench`` with one change to movement's scores: dL/dS = (delta^T (x - mean_t x)) * W instead of
    (delta^T x) * W, the token mean of each batch removed from the input the score gradient sees. The weights,
    masks, schedule and everything else are capbench's. A diagnostic, not a method: it tests whether the mean
    input's pull on the scores drives the collapse."""
    from capbench.cli import main
    from capbench.pruning import masks

    capbench_forward = masks.MaskedLinear.forward

    def forward(self, x):
        if self.scores is None or not torch.is_grad_enabled():
            return capbench_forward(self, x)
        y = F.linear(x, self.weight * self.mask, self.bias)  # the weights' gradient as before
        xc = x.detach() - x.detach().reshape(-1, x.shape[-1]).mean(0)
        ws = masks._MaskedWeight.apply(self.weight.detach(), self.scores, self.mask)
        return y + F.linear(xc, ws - ws.detach())  # zero in value; carries the scores' gradient only

    masks.MaskedLinear.forward = forward
    return main(argv)


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "report":
        report(sys.argv[2:])
    elif len(sys.argv) > 2 and sys.argv[1] == "centred":
        sys.exit(centred(sys.argv[2:]))
    else:
        sys.exit("usage: movement_collapse.py report MODEL_DIR... | centred CAPBENCH_ARGS...")
