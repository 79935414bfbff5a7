"""Soft movement pruning (Sanh et al. 2020), with its threshold calibrated to the target sparsity.

Defaults: huggingface/transformers ``examples/research_projects/movement-pruning`` (README commands,
``masked_run_glue.py``, ``emmental/modules/binarizer.py``), cited next to each below.

Mechanics of the movement-pruning code (``pruning_method=sigmoied_threshold``, ``regularization=l1``):

* mask ``M = 1[sigmoid(S) > tau]`` with a straight-through gradient to the scores ``S``; at least 0.5% of
  every matrix is kept (``ThresholdBinarizer``'s floor);
* ``tau`` ramps cubically from ``tau_initial`` to ``tau_final`` on the shared warmup/cool-down window
  (``schedule_threshold``);
* loss term ``lambda_t * mean_over_matrices(sum(sigmoid(S)) / numel)`` with
  ``lambda_t = final_lambda * tau_t / tau_final`` (``regularization`` and ``schedule_threshold``).

The sparsity this reaches is an outcome of ``final_lambda`` (hence the paper's lambda tables), and the right
lambda depends on the model: the penalty gradient per score is ``lambda * sigmoid'(S) / (numel * n_matrices)``
while the task gradient scale varies with model and task, and under Adam only their ratio matters.

Calibration (``calibrate: true``, the default; ``false`` is the paper's method unchanged).  At every step the
threshold is set to the value that prunes exactly the cubic schedule's sparsity ``s_t`` (shared by all
methods): ``tau_eff = sigmoid(global s_t-quantile of S)``, keeping the 0.5% floor.  The penalty and its
schedule are untouched: it still pushes scores down and decides, with the movement signal, which weights sink
below the threshold; only the cut position is calibrated, so the achieved sparsity is the target (minus the
floor's few weights).  This is a global top-k on ``S`` with the L1 term, and it is reported as such in
``config()["calibration"]``: ``mode: "threshold"``, the effective final threshold ``tau_effective`` next to
the nominal ``tau_final``, and ``sparsity_at_nominal_tau``, the sparsity the uncalibrated threshold would give
with the trained scores.

We first tried calibrating ``lambda`` online (a feedback controller on the sparsity error).  On small models
the uniform push of the L1 term under Adam made every score cross the threshold together (sparsity jumped
from 0 to the 99.5% floor with lambda as low as 1), so the threshold calibration was kept instead.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from capbench.options import OptionRule
from capbench.pruning.base import Pruner, UnstructuredPruner
from capbench.pruning.criteria import MovementCriterion
from capbench.pruning.masks import global_masks, keep_top, mask_sparsity, unwrap, wrap
from capbench.pruning.pruners import SCHEDULE, register_method
from capbench.pruning.schedule import cubic_ramp


class SoftMovementPruner(UnstructuredPruner):
    name = "soft_movement"

    def __init__(self, sparsity: float, options: dict):
        super().__init__(sparsity, options, MovementCriterion(options["score_init"]), hard=False)
        self.tau = float(options["tau_initial"])
        self.tau_effective: float | None = None

    @property
    def scope(self) -> str:
        return "global"  # one threshold for every matrix

    @property
    def calibrated(self) -> bool:
        return bool(self.options["calibrate"])

    def attach(self, model: nn.Module, total_steps: int) -> None:
        Pruner.attach(self, model, total_steps)
        wrapped = wrap(model)
        self.names = [n for n, _ in wrapped]
        self.modules = [m for _, m in wrapped]
        self.criterion.attach(self.modules)
        self._update(0)

    # --- schedule ---------------------------------------------------------------------------------------
    def tau_at(self, step: int) -> float:
        o = self.options
        return cubic_ramp(
            step, self.total_steps, o["tau_initial"], o["tau_final"], self.warmup_steps, self.cooldown_steps
        )

    def lambda_at(self, step: int) -> float:
        o = self.options
        ramp = self.tau_at(step) / o["tau_final"] if o["tau_final"] > 0 else 1.0
        return float(o["final_lambda"]) * ramp

    # --- contract ---------------------------------------------------------------------------------------
    def loss_terms(self, step: int) -> dict[str, torch.Tensor]:
        self._require_attached()
        lam = self.lambda_at(step)
        if lam == 0 or self.finalized:
            return {}
        reg = sum(torch.sigmoid(m.scores).sum() / m.scores.numel() for m in self.modules) / len(self.modules)
        return {"soft_movement_l1": lam * reg}

    def after_step(self, step: int) -> None:
        self._require_attached()
        if not self.finalized and self._due(step):
            self._update(step + 1, churn_step=step)

    def finalize(self, model: nn.Module) -> nn.Module:
        self._require_attached()
        if self.finalized:
            return model
        tau_final = float(self.options["tau_final"])
        nominal = self._threshold_masks(tau_final)  # what the uncalibrated method gives with these scores
        self._update(self.total_steps)
        self.info["achieved_linear_sparsity"] = mask_sparsity(self.modules)
        self.info["calibration"] = {
            "mode": "threshold" if self.calibrated else "none",
            "tau_final": tau_final,
            "tau_effective": self.tau_effective if self.calibrated else tau_final,
            "sparsity_at_nominal_tau": nominal,
        }
        unwrap(model)
        self.finalized = True
        return model

    # --- masks ------------------------------------------------------------------------------------------
    def _update(self, step: int, churn_step: int | None = None) -> None:
        """Masks for the forward of ``step``; ``churn_step``: the training step whose update this is (its
        mask churn is recorded)."""
        self.tau = self.tau_at(step)
        if self.calibrated:
            self._quantile_masks(self.scheduled_sparsity(step), churn_step)
        else:
            self._threshold_masks(self.tau, churn_step)

    def _floor(self, keep: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        nb_min = int(self.options["min_keep"] * scores.numel()) + 1
        if int(keep.sum()) < nb_min:
            keep = keep_top(scores, nb_min)
        return keep

    def _threshold_masks(self, tau: float, churn_step: int | None = None) -> float:
        with torch.no_grad():
            masks = [
                self._floor(torch.sigmoid(s) > tau, s) for s in (m.scores.detach() for m in self.modules)
            ]
        self.set_masks(masks, churn_step)
        self.applied = mask_sparsity(self.modules)
        return self.applied

    def _quantile_masks(self, sparsity: float, churn_step: int | None = None) -> float:
        scores = [m.scores.detach() for m in self.modules]
        masks = global_masks(scores, sparsity)
        cut = -math.inf
        with torch.no_grad():
            for s, keep in zip(scores, masks, strict=True):
                if bool((~keep).any()):
                    cut = max(cut, float(s[~keep].max()))
            floored = [self._floor(keep, s) for s, keep in zip(scores, masks, strict=True)]
        self.set_masks(floored, churn_step)
        self.tau_effective = float(torch.sigmoid(torch.tensor(cut))) if math.isfinite(cut) else 0.0
        self.applied = mask_sparsity(self.modules)
        return self.applied


DEFAULTS = {
    **SCHEDULE,
    "score_lr": 1e-2,  # --mask_scores_learning_rate 1e-2
    "score_init": 0.0,  # --mask_init constant --mask_scale 0.
    "tau_initial": 0.0,  # --initial_threshold 0
    "tau_final": 0.1,  # --final_threshold 0.1 (sigmoid space)
    "final_lambda": 400.0,  # --regularization l1 --final_lambda 400. (README, SQuAD)
    "min_keep": 0.005,  # ThresholdBinarizer keeps at least 0.5% of each matrix
    # capbench's calibration: the threshold follows the sparsity schedule (see the module docstring);
    # calibrate=false is the paper's method, whose sparsity is whatever final_lambda gives.
    "calibrate": True,
    "update_every": 1,
}

RULES = {
    "tau_initial": OptionRule("float", "initial sigmoid threshold", 0, 1, open_high=True),
    "tau_final": OptionRule("float", "final sigmoid threshold", 0, 1, open_high=True),
    "final_lambda": OptionRule("float", "final L1 weight on the scores", 0),
    "min_keep": OptionRule("float", "fraction of each matrix always kept", 0, 1),
    "calibrate": OptionRule("bool", "the threshold follows the sparsity schedule"),
}

register_method(
    SoftMovementPruner,
    "soft movement pruning: sigmoid threshold + L1 on the scores (Sanh et al. 2020); the "
    "threshold is calibrated to the sparsity schedule",
    DEFAULTS,
    RULES,
    source="Sanh et al. 2020 (arXiv 2005.07683); movement-pruning ThresholdBinarizer; CAP authors' UnstructuredPruning",
)
