"""Faults planted at test time in the methods of the `ci` grid, for the fault gate (tests/test_fault_gate.py).

Each fault is a function that monkeypatches capbench in this process, the way a plausible bug would break
it.  Nothing here is imported by capbench; the gate runs

    python -m tests.faults FAULT capbench-arguments...

which plants FAULT and then runs ``capbench`` with the arguments (``none`` plants nothing).
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F


def inverted_ranking() -> None:
    """Magnitude pruning keeps the smallest weights: the importance ranking turned upside down."""
    from capbench.pruning.criteria import MagnitudeCriterion

    original = MagnitudeCriterion.scores
    MagnitudeCriterion.scores = lambda self, module: -original(self, module)


def mask_not_reapplied() -> None:
    """The mask is not re-applied after the optimizer step: pruned weights are not re-zeroed and the
    forward uses the stored weight, so they keep training until the mask is baked in at the end."""
    from capbench.pruning import base
    from capbench.pruning.masks import MaskedLinear

    base.rezero = lambda modules: None
    MaskedLinear.forward = lambda self, x: F.linear(x, self.weight, self.bias)


def masks_lost_at_save() -> None:
    """Training is right, but the pruned weights are neither zeroed in storage nor masked when the model
    is unwrapped: the evaluated and saved model is not sparse."""
    from capbench.pruning import base, masks

    base.rezero = lambda modules: None
    masks.MaskedLinear.to_linear = _dense_linear


def _dense_linear(self):
    linear = torch.nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
    linear.weight, linear.bias = self.weight, self.bias
    return linear


def teacher_logits_misaligned() -> None:
    """KD distils each example towards another example's teacher logits (a batch cache off by one row)."""
    from capbench.teacher_logits import TeacherLogits

    original = TeacherLogits.__call__
    TeacherLogits.__call__ = lambda self, batch: torch.roll(original(self, batch), 1, dims=0)


def cap_terms_detached() -> None:
    """CAP's contrastive terms are computed and logged but cut from the graph: they train nothing."""
    from capbench.cap.loss import CapLoss

    original = CapLoss._module_terms

    def detached(self, name, z, idx, labels):
        return {k: v.detach() for k, v in original(self, name, z, idx, labels).items()}

    CapLoss._module_terms = detached


def labels_shuffled() -> None:
    """The training batches' labels are shuffled within each batch (a data pipeline that drops the pairing
    of text and label); evaluation is untouched."""
    from capbench import training

    original = training.model_inputs

    def patched(batch, model=None):
        if model is not None and model.training and "labels" in batch:
            labels = batch["labels"]
            generator = torch.Generator().manual_seed(int(labels.numel()))
            batch["labels"] = labels[torch.randperm(labels.numel(), generator=generator)]
        return original(batch, model)

    training.model_inputs = patched


def random_is_magnitude() -> None:
    """The random baseline scores weights by magnitude: a fault that raises a number."""
    from capbench.pruning.criteria import MagnitudeCriterion, RandomCriterion

    RandomCriterion.scores = MagnitudeCriterion.scores


FAULTS = {
    f.__name__: f
    for f in (
        inverted_ranking,
        mask_not_reapplied,
        masks_lost_at_save,
        teacher_logits_misaligned,
        cap_terms_detached,
        labels_shuffled,
        random_is_magnitude,
    )
}


def main(argv: list[str]) -> int:
    fault, *args = argv
    if fault != "none":
        FAULTS[fault]()
    from capbench.cli import main as capbench

    return capbench(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
