"""One-shot unstructured pruning for timing: a pruned model to measure without training.

Every encoder linear is pruned on its own to the target sparsity (per-matrix top-k, `local_masks`) by one of
capbench's own criteria, through the same mask mechanics the pruning methods use (`wrap`, `unwrap`), so a
`capbench bench --one-shot random --sparsity 0.9` model has exactly the masks a `random` run starts from.
"""

from __future__ import annotations

from torch import nn

from capbench.errors import CapbenchError
from capbench.pruning.criteria import Criterion, MagnitudeCriterion, RandomCriterion
from capbench.pruning.masks import local_masks, mask_sparsity, unwrap, wrap

# Criteria that score without training (movement's scores are learned).
ONE_SHOT_CRITERIA = {
    "magnitude": lambda seed: MagnitudeCriterion(),
    "random": lambda seed: RandomCriterion(seed),
}


def criterion_for(name: str, seed: int = 0) -> Criterion:
    """The named one-shot criterion; CapbenchError naming the known ones otherwise."""
    if name not in ONE_SHOT_CRITERIA:
        raise CapbenchError(
            f"--one-shot {name}: unknown criterion; use one of {', '.join(sorted(ONE_SHOT_CRITERIA))}"
        )
    return ONE_SHOT_CRITERIA[name](seed)


def check_sparsity(sparsity: float) -> None:
    if not 0.0 <= sparsity < 1.0:
        raise CapbenchError(f"--sparsity {sparsity}: must be in [0, 1), e.g. 0.9")


def prune_one_shot(model: nn.Module, criterion: str, sparsity: float, seed: int = 0) -> dict:
    """Prune `model` in place: every encoder linear to `sparsity` by `criterion` (scores drawn with `seed`
    where the criterion is random); the masks are baked into the weights. Returns what was done:
    {"criterion", "sparsity" (target), "achieved", "scope": "local", "seed"}."""
    check_sparsity(sparsity)
    scorer = criterion_for(criterion, seed)
    modules = [m for _, m in wrap(model)]
    scorer.attach(modules)
    for module, mask in zip(modules, local_masks([scorer.scores(m) for m in modules], sparsity), strict=True):
        module.mask.copy_(mask.to(module.mask.dtype))
    achieved = mask_sparsity(modules)
    unwrap(model)
    return {**scorer.config(), "sparsity": sparsity, "achieved": achieved, "scope": "local", "seed": seed}
