"""oBERT, the Optimal BERT Surgeon (Kurtic et al. 2022, "The Optimal BERT Surgeon: Scalable and Accurate
Second-Order Pruning for Large Language Models", arXiv 2203.07259): gradual unstructured pruning during
fine-tuning from the pre-trained model, in a few pruning steps.  Before each step, ``num_grads`` mini-batch
gradients build a block-diagonal empirical-Fisher estimate of the inverse Hessian (Woodbury updates,
``capbench.pruning.fisher``); weights are ranked globally by w²/(2[F⁻¹]_qq) and the remaining weights get the
OBS update; fine-tuning then recovers until the next step, with the learning rate restarted (the recipe's
cyclic schedule).  Defaults from the authors' recipe, neuralmagic/sparseml
``research/optimal_BERT_surgeon_oBERT/recipes/30epochs_unstructured97_mnli.yaml`` (30 epochs: 2 dense, pruning
steps at epochs 2, 6, ..., 26 from 0.7 to the target on a cubic curve, 4 epochs after the last).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader

from capbench.errors import CapbenchError
from capbench.options import OptionRule
from capbench.pruning.base import UnstructuredPruner
from capbench.pruning.criteria import Criterion
from capbench.pruning.fisher import BlockFisherInverse, obs_scores, obs_update
from capbench.pruning.masks import global_masks, mask_sparsity, rezero
from capbench.pruning.pruners import PRETRAINED, register_method
from capbench.training import labels_of, model_inputs


class _OBS(Criterion):
    name = "obs_fisher"


def step_sparsities(target: float, initial: float, steps: int) -> list[float]:
    """Sparsity after each of ``steps`` pruning steps: cubic from ``min(initial, target)`` at the first to the
    target at the last (sparseml's ``inter_func: cubic`` evaluated at the update epochs), each value once.

    Raises CapbenchError when ``steps`` < 1."""
    if steps < 1:
        raise CapbenchError(f"obert: pruning_steps must be at least 1, got {steps}")
    start = min(initial, target)
    out = []
    for k in range(steps):
        t = k / (steps - 1) if steps > 1 else 1.0
        value = round(target + (start - target) * (1 - t) ** 3, 9)
        if not out or value > out[-1]:
            out.append(value)
    return out


class OBertPruner(UnstructuredPruner):
    name = "obert"

    def __init__(self, sparsity: float, options: dict):
        super().__init__(sparsity, options, _OBS(), hard=True)
        self.events: list[dict] = []
        self._finvs: list[BlockFisherInverse] | None = None

    @property
    def oneshot(self) -> bool:
        return False

    @property
    def scope(self) -> str:
        return "global"  # the recipe's global_sparsity: True

    def plan(self, steps_per_epoch: int, epochs: float) -> list[tuple[float, int]]:
        """[(sparsity, optimizer steps after it)]: the dense warm-up (sparsity 0, no pruning step), then one
        phase per pruning step, the run's remaining steps shared evenly (the recipe: 2 of 30 epochs dense,
        then 7 phases of 4 epochs).  Steps at which the sparsity would not grow are merged into the phase
        before (below the recipe's initial 0.7 the first step reaches the target)."""
        total = max(1, round(steps_per_epoch * epochs))
        warmup = self.options["warmup"]
        dense = int(round(warmup * total)) if isinstance(warmup, float) and warmup < 1 else int(warmup)
        dense = min(dense, total - 1)
        first = float(self.options["first_sparsity"])
        sparsities = step_sparsities(self.target, first, int(self.options["pruning_steps"]))
        phases = int(self.options["pruning_steps"])
        per = (total - dense) / phases
        bounds = [dense + round(per * k) for k in range(phases + 1)]
        lengths = [bounds[k + 1] - bounds[k] for k in range(phases)]
        # merge the phases of repeated sparsities (step_sparsities dropped them) into the last kept phase
        kept = len(sparsities)
        lengths = lengths[: kept - 1] + [sum(lengths[kept - 1 :])]
        plan = [(s, n) for s, n in zip(sparsities, lengths, strict=True) if n > 0]
        return ([(0.0, dense)] if dense > 0 else []) + plan

    def attach(self, model: nn.Module, total_steps: int) -> None:
        self.wrap(model, total_steps)  # the masks come from the pruning steps only

    def fisher_bytes(self) -> int:
        """Memory of the Fisher-inverse blocks of every pruned matrix, in bytes (held during a step)."""
        block = int(self.options["fisher_block_size"])
        return sum(BlockFisherInverse.bytes_needed(m.weight.numel(), block) for m in self.modules)

    def collect(self, model: nn.Module, loader: DataLoader, loss_fn=None) -> None:
        """Gradients of ``num_grads`` mini-batches of ``grad_batch_size`` rows (a seeded sample of the train
        split), the model in eval mode, masked by the current masks (sparseml's GradSampler and
        ``OBSPruningParamsScorer.pre_optim_step_update``), added to one ``BlockFisherInverse`` per matrix.
        The loss is the task loss (the model's own)."""
        self._require_attached()
        num_grads, block = int(self.options["num_grads"]), int(self.options["fisher_block_size"])
        damp = float(self.options["damp"])
        self._finvs = [BlockFisherInverse(m.weight.numel(), block, num_grads, damp) for m in self.modules]
        generator = torch.Generator().manual_seed(int(self.options.get("seed", 0)) + len(self.events))
        sampler = torch.utils.data.RandomSampler(
            loader.dataset,
            replacement=True,
            num_samples=num_grads * int(self.options["grad_batch_size"]),
            generator=generator,
        )
        grads = DataLoader(
            loader.dataset,
            batch_size=int(self.options["grad_batch_size"]),
            sampler=sampler,
            collate_fn=loader.collate_fn,
        )
        was_training = model.training
        model.eval()
        # Gradients of the pruned weights only: no embedding, bias or head gradients (a third of the backward).
        trained = [p for p in model.parameters() if p.requires_grad]
        for p in trained:
            p.requires_grad_(False)
        for module in self.modules:
            module.weight.requires_grad_(True)
        try:
            for batch in grads:
                model.zero_grad(set_to_none=True)
                outputs = model(**model_inputs(batch, model), labels=labels_of(batch, model))
                outputs.loss.backward()
                with torch.no_grad():
                    for finv, module in zip(self._finvs, self.modules, strict=True):
                        finv.add_grad((module.weight.grad * module.mask).reshape(-1).float())
        finally:
            model.zero_grad(set_to_none=True)
            for p in trained:
                p.requires_grad_(True)
            model.train(was_training)

    def prune_step(self, step: int, sparsity: float) -> None:
        """Prune to ``sparsity`` (global OBS scores, the already pruned kept at -inf) and apply the OBS update
        of the remaining weights (``capbench.pruning.fisher.obs_update``); needs ``collect`` first."""
        self._require_attached()
        if self._finvs is None:
            raise CapbenchError("obert: prune_step before collect(): no Fisher estimate")
        if self.on_prune_step is not None:
            self.on_prune_step(step)
        with torch.no_grad():
            old = [m.mask.bool() for m in self.modules]
            scores = [
                obs_scores(m.weight.detach().float(), finv, keep)
                for m, finv, keep in zip(self.modules, self._finvs, old, strict=True)
            ]
            masks = global_masks(scores, sparsity)
            for module, finv, before, keep in zip(self.modules, self._finvs, old, masks, strict=True):
                newly = before & ~keep
                if bool(newly.any()):
                    module.weight.copy_(obs_update(module.weight.detach().float(), finv, newly))
                module.mask.copy_(keep)
            rezero(self.modules)
        self._finvs = None  # free the blocks until the next step
        self.applied = sparsity
        self.events.append({"step": int(step), "sparsity": sparsity, "achieved": mask_sparsity(self.modules)})

    def after_step(self, step: int) -> None:
        self._require_attached()
        if not self.finalized:
            rezero(self.modules)

    def config(self) -> dict:
        out = super().config()
        out["schedule"] = "obs_steps"
        out["pruning_events"] = self.events
        if self.modules:
            out["fisher_bytes"] = self.fisher_bytes()
        return out


DEFAULTS = {
    "start": PRETRAINED,  # the recipe fine-tunes bert-base-uncased while pruning (30epochs_gradual_pruning_*.sh)
    # 30epochs_unstructured97_mnli.yaml: start_epoch 2 of 30 (dense warm-up), update_frequency 4 from epoch 2
    # to end_epoch 26 (7 pruning steps), init_sparsity 0.7, inter_func cubic, global_sparsity True.
    "warmup": round(2 / 30, 4),
    "pruning_steps": 7,
    "first_sparsity": 0.7,
    # OBSPruningModifier: num_grads 1024, damp 1e-7, fisher_block_size 50, grad_sampler_kwargs batch_size 16.
    "num_grads": 1024,
    "fisher_block_size": 50,
    "damp": 1e-7,
    "grad_batch_size": 16,
    "seed": 0,
}

RULES = {
    "warmup": OptionRule("steps", "dense fine-tuning before the first pruning step"),
    "pruning_steps": OptionRule("int", "pruning steps (each followed by fine-tuning with a restarted lr)", 1),
    "first_sparsity": OptionRule("float", "sparsity after the first pruning step", 0, 1, open_high=True),
    "num_grads": OptionRule("int", "mini-batch gradients in each empirical Fisher estimate", 1),
    "fisher_block_size": OptionRule("int", "weights per diagonal block of the Fisher estimate", 1),
    "damp": OptionRule("float", "dampening λ of the Fisher estimate (F = λI + mean g gᵀ)", 0, open_low=True),
    "grad_batch_size": OptionRule("int", "rows per gradient of the Fisher estimate", 1),
    "seed": OptionRule("int", "seed of the rows sampled for the gradients", 0, 2**32 - 1),
}

register_method(
    OBertPruner,
    "oBERT: gradual second-order pruning, block empirical-Fisher OBS scores and updates (Kurtic et al. 2022)",
    DEFAULTS,
    RULES,
    source="Kurtic et al. 2022 (arXiv 2203.07259); neuralmagic/sparseml modifier_pruning_obs.py, "
    "research/optimal_BERT_surgeon_oBERT/recipes/30epochs_unstructured97_mnli.yaml",
)
