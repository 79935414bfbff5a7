"""Structured first-order pruning of attention heads and FFN neurons (Michel et al. 2019; CAP's structured
variant), physically compacted at the end.

Criterion (``TaylorUnitImportance``): every head and every FFN neuron gets a gate ``xi`` (value 1 while kept)
multiplying its output (the head's context slice before the attention output projection; the neuron's
activation before the FFN output projection).  Importance = sum over training steps of ``|dL/dxi|``, the
first-order Taylor estimate of the loss change when the unit is removed (Michel et al., eq. 2; like their
``bertology`` script we take the absolute value of each batch's gradient).  Scores are normalised per layer
by their L2 norm (Michel et al., section 4.2) and compared across layers (``scope: global``) or within each
layer (``scope: local``).  They are reset after each pruning event, so each event uses the importance
gathered while retraining since the previous one.

Mechanics: ``prune_steps`` pruning events evenly spaced over the cubic schedule's ramp; at each event the
sparsity is the cubic schedule's, counted in prunable linear *weights*.  Heads and neurons are pruned at
the same fraction where possible (a head weighs ``4 * hidden * head_size`` weights, a neuron ``2 * hidden``);
at least ``min_heads_per_layer`` heads stay in every layer, and when that cap binds, extra neurons are pruned
to meet the weight budget.  With ``ffn_multiple > 1`` the kept FFN width of every layer is a multiple of it
(faster dense kernels, see ../shared/notes/cpu-speed-facts.md).  Pruned units are masked (their rows/columns
zeroed and kept at zero) until ``finalize`` removes them for good (``compact.compact``).

Two procedures (option ``procedure``):

* ``gradual`` (the default): the above, inside one training run with one optimizer; importance is gathered
  from the training steps (train mode, dropout on) since the previous event.
* ``iterative``: the authors' CAP-f procedure (alibaba/AliceMind ``ContrastivePruning/StructuredPruning``).
  ``run_glue.py`` L584-669 loops over the pruning sequence ``--prune_percent 10,20,...,90``
  (``run_glue.sh`` L12, 42: 9 steps of 10%); at each step it (1) computes importance with
  ``prune/prune_utils.py::calculate_head_and_intermediate_importance`` (L58-126): ``model.eval()`` (L71), one
  pass over the whole train set (``--subset_ratio 1.0``, run_glue.sh L44; sequential loader, L86-95), the
  full training loss backpropagated and ``|d loss / d mask|`` summed over batches (L108-111), no optimizer
  step (L112-114 zero the weights' gradients), then scores divided by their per-layer L2 norm
  (``--normalize_pruning_by_layer``, run_glue.sh L43; prune_utils.py L116-121); (2) encodes the train set
  with the current model into the snapshot bank (run_glue.py L621-659) *before* (3) applying the new masks
  (L663-664); (4) retrains ``--retrain_num_train_epochs 2.0`` epochs (run_glue.sh L18, 45) with a fresh
  optimizer and learning-rate schedule (run_glue.py L667-669: ``trainer.optimizer = trainer.lr_scheduler =
  None`` then ``trainer.train()``, i.e. AdamW with ``--warmup_ratio 0.1`` and linear decay over each
  retraining).  Heads and neurons are pruned at the same fraction (``determine_pruning_sequence``,
  prune_utils.py L14-55), heads ranked globally with ``at_least_x_heads_per_layer=1`` (L128-181, run_glue.py
  L216-218), neurons ranked globally (L183-212).  Here: ``plan`` gives the sparsities ``step_sparsity,
  2*step_sparsity, ...`` up to the target (the target last) and the optimizer steps of each retraining
  (``step_epochs`` epochs, or with ``step_epochs=0`` the run's ``--epochs`` shared evenly among the steps);
  the training loop (``capbench.training.train``) runs ``importance_pass`` and ``prune_step`` before each
  retraining.  Deviations: counts are set by the weight budget (rounded, as in ``gradual``) where the
  authors floor ``n * percent / 100`` separately for heads and neurons (the same fractions, so the same
  sparsity to within one unit); the L2 norm is over live units (the authors' includes pruned units, whose
  gate gradient is nonzero in their code and zero here because their weights are masked); the
  ``min_ffn_per_layer`` floor (1 neuron) has no counterpart in the authors' code.  The schedule options
  (``warmup``, ``cooldown``, ``initial_sparsity``, ``prune_steps``) do not apply to ``iterative``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from capbench.layout import Layout
from capbench.pruning.base import Pruner
from capbench.pruning.compact import compact
from capbench.pruning.masks import MaskedLinear, rezero, unwrap, wrap


class TaylorUnitImportance:
    """Gates on heads and FFN neurons; accumulates |dL/dgate| after every backward."""

    def __init__(self, lay: Layout):
        self.layers = layers = lay.layers
        self.head_gates: list[torch.Tensor] = []
        self.ffn_gates: list[torch.Tensor] = []
        self.handles = []
        for layer in layers:
            heads, size = lay.heads(layer)
            width = lay.get(layer, "ffn_in").out_features
            dev = lay.get(layer, "query").weight.device
            hg = torch.ones(heads, device=dev, requires_grad=True)
            fg = torch.ones(width, device=dev, requires_grad=True)
            self.head_gates.append(hg)
            self.ffn_gates.append(fg)
            self.handles.append(lay.get(layer, "attn_out").register_forward_pre_hook(_gate_hook(hg, size)))
            self.handles.append(lay.get(layer, "ffn_out").register_forward_pre_hook(_gate_hook(fg, 1)))
        self.head_scores = [torch.zeros_like(g, requires_grad=False) for g in self.head_gates]
        self.ffn_scores = [torch.zeros_like(g, requires_grad=False) for g in self.ffn_gates]
        self.batches = 0

    def accumulate(self) -> None:
        seen = False
        for gates, scores in ((self.head_gates, self.head_scores), (self.ffn_gates, self.ffn_scores)):
            for g, s in zip(gates, scores, strict=True):
                if g.grad is not None:
                    s.add_(g.grad.detach().abs())
                    g.grad = None
                    seen = True
        self.batches += int(seen)

    def clear_grads(self) -> None:
        """Drop the gates' gradients without scoring them (retraining steps of the iterative procedure)."""
        for g in (*self.head_gates, *self.ffn_gates):
            g.grad = None

    def reset(self) -> None:
        for s in (*self.head_scores, *self.ffn_scores):
            s.zero_()
        self.batches = 0

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []


def _gate_hook(gate: torch.Tensor, repeat: int):
    def hook(module, args):
        x = args[0]
        g = gate.repeat_interleave(repeat) if repeat > 1 else gate
        return (x * g.to(x.dtype), *args[1:])

    return hook


def _normalise(scores: torch.Tensor, alive: torch.Tensor) -> torch.Tensor:
    live = scores[alive]
    norm = float(live.norm()) if live.numel() else 0.0
    return scores / norm if norm > 0 else scores.clone()


def _largest_remainder(
    ideal: list[float], total: int, caps: list[int], floors: list[int], m: int
) -> list[int]:
    """Integers, multiples of m, in [floor, cap] per entry, summing to ``total`` (a multiple of m) if feasible,
    close to ``ideal``."""
    units = [max(f // m, min(c // m, math.floor(x / m))) for x, c, f in zip(ideal, caps, floors, strict=True)]
    left = total // m - sum(units)
    order = sorted(range(len(ideal)), key=lambda i: -(ideal[i] / m - math.floor(ideal[i] / m)))
    while left > 0:
        moved = False
        for i in order:
            if left > 0 and (units[i] + 1) * m <= caps[i]:
                units[i] += 1
                left -= 1
                moved = True
        if not moved:
            break
    while left < 0:
        moved = False
        for i in reversed(order):
            if left < 0 and (units[i] - 1) * m >= floors[i]:
                units[i] -= 1
                left += 1
                moved = True
        if not moved:
            break
    return [u * m for u in units]


PROCEDURES = ("gradual", "iterative")


class FirstOrderPruner(Pruner):
    name = "first_order"
    structured = True  # removes whole heads and FFN neurons

    @property
    def iterative(self) -> bool:
        """The authors' prune-then-retrain steps (see the module docstring), run by the training loop."""
        return self.options.get("procedure", "gradual") == "iterative"

    def step_sparsities(self) -> list[float]:
        """The iterative procedure's sparsities: ``step_sparsity`` increments up to the target (the target
        last), e.g. 0.1, 0.2, ..., 0.9 at a target of 0.9 (run_glue.sh L12 ``PRUNE_SEQUENCE``)."""
        inc = float(self.options.get("step_sparsity", 0.1))
        out, k = [], 1
        while round(k * inc, 9) < self.target - 1e-9:
            out.append(round(k * inc, 9))
            k += 1
        if self.target > 0:
            out.append(self.target)
        return out

    def plan(self, steps_per_epoch: int, epochs: float) -> list[tuple[float, int]] | None:
        """Iterative: [(sparsity of the pruning step, optimizer steps of the retraining after it)], one
        entry per step; None for the gradual procedure (one run of ``ceil(steps_per_epoch * epochs)``)."""
        if not self.iterative:
            return None
        sparsities = self.step_sparsities()
        if not sparsities:
            return None
        per_step = float(self.options.get("step_epochs", 0.0))
        if per_step <= 0:  # the run's budget shared evenly among the steps
            per_step = epochs / len(sparsities)
        steps = max(1, math.ceil(steps_per_epoch * per_step))
        return [(s, steps) for s in sparsities]

    def attach(self, model: nn.Module, total_steps: int) -> None:
        super().attach(model, total_steps)
        wrapped = wrap(model)
        self.modules: list[MaskedLinear] = [m for _, m in wrapped]
        self.layout = lay = Layout(model)
        self.layers = lay.layers
        shapes = [lay.heads(layer) for layer in self.layers]
        self.head_size = shapes[0][1]
        self.hidden = lay.get(self.layers[0], "query").in_features
        if any(s != self.head_size for _, s in shapes):
            raise ValueError("first_order expects the same head size in every layer")
        self.head_alive = [torch.ones(h, dtype=torch.bool) for h, _ in shapes]
        self.ffn_alive = [
            torch.ones(lay.get(layer, "ffn_in").out_features, dtype=torch.bool) for layer in self.layers
        ]
        self.dense_heads = [int(a.numel()) for a in self.head_alive]
        self.dense_ffn = [int(a.numel()) for a in self.ffn_alive]
        self.importance = TaylorUnitImportance(lay)
        self.applied = 0.0
        self.event_log: list[dict] = []
        if self.iterative:  # events come from the training loop's prune_step calls (see ``plan``)
            self.events = []
            return
        self.events = self._event_steps()
        start = self.scheduled_sparsity(0)
        if start > 0:
            self.prune_to(start)

    def _event_steps(self) -> list[int]:
        n = max(1, int(self.options["prune_steps"]))
        w, c, total = self.warmup_steps, self.cooldown_steps, self.total_steps
        ramp = total - w - c
        if ramp <= 0:
            return [min(total, w + 1)]
        return sorted({w + max(1, math.ceil(k * ramp / n)) for k in range(1, n + 1)})

    # --- budget -----------------------------------------------------------------------------------------
    @property
    def head_weights(self) -> int:
        return 4 * self.hidden * self.head_size

    @property
    def neuron_weights(self) -> int:
        return 2 * self.hidden

    def dense_weights(self) -> int:
        return sum(self.dense_heads) * self.head_weights + sum(self.dense_ffn) * self.neuron_weights

    def pruned_weights(self) -> int:
        heads = sum(int((~a).sum()) for a in self.head_alive)
        neurons = sum(int((~a).sum()) for a in self.ffn_alive)
        return heads * self.head_weights + neurons * self.neuron_weights

    def current_sparsity(self) -> float:
        if self.model is None:
            return 0.0
        return self.pruned_weights() / self.dense_weights()

    def _counts(
        self, sparsity: float, heads: list[int], ffn: list[int], pruned: tuple[int, int]
    ) -> tuple[int, int]:
        """(heads, neurons) to have pruned, out of the given dense counts, for a weight sparsity.

        Heads and neurons at the same fraction, heads capped by the per-layer minimum, neurons filling the
        rest of the weight budget; never fewer than already ``pruned`` (masks only grow), and if earlier
        rounding went past the budget, fewer new heads are taken.
        """
        ph, pn = self.head_weights, self.neuron_weights
        min_h, min_n = int(self.options["min_heads_per_layer"]), self._min_ffn()
        max_h = sum(max(0, h - min_h) for h in heads)
        max_n = sum(max(0, f - min_n) for f in ffn)
        budget = sparsity * (sum(heads) * ph + sum(ffn) * pn)
        done_h, done_n = pruned

        def neurons_for(n_heads: int) -> int:
            return max(done_n, min(max_n, int(round((budget - n_heads * ph) / pn))))

        n_heads = max(done_h, min(int(round(sparsity * sum(heads))), max_h))
        n_neurons = neurons_for(n_heads)
        while n_heads > done_h and n_heads * ph + n_neurons * pn - budget > ph / 2:
            n_heads -= 1
            n_neurons = neurons_for(n_heads)
        return n_heads, n_neurons

    def _min_ffn(self) -> int:
        return max(int(self.options["min_ffn_per_layer"]), int(self.options["ffn_multiple"]), 1)

    # --- pruning ----------------------------------------------------------------------------------------
    def prune_to(self, sparsity: float) -> None:
        imp = self.importance
        head_norm = [_normalise(s, a) for s, a in zip(imp.head_scores, self.head_alive, strict=True)]
        ffn_norm = [_normalise(s, a) for s, a in zip(imp.ffn_scores, self.ffn_alive, strict=True)]
        min_h = int(self.options["min_heads_per_layer"])
        if self.options["scope"] == "global":
            pruned = (
                sum(int((~a).sum()) for a in self.head_alive),
                sum(int((~a).sum()) for a in self.ffn_alive),
            )
            n_h, n_f = self._counts(sparsity, self.dense_heads, self.dense_ffn, pruned)
            self._select(self.head_alive, head_norm, n_h, [min_h] * len(self.layers))
            self._select_ffn(ffn_norm, n_f)
        else:
            for i in range(len(self.layers)):
                pruned = (int((~self.head_alive[i]).sum()), int((~self.ffn_alive[i]).sum()))
                n_h, n_f = self._counts(sparsity, [self.dense_heads[i]], [self.dense_ffn[i]], pruned)
                self._select([self.head_alive[i]], [head_norm[i]], n_h, [min_h])
                m, alive = int(self.options["ffn_multiple"]), self.ffn_alive[i]
                if m > 1:  # kept width rounded to a multiple of m, never above the current width
                    keep = int(round((self.dense_ffn[i] - n_f) / m)) * m
                    n_f = self.dense_ffn[i] - max(self._min_ffn(), min(int(alive.sum()), keep))
                self._select([alive], [ffn_norm[i]], n_f, [self._min_ffn()])
        self._apply()
        self.applied = sparsity
        self.event_log.append({"sparsity": round(self.current_sparsity(), 6), "batches": imp.batches})
        imp.reset()

    @staticmethod
    def _select(
        alive: list[torch.Tensor], scores: list[torch.Tensor], n_pruned: int, mins: list[int]
    ) -> None:
        """Prune (in ``alive``, in place) the lowest-scored live units until ``n_pruned`` are pruned in total."""
        need = n_pruned - sum(int((~a).sum()) for a in alive)
        if need <= 0:
            return
        cands = [
            (float(s[j]), i, j)
            for i, (a, s) in enumerate(zip(alive, scores, strict=True))
            for j in torch.nonzero(a).reshape(-1).tolist()
        ]
        cands.sort()
        live = [int(a.sum()) for a in alive]
        for _, i, j in cands:
            if need == 0:
                break
            if live[i] - 1 < mins[i]:
                continue
            alive[i][j] = False
            live[i] -= 1
            need -= 1

    def _select_ffn(self, scores: list[torch.Tensor], n_pruned: int) -> None:
        m = int(self.options["ffn_multiple"])
        min_n = self._min_ffn()
        if m <= 1:
            self._select(self.ffn_alive, scores, n_pruned, [min_n] * len(self.layers))
            return
        # Ideal per-layer counts from the global ranking, then widths rounded to multiples of m.
        trial = [a.clone() for a in self.ffn_alive]
        self._select(trial, scores, n_pruned, [min_n] * len(self.layers))
        ideal = [float(a.sum()) for a in trial]
        total_keep = sum(self.dense_ffn) - n_pruned
        total_keep = int(round(total_keep / m)) * m
        caps = [int(a.sum()) for a in self.ffn_alive]
        keep = _largest_remainder(ideal, total_keep, caps, [min_n] * len(caps), m)
        for alive, s, k in zip(self.ffn_alive, scores, keep, strict=True):
            self._select([alive], [s], alive.numel() - k, [k])

    def _apply(self) -> None:
        size, lay = self.head_size, self.layout
        with torch.no_grad():
            for layer, heads, neurons, hg, fg in zip(
                self.layers,
                self.head_alive,
                self.ffn_alive,
                self.importance.head_gates,
                self.importance.ffn_gates,
                strict=True,
            ):
                rows = heads.repeat_interleave(size).to(hg.device)
                for role in ("query", "key", "value"):
                    mod = lay.get(layer, role)
                    mod.mask.copy_(rows[:, None].expand_as(mod.mask))
                out = lay.get(layer, "attn_out")
                out.mask.copy_(rows[None, :].expand_as(out.mask))
                n = neurons.to(fg.device)
                ffn_in, ffn_out = lay.get(layer, "ffn_in"), lay.get(layer, "ffn_out")
                ffn_in.mask.copy_(n[:, None].expand_as(ffn_in.mask))
                ffn_out.mask.copy_(n[None, :].expand_as(ffn_out.mask))
                hg.copy_(heads.to(hg.dtype))
                fg.copy_(neurons.to(fg.dtype))
        rezero(self.modules)

    # --- the iterative procedure (called by capbench.training.train) --------------------------------------
    def prune_step(self, step: int, sparsity: float) -> None:
        """One step of the iterative procedure, after ``importance_pass``: the snapshot hook (the model
        retrained at the previous sparsity, run_glue.py L621-659), then the new masks (L663-664).
        ``step``: optimizer steps taken so far."""
        self._require_attached()
        if self.on_prune_step is not None:
            self.on_prune_step(step)
        self.events.append(step)
        self.prune_to(sparsity)

    def start_importance_pass(self) -> None:
        """Before the eval-mode pass: scores from this pass only (each call of the authors'
        ``calculate_head_and_intermediate_importance`` starts from zeros, prune_utils.py L74-79)."""
        self.importance.clear_grads()
        self.importance.reset()

    def after_importance_batch(self) -> None:
        """After each backward of the importance pass: add ``|d loss / d gate|`` (prune_utils.py L110-111)."""
        self.importance.accumulate()

    # --- contract ---------------------------------------------------------------------------------------
    def after_step(self, step: int) -> None:
        self._require_attached()
        if self.finalized:
            return
        if self.iterative:  # retraining: importance comes from the eval-mode pass only
            self.importance.clear_grads()
            rezero(self.modules)
            return
        self.importance.accumulate()
        if step + 1 in self.events:
            s = self.scheduled_sparsity(step + 1)
            if s > self.applied:
                if self.on_prune_step is not None:
                    self.on_prune_step(step)
                self.prune_to(s)
        rezero(self.modules)

    def finalize(self, model: nn.Module) -> nn.Module:
        self._require_attached()
        if self.finalized:
            return model
        if self.applied != self.target:
            self.info["forced_to_target_at_finalize"] = True
            self.importance.accumulate()
            self.prune_to(self.target)
        self.importance.remove()
        unwrap(model)
        compact(model, self.head_alive, self.ffn_alive)
        self.info["achieved_linear_sparsity"] = self.current_sparsity()
        self.info["heads_per_layer"] = [int(a.sum()) for a in self.head_alive]
        self.info["ffn_per_layer"] = [int(a.sum()) for a in self.ffn_alive]
        self.finalized = True
        return model

    def config(self) -> dict:
        out = super().config()
        out.update(
            criterion="taylor_first_order",
            normalise="l2_per_layer",
            pruning_event_steps=getattr(self, "events", None),
            pruning_events=getattr(self, "event_log", None),
        )
        return out
