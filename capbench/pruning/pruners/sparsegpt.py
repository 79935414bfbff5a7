"""SparseGPT (Frantar & Alistarh 2023, "SparseGPT: Massive Language Models Can Be Accurately Pruned in
One-Shot", arXiv 2301.00774): one-shot, layer by layer; masks chosen by w²/[H⁻¹]²_jj per column block and the
remaining weights updated by OBS from the layer-input Hessian H = 2XXᵀ of the calibration data, with
dampening.  Defaults from the authors' code, github.com/IST-DASLab/sparsegpt (``opt.py`` arguments,
``sparsegpt.py::SparseGPT.fasterprune``)."""

from __future__ import annotations

from capbench.options import OptionRule
from capbench.pruning.calibration import DEFAULT_CALIBRATION_SIZE
from capbench.pruning.oneshot import CalibratedPruner
from capbench.pruning.pruners import FINETUNED, register_method
from capbench.pruning.sparsegpt import LayerHessian, sparsegpt_prune


class SparseGPTPruner(CalibratedPruner):
    name = "sparsegpt"

    def new_stats(self, module):
        return LayerHessian(module.in_features)

    def solve(self, module, stats):
        n, m = self.pattern
        weight, keep, info = sparsegpt_prune(
            module.weight.detach(),
            stats.matrix,
            self.target,
            prunen=n,
            prunem=m,
            blocksize=int(self.options["blocksize"]),
            percdamp=float(self.options["percdamp"]),
        )
        self.info.setdefault("reconstruction_loss", 0.0)
        self.info["reconstruction_loss"] += float(info["loss"])
        self.info.setdefault("dead_inputs", 0)
        self.info["dead_inputs"] += int(info["dead_inputs"])
        return weight, keep


DEFAULTS = {
    "start": FINETUNED,  # as Wanda: the dense fine-tuned model pruned once, then KD
    "finetune_steps": None,
    "calibration_size": DEFAULT_CALIBRATION_SIZE,  # opt.py --nsamples 128
    "pattern": "unstructured",  # opt.py --prunen 0 --prunem 0; 2:4 and 4:8 as in the paper
    "blocksize": 128,  # opt.py --blocksize 128 (columns per lazy-update block, also the mask-selection block)
    "percdamp": 0.01,  # opt.py --percdamp .01: λ = 0.01 · mean(diag H) added to H's diagonal
}

register_method(
    SparseGPTPruner,
    "SparseGPT: one-shot OBS pruning layer by layer from the calibration Hessian (Frantar & Alistarh 2023)",
    DEFAULTS,
    {
        "blocksize": OptionRule("int", "columns per block of the lazy OBS update and the mask selection", 1),
        "percdamp": OptionRule(
            "float", "dampening, as a fraction of the mean Hessian diagonal", 0, open_low=True
        ),
    },
    source="Frantar & Alistarh 2023 (arXiv 2301.00774); IST-DASLab/sparsegpt opt.py, sparsegpt.py",
)
