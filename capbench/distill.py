"""Loss composers: logit knowledge distillation from the dense fine-tuned teacher."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from capbench.teacher_logits import TeacherLogits


@dataclass(frozen=True)
class KDConfig:
    """Defaults of the movement-pruning scripts (Sanh et al. 2020): alpha_ce 0.1, alpha_distil 0.9, T 2."""

    w_ce: float = 0.1
    w_kd: float = 0.9
    temperature: float = 2.0

    def to_dict(self) -> dict:
        return asdict(self)


def kd_loss(student_logits, teacher_logits, temperature: float, regression: bool) -> torch.Tensor:
    if regression:
        return F.mse_loss(student_logits, teacher_logits)
    t = temperature
    return F.kl_div(
        F.log_softmax(student_logits / t, dim=-1),
        F.softmax(teacher_logits / t, dim=-1),
        reduction="batchmean",
    ) * (t * t)


class DistillationLoss:
    """w_ce * CE + w_kd * T^2 * KL(teacher || student); the teacher's logits on the same batch, without grad
    (``capbench.teacher_logits``: computed once per batch, then reused by every student of the teacher)."""

    needs_hidden_states = False
    stateless = True  # calling it changes nothing: the iterative pruner's importance pass may call it

    def __init__(self, teacher, cfg: KDConfig, teacher_logits: TeacherLogits | None = None):
        self.teacher = teacher.eval()
        self.cfg = cfg
        self.regression = teacher.config.num_labels == 1
        # The teacher's logits per batch, reused across the cells of one teacher when given a cache.
        self.teacher_logits = teacher_logits if teacher_logits is not None else TeacherLogits(teacher)

    def __call__(self, outputs, batch, step) -> dict:
        teacher = self.teacher_logits(batch).to(outputs.logits.device)
        return {
            "ce": self.cfg.w_ce * outputs.loss,
            "kd": self.cfg.w_kd * kd_loss(outputs.logits, teacher, self.cfg.temperature, self.regression),
        }
