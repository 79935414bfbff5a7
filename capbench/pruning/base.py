"""The Pruner contract (called by ``capbench.training.train``) and the shared unstructured mechanics.

Call order (see docs/ARCHITECTURE.md)::

    pruner.attach(model, total_steps)          # before the optimizer is built
    optimizer = AdamW([{"params": [p for p in model.parameters() if p not in pruner.score_parameters()]},
                       *pruner.param_groups()])
    for step in range(total_steps):            # ``step`` is 0-based
        loss = sum({**loss_terms, **pruner.loss_terms(step)}.values()); loss.backward()
        clip, optimizer.step(), scheduler.step()
        pruner.after_step(step)                # masks for the next forward: schedule at step + 1
    model = pruner.finalize(model)             # plain nn.Linear (or a compacted model)

``after_step(step)`` sets the masks to the scheduled sparsity at ``step + 1`` (so after the last step the
target is reached, even with no cool-down).  Masked weights are exactly zero in every forward pass.  Methods
whose masked weights can never return (magnitude, random, first_order) also zero them in storage after every
optimizer step.  Movement methods keep the stored value of a masked weight (its gradient is masked, AdamW
decay still applies) because the score of a masked weight keeps learning from ``dL/dW' * W`` and may bring it
back, exactly as in the movement-pruning code; their effective weight ``W * M`` is exactly zero and
``finalize`` bakes it.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from capbench.errors import CapbenchError
from capbench.pruning.criteria import Criterion
from capbench.pruning.masks import MaskedLinear, mask_sparsity, rezero, select_masks, unwrap, wrap
from capbench.pruning.schedule import cubic_ramp, schedule_window
from capbench.pruning.wanda import nm_mask


class Pruner:
    """Base class: a dense no-op pruner. Subclasses implement a method."""

    name = "pruner"
    structured = False  # True for pruners that remove whole heads / neurons (sets accounting's granularity)

    def __init__(self, sparsity: float, options: dict):
        self.target = float(sparsity)
        self.options = dict(options)
        self.model: nn.Module | None = None
        self.total_steps: int | None = None
        self.finalized = False
        self.info: dict = {}  # things that happened (calibration, forced pruning), reported by config()
        # Called with the 0-based step just before a discrete pruning event changes the masks (first_order;
        # with procedure=iterative, with the optimizer steps taken so far, after the importance pass and before
        # each step's masks), e.g. CapLoss.on_pruning_step for CAP's structured snapshots.  Unstructured
        # methods prune a little at every step and do not call it.
        self.on_prune_step = None

    # --- contract -------------------------------------------------------------------------------------
    def attach(self, model: nn.Module, total_steps: int) -> None:
        if self.model is not None:
            raise CapbenchError(f"{self.name} pruner is already attached to a model; make a new pruner")
        self.model = model
        self.total_steps = int(total_steps)
        self.warmup_steps, self.cooldown_steps = schedule_window(
            self.total_steps, self.options.get("warmup", 0), self.options.get("cooldown", 0)
        )

    def score_parameters(self) -> list[nn.Parameter]:
        return []

    def param_groups(self) -> list[dict]:
        return []

    def loss_terms(self, step: int) -> dict[str, torch.Tensor]:
        return {}

    def after_step(self, step: int) -> None:
        pass

    def finalize(self, model: nn.Module) -> nn.Module:
        self.finalized = True
        return model

    def config(self) -> dict:
        out = {"method": self.name, "sparsity": self.target, **_jsonable(self.options)}
        if self.total_steps is not None:
            out.update(
                total_steps=self.total_steps,
                warmup_steps=self.warmup_steps,
                cooldown_steps=self.cooldown_steps,
            )
        out.update(_jsonable(self.info))
        return out

    def current_sparsity(self) -> float:
        return 0.0

    # --- helpers --------------------------------------------------------------------------------------
    def scheduled_sparsity(self, step: int) -> float:
        return cubic_ramp(
            step,
            self.total_steps,
            self.options.get("initial_sparsity", 0.0),
            self.target,
            self.warmup_steps,
            self.cooldown_steps,
        )

    def _require_attached(self) -> None:
        if self.model is None:
            raise CapbenchError(f"{self.name} pruner used before attach(model, total_steps)")


class UnstructuredPruner(Pruner):
    """Per-weight masks from a criterion's scores, thresholded locally or globally along the cubic schedule.

    ``hard=True``: masks only grow (a pruned weight is zeroed in storage and never returns), updated when the
    scheduled sparsity rises, every ``update_every`` steps (Zhu & Gupta's pruning frequency).
    ``hard=False`` (learned scores): masks are recomputed from the scores every ``update_every`` steps.
    """

    def __init__(self, sparsity: float, options: dict, criterion: Criterion, hard: bool):
        super().__init__(sparsity, options)
        self.criterion = criterion
        self.hard = hard
        self.modules: list[MaskedLinear] = []
        self.names: list[str] = []
        self.applied = 0.0  # sparsity the current masks were computed for
        # Learned-score methods (hard=False): per mask update during training, (0-based step, fraction of mask
        # entries flipped, fraction swapped: flipped beyond the change in the kept count, i.e. a pruned weight
        # revived for each kept one pruned); summarised in config()["mask_churn"].
        self.churn: list[tuple[int, float, float]] = []

    @property
    def oneshot(self) -> bool:
        return bool(self.options.get("oneshot", False))

    @property
    def scope(self) -> str:
        return self.options["scope"]

    def attach(self, model: nn.Module, total_steps: int) -> None:
        self.wrap(model, total_steps)
        self.criterion.attach(self.modules)
        start = self.target if self.oneshot else self.scheduled_sparsity(0)
        if start > 0:
            self.update_masks(start)
            if self.hard:
                rezero(self.modules)

    def wrap(self, model: nn.Module, total_steps: int) -> None:
        """``Pruner.attach`` and the prunable linears wrapped as MaskedLinear, all kept: no mask yet (the
        pruners whose masks come from their own pruning steps, oBERT and the calibrated ones, stop here)."""
        Pruner.attach(self, model, total_steps)
        wrapped = wrap(model)
        self.names = [n for n, _ in wrapped]
        self.modules = [m for _, m in wrapped]

    def scheduled_sparsity(self, step: int) -> float:
        return self.target if self.oneshot else super().scheduled_sparsity(step)

    def score_parameters(self) -> list[nn.Parameter]:
        return self.criterion.parameters()

    def param_groups(self) -> list[dict]:
        params = self.score_parameters()
        if not params:
            return []
        return [{"params": params, "lr": float(self.options["score_lr"]), "weight_decay": 0.0}]

    def update_masks(self, sparsity: float, step: int | None = None) -> None:
        scores = [self.criterion.scores(m) for m in self.modules]
        if self.hard:  # never revive a pruned weight
            scores = [
                s.masked_fill(m.mask == 0, -math.inf) for s, m in zip(scores, self.modules, strict=True)
            ]
        pattern = self.options.get("pattern", "unstructured")
        if pattern != "unstructured":
            masks = [pattern_mask(s, sparsity, pattern) for s in scores]
        else:
            masks = select_masks(scores, sparsity, self.scope)
        self.set_masks(masks, None if self.hard else step)
        self.applied = sparsity

    def set_masks(self, masks, step: int | None = None) -> None:
        """Copy boolean ``masks`` into the modules; with a ``step`` (a mask update during training) also
        record the fraction of entries that flipped (``self.churn``): one comparison per matrix, no forward."""
        flipped = resized = 0
        with torch.no_grad():
            for m, keep in zip(self.modules, masks, strict=True):
                if step is not None:
                    old = m.mask.bool()
                    flipped += int((old != keep).sum())
                    resized += abs(int(keep.sum()) - int(old.sum()))
                m.mask.copy_(keep)
        if step is not None:
            total = sum(m.mask.numel() for m in self.modules) or 1
            self.churn.append((int(step), flipped / total, (flipped - resized) / total))

    def _due(self, step: int) -> bool:
        every = int(self.options.get("update_every", 1))
        return (step + 1) % every == 0 or step + 1 >= self.total_steps

    def after_step(self, step: int) -> None:
        self._require_attached()
        if self.finalized:
            return
        s = self.scheduled_sparsity(step + 1)
        if self.hard:
            if s > self.applied and (self._due(step) or s >= self.target):
                self.update_masks(s)
            rezero(self.modules)
        elif (s > 0 or self.applied > 0) and self._due(step):
            self.update_masks(s, step)

    def finalize(self, model: nn.Module) -> nn.Module:
        self._require_attached()
        if not self.finalized:
            if self.applied != self.target:  # training stopped before the schedule reached the target
                self.info["forced_to_target_at_finalize"] = True
                self.update_masks(self.target)
            self.info["achieved_linear_sparsity"] = mask_sparsity(self.modules)
            unwrap(model)
            self.finalized = True
        return model

    def current_sparsity(self) -> float:
        if self.finalized:
            return self.info.get("achieved_linear_sparsity", 0.0)
        return mask_sparsity(self.modules) if self.modules else 0.0

    def config(self) -> dict:
        out = super().config()
        out.update(self.criterion.config())
        out["scope"] = self.scope
        out["schedule"] = "oneshot" if self.oneshot else "cubic"
        if self.churn:
            out["mask_churn"] = churn_summary(self.churn)
        return out


def parse_pattern(pattern: str) -> tuple[int, int]:
    """(N, M) of an "N:M" sparsity pattern; (0, 0) for "unstructured"."""
    if pattern == "unstructured":
        return 0, 0
    n, m = pattern.split(":")
    return int(n), int(m)


def pattern_mask(scores: torch.Tensor, sparsity: float, pattern: str) -> torch.Tensor:
    """The keep mask of an N:M pattern at a point of its ramp: ``floor(sparsity * M)`` of every M consecutive
    weights of a row (along the input dimension) pruned, the lowest scores first, so at the target N/M
    every group holds the pattern (2:4 on the schedule: 4 kept, then 3, then 2).  ``scores``: (out, in)."""
    n, m = parse_pattern(pattern)
    pruned = min(n, int(math.floor(sparsity * m + 1e-9)))
    if pruned == 0:
        return torch.ones_like(scores, dtype=torch.bool)
    return nm_mask(scores, pruned, m)


def churn_summary(churn: list[tuple[int, float, float]]) -> dict:
    """Mask churn of the updates made during training (fraction of mask entries flipped by one update): the
    mean over the first 10%, the middle and the last 10% of the updates (at least one update each), the
    largest and the last value, and the steps of the first and last update; ``swapped``: the same for the
    flips beyond the change in the kept count (while the sparsity ramps up, flipped = newly pruned + swapped).
    An output of the run, not part of the cell's spec."""
    n = len(churn)
    edge = max(1, math.ceil(0.1 * n))

    def mean(xs):
        return round(sum(xs) / len(xs), 6) if xs else None

    def parts(values):
        return {
            "first_10pct": mean(values[:edge]),
            "middle": mean(values[edge : n - edge]),
            "last_10pct": mean(values[-edge:]),
            "max": round(max(values), 6),
            "last": round(values[-1], 6),
        }

    return {
        "updates": n,
        "first_step": churn[0][0],
        "last_step": churn[-1][0],
        **parts([c[1] for c in churn]),
        "swapped": parts([c[2] for c in churn]),
    }


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, bool | int | str) or value is None:
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    return str(value)
