"""Floor models: broken encoders that a valid probe must score near zero retention.

- ``random weights``: the reference's architecture (same config, same tokenizer) freshly initialised, seed
  `FLOOR_SEED`: nothing pre-trained survives, embeddings included;
- ``zeroed encoder``: the reference with every encoder linear weight set to zero (what 100% sparsity leaves):
  biases, layer norms and the embeddings remain, and the embeddings still reach every layer through the
  residual path, so its features are the embeddings' and its retention should be about 0.

A probe on which either floor reaches a retention above 0.5 cannot tell a pruned encoder from a broken one
(tests/test_probe_validity.py checks the default probe set; the leaderboard shows both as floor rows).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn

from capbench.layout import Layout

FLOOR_SEED = 0


def random_weights(model: nn.Module) -> nn.Module:
    """A freshly initialised model of `model`'s class and config (seeded; `model` is left unchanged)."""
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(FLOOR_SEED)
        fresh = type(model)(copy.deepcopy(model.config))
    finally:
        torch.random.set_rng_state(state)
    return fresh.eval()


def zeroed_encoder(model: nn.Module) -> nn.Module:
    """A copy of `model` with every encoder linear weight zeroed (the six per layer of capbench.layout);
    biases, layer norms, embeddings, pooler and head kept."""
    zeroed = copy.deepcopy(model)
    with torch.no_grad():
        for _, linear in Layout(zeroed).linears():
            linear.weight.zero_()
    return zeroed.eval()


FLOORS: dict[str, Callable[[nn.Module], nn.Module]] = {
    "random weights": random_weights,
    "zeroed encoder": zeroed_encoder,
}
