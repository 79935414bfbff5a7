"""CAP (Contrastive Pruning, Xu et al., AAAI 2022): contrastive loss, memory banks, loss composer.

CAP is a loss plus banks that wraps any pruning criterion; the pruner is separate.
"""

from capbench.cap.banks import MemoryBank, SnapshotBanks, build_bank, load_or_build_bank
from capbench.cap.config import CapConfig
from capbench.cap.contrastive import supervised_contrastive_loss, unsupervised_contrastive_loss
from capbench.cap.loss import CapContext, CapLoss, kd_loss
from capbench.cap.representation import represent

__all__ = [
    "CapConfig",
    "CapContext",
    "CapLoss",
    "MemoryBank",
    "SnapshotBanks",
    "build_bank",
    "kd_loss",
    "load_or_build_bank",
    "represent",
    "supervised_contrastive_loss",
    "unsupervised_contrastive_loss",
]
