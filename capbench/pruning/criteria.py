"""Importance criteria: one score per prunable weight, higher = more important.

A criterion only scores; the mechanics in ``masks``/``base`` turn scores into masks (local or global top-k,
or a sigmoid threshold) along the schedule.  The structured first-order criterion scores whole heads and FFN
neurons and lives in ``structured.py``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from capbench.pruning.masks import MaskedLinear


class Criterion:
    name = "criterion"
    learned = False  # True when the scores are Parameters trained by the optimizer

    def attach(self, modules: Sequence[MaskedLinear]) -> None:
        self.modules = list(modules)

    def scores(self, module: MaskedLinear) -> torch.Tensor:
        raise NotImplementedError

    def parameters(self) -> list[nn.Parameter]:
        return []

    def config(self) -> dict:
        return {"criterion": self.name}


class MagnitudeCriterion(Criterion):
    """|W| (Zhu & Gupta 2017; movement pruning's MagnitudeBinarizer)."""

    name = "magnitude"

    def scores(self, module: MaskedLinear) -> torch.Tensor:
        return module.weight.detach().abs()


class RandomCriterion(Criterion):
    """Uniform random scores drawn once at attach (ShrinkBench's random baseline)."""

    name = "random"

    def __init__(self, seed: int = 0):
        self.seed = int(seed)

    def attach(self, modules: Sequence[MaskedLinear]) -> None:
        super().attach(modules)
        gen = torch.Generator().manual_seed(self.seed)
        self._scores = {id(m): torch.rand(m.weight.shape, generator=gen).to(m.weight.device) for m in modules}

    def scores(self, module: MaskedLinear) -> torch.Tensor:
        return self._scores[id(module)]

    def config(self) -> dict:
        return {"criterion": self.name, "seed": self.seed}


class MovementCriterion(Criterion):
    """Learned scores S, one per weight, trained through the straight-through estimator:
    dL/dS = dL/dW' * W accumulates -W * dL/dW, the "movement" of the weight away from zero (Sanh et al. 2020).
    Initialised to a constant (``mask_init=constant``, ``mask_scale=0`` in the movement-pruning scripts)."""

    name = "movement"
    learned = True

    def __init__(self, init: float = 0.0):
        self.init = float(init)

    def attach(self, modules: Sequence[MaskedLinear]) -> None:
        super().attach(modules)
        for m in modules:
            m.scores = nn.Parameter(torch.full_like(m.weight, self.init, requires_grad=True))

    def scores(self, module: MaskedLinear) -> torch.Tensor:
        return module.scores.detach()

    def parameters(self) -> list[nn.Parameter]:
        return [m.scores for m in self.modules if m.scores is not None]

    def config(self) -> dict:
        return {"criterion": self.name, "score_init": self.init}
