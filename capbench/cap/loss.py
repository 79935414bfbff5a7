"""The CAP loss composer: CE + contrastive terms of PrC/SnC/FiC + logit KD.

``CapLoss`` is only a loss and its banks; any pruning criterion runs beside it (the training loop adds
``pruner.loss_terms``). Per step it returns already-weighted terms::

    ce          w_ce * CE            (MSE for regression; outputs.loss when the model computed it)
    prc_unsup   w_unsup * L_unsup    against the pre-trained model's bank
    prc_sup     w_sup * L_sup        (omitted for regression tasks, num_labels == 1)
    snc_unsup, snc_sup               against the kept snapshots (absent until the first snapshot)
    fic_unsup, fic_sup               against the fine-tuned teacher's bank
    kd          w_kd * T^2 * KL(teacher || student)   when a teacher is given

as in ``MaskedBertForSequenceClassification.forward`` + the KD block of ``masked_run_glue.py``.
Candidates of a module (``calculate_contrastive_loss``): the detached current batch, the module's
rows of the batch examples (K rows per example for K snapshots), and ``extra_examples // K`` other
examples drawn at random without replacement from the bank (all K rows of each). The self-pair is
masked. Bank rows are plain tensors (never parameters), so no gradient reaches them.
"""

from __future__ import annotations

import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from capbench.cap.banks import MemoryBank, SnapshotBanks, build_bank, to_dtype
from capbench.cap.config import MODULES, CapConfig
from capbench.cap.contrastive import contrastive_log_probs, positive_mask, positive_mean_loss, self_pair_mask
from capbench.cap.representation import model_inputs, represent, resolve_kind
from capbench.distill import kd_loss as distill_kd_loss
from capbench.errors import CapbenchError


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """``T^2 * KL(softmax(t/T) || softmax(s/T))`` with batchmean, as in ``masked_run_glue.py``.

    Deviation for regression (one logit): the softmax of a single logit is 1, so the released KL is
    identically zero there; ``capbench.distill.kd_loss`` uses the MSE between the predictions instead.
    """
    return distill_kd_loss(
        student_logits.float(), teacher_logits.float(), temperature, student_logits.shape[-1] == 1
    )


class CapLoss:
    """CAP loss composer for the flat training loop (``loss_fn`` in ``capbench.training.train``).

    Arguments:
        model: the model being pruned (its pooler is applied to ``outputs.hidden_states[-1]``, and
            snapshots encode the training set with it).
        config: a :class:`CapConfig` (default: the authors' unstructured GLUE settings).
        teacher: the fine-tuned dense model, run under no_grad for KD (and for the FiC bank if
            ``fic_bank`` is not given); None disables KD.
        loader: a sequential loader over the whole train split with ``idx`` (for snapshots and for
            the banks not passed in). Required with SnC.
        prc_bank / fic_bank: prebuilt (e.g. cached) banks. When missing, PrC is encoded from
            ``model`` right now, so the CapLoss must then be created before training or pruning
            changes it (the released code also takes PrC as the epoch-0 encoding of the model being
            pruned); FiC is encoded from ``teacher``.
        train_labels: labels of the train split by row (default: the labels recorded in the banks).
        bank_dir: where memory-mapped banks built here go when ``config.bank_on_disk`` (default: a
            temporary directory removed by :meth:`close`).
        seed: seeds the sampling of extra candidates.
    """

    needs_hidden_states = True

    def __init__(
        self,
        model: torch.nn.Module,
        config: CapConfig | None = None,
        *,
        teacher: torch.nn.Module | None = None,
        loader=None,
        prc_bank: MemoryBank | None = None,
        fic_bank: MemoryBank | None = None,
        train_labels: Tensor | None = None,
        bank_dir: str | Path | None = None,
        seed: int = 0,
        num_labels: int | None = None,
    ):
        self.model = model
        self.config = config or CapConfig()
        self.teacher = teacher
        if teacher is not None:
            teacher.eval()
        self.loader = loader
        self.num_labels = int(num_labels if num_labels is not None else model.config.num_labels)
        self.regression = self.num_labels == 1
        self.kind = resolve_kind(model, self.config.representation)
        self.generator = torch.Generator().manual_seed(int(seed))
        self.dtype = to_dtype(self.config.bank_dtype)
        self._tmpdir = None
        self.bank_dir: Path | None = None
        if self.config.bank_on_disk:
            if bank_dir is None:
                self._tmpdir = tempfile.TemporaryDirectory(prefix="capbench-cap-banks-")
                bank_dir = self._tmpdir.name
            self.bank_dir = Path(bank_dir)

        modules = self.config.modules
        self.banks: dict[str, MemoryBank] = {}
        if "prc" in modules:
            self.banks["prc"] = prc_bank if prc_bank is not None else self._build("prc", model)
        if "fic" in modules:
            if fic_bank is None:
                if teacher is None:
                    raise CapbenchError(
                        "CAP FiC needs the fine-tuned teacher (teacher=) or a prebuilt fic_bank"
                    )
                fic_bank = self._build("fic", teacher)
            self.banks["fic"] = fic_bank
        self.snapshots: SnapshotBanks | None = None
        if "snc" in modules:
            if loader is None:
                raise CapbenchError("CAP SnC needs loader= (a sequential loader over the train split)")
            directory = self.bank_dir / "snapshots" if self.bank_dir is not None else None
            self.snapshots = SnapshotBanks(self.config.max_snapshots, self.dtype, directory)
        for name, bank in self.banks.items():
            stored = bank.meta.get("kind")
            if stored is not None and stored != self.kind:
                warnings.warn(
                    f"CAP {name} bank holds {stored!r} representations but the model uses {self.kind!r}",
                    stacklevel=2,
                )
        sizes = {name: bank.size for name, bank in self.banks.items()}
        if len(set(sizes.values())) > 1:
            raise CapbenchError(f"CAP banks cover different training sets: {sizes}")
        self._train_labels = None if train_labels is None else torch.as_tensor(train_labels).cpu()

        self._pending_snapshot = False
        self._steps_since_capture = 0
        self._examples_since_capture = 0
        self.steps = 0
        self.snapshots_skipped = 0
        self.contrastive_seconds = 0.0
        self.kd_seconds = 0.0
        self.teacher_forward_examples = 0
        self._peak_bytes = self._bank_bytes_total()

    # ------------------------------------------------------------------ banks
    def _build(self, name: str, source: torch.nn.Module) -> MemoryBank:
        if self.loader is None:
            raise CapbenchError(
                f"CAP {name.upper()} bank: pass {name}_bank= or loader= to encode the train split"
            )
        path = self.bank_dir / f"{name}.npy" if self.bank_dir is not None else None
        return build_bank(source, self.loader, self.config.representation, dtype=self.dtype, path=path)

    def _labels_table(self) -> Tensor:
        if self._train_labels is None:
            candidates = [b.labels for b in self.banks.values()]
            if self.snapshots is not None:
                candidates.append(self.snapshots.labels)
            found = [t for t in candidates if t is not None]
            if not found:
                raise CapbenchError(
                    "CAP supervised term needs train labels: pass train_labels= or label the banks"
                )
            self._train_labels = found[0]
        return self._train_labels

    def _module_source(self, name: str):
        """(rows(idx) -> [n, K, H], K, sample(n) -> idx) for a module, or None if it has no rows yet."""
        if name == "snc":
            snaps = self.snapshots
            if snaps is None or len(snaps) == 0:
                return None
            return snaps.get, len(snaps), snaps.sample
        bank = self.banks[name]
        return (lambda i: bank.get(i).unsqueeze(1)), 1, bank.sample

    def _bank_bytes(self) -> dict[str, int]:
        out = {name: bank.nbytes for name, bank in self.banks.items()}
        if self.snapshots is not None:
            out["snc"] = self.snapshots.nbytes
        return out

    def _bank_bytes_total(self) -> int:
        return sum(self._bank_bytes().values())

    # ------------------------------------------------------------------ snapshots
    def capture_snapshot(self, step: int | None = None) -> bool:
        """Encode the train split with the current model into a new SnC bank (if it was trained since
        the last capture: an untouched model would duplicate PrC or the previous snapshot)."""
        self._pending_snapshot = False
        if self.snapshots is None:
            return False
        if self._steps_since_capture == 0:
            self.snapshots_skipped += 1
            return False
        self.snapshots.capture(self.model, self.loader, self.kind, step=step)
        self._steps_since_capture = 0
        self._examples_since_capture = 0
        self._peak_bytes = max(self._peak_bytes, self._bank_bytes_total())
        return True

    def on_epoch_end(self, epoch: int | None = None) -> None:
        """Hook for the end of each epoch. With ``snapshot_on == "epoch"`` the snapshot is taken lazily
        at the next step, so the final epoch costs no useless pass (the released code encodes at the
        start of every epoch >= 1; the model is the same)."""
        if self.snapshots is not None and self.config.snapshot_on == "epoch":
            self._pending_snapshot = True

    def on_pruning_step(self, step: int) -> None:
        """Hook for a discrete pruning step (structured / iterative pruning). With ``snapshot_on ==
        "pruning_step"`` it snapshots now: call it just before the new masks are applied, as the
        released structured code encodes the model retrained at the previous sparsity. With ``snapshot_gap ==
        "epoch"`` a step less than an epoch of examples after the previous snapshot is skipped."""
        if self.snapshots is None or self.config.snapshot_on != "pruning_step":
            return
        if self.config.snapshot_gap == "epoch" and self._examples_since_capture < len(self.loader.dataset):
            self.snapshots_skipped += 1  # less than an epoch since the last snapshot: see CapConfig
            return
        self.capture_snapshot(step)

    # ------------------------------------------------------------------ loss
    def __call__(self, outputs, batch: dict, step: int) -> dict[str, Tensor]:
        cfg = self.config
        if self._pending_snapshot:
            self.capture_snapshot(step)
        elif (
            self.snapshots is not None
            and cfg.snapshot_on == "steps"
            and step > 0
            and step % int(cfg.snapshot_interval) == 0
        ):
            self.capture_snapshot(step)
        self._steps_since_capture += 1
        self._examples_since_capture += len(batch["idx"]) if "idx" in batch else 0
        self.steps += 1

        labels = batch.get("labels")
        terms: dict[str, Tensor] = {"ce": cfg.w_ce * self._task_loss(outputs, labels)}

        start = time.perf_counter()
        if cfg.modules and (cfg.unsup or cfg.sup):
            if "idx" not in batch:
                raise CapbenchError("CAP needs batch['idx'] (the train-split row of each example)")
            z = represent(self.model, outputs, batch.get("attention_mask"), self.kind)
            for name in MODULES:
                if name in cfg.modules:
                    terms.update(self._module_terms(name, z, batch["idx"], labels))
        self.contrastive_seconds += time.perf_counter() - start

        if self.teacher is not None:
            start = time.perf_counter()
            if self.teacher.training:
                self.teacher.eval()
            device = next(self.teacher.parameters()).device
            with torch.no_grad():
                teacher_logits = self.teacher(**model_inputs(batch, device, self.teacher)).logits
            self.teacher_forward_examples += teacher_logits.shape[0]
            student_logits = outputs.logits
            terms["kd"] = cfg.w_kd * kd_loss(
                student_logits, teacher_logits.to(student_logits.device), cfg.kd_temperature
            )
            self.kd_seconds += time.perf_counter() - start
        return terms

    def _task_loss(self, outputs, labels: Tensor | None) -> Tensor:
        loss = getattr(outputs, "loss", None)
        if loss is not None:
            return loss
        if labels is None:
            raise CapbenchError("CAP needs batch['labels'] for the task loss")
        logits = outputs.logits
        if self.regression:
            return F.mse_loss(logits.view(-1).float(), labels.view(-1).float())
        return F.cross_entropy(logits.view(-1, self.num_labels).float(), labels.view(-1).long())

    def _module_terms(self, name: str, z: Tensor, idx: Tensor, labels: Tensor | None) -> dict[str, Tensor]:
        cfg = self.config
        source = self._module_source(name)
        if source is None:
            return {}
        rows_of, k, sample = source
        batch_size, dim = z.shape
        idx_cpu = torch.as_tensor(idx).long().cpu().view(-1)
        rows = rows_of(idx_cpu)
        if rows.shape[-1] != dim:
            raise CapbenchError(
                f"CAP {name} bank has dim {rows.shape[-1]} but the model's representation has {dim}"
            )
        # extra = extra_examples // rep_num in the released code: the number of extra candidate rows
        # stays ~extra_examples however many snapshots there are.
        extra_idx = sample(cfg.extra_examples // k, self.generator)
        extra_rows = rows_of(extra_idx)
        cand = torch.cat(
            [
                z.detach(),
                rows.reshape(batch_size * k, dim).to(z.device, z.dtype),
                extra_rows.reshape(-1, dim).to(z.device, z.dtype),
            ]
        )
        self_mask = self_pair_mask(batch_size, cand.shape[0], torch.arange(batch_size), device=z.device)
        log_probs = contrastive_log_probs(z, cand, cfg.temperature, self_mask)

        out: dict[str, Tensor] = {}
        if cfg.unsup:
            cand_ids = torch.cat([idx_cpu, idx_cpu.repeat_interleave(k), extra_idx.repeat_interleave(k)])
            positives = positive_mask(idx_cpu.to(z.device), cand_ids.to(z.device), self_mask)
            out[f"{name}_unsup"] = cfg.w_unsup * positive_mean_loss(log_probs, positives, cfg.normalization)
        if cfg.sup and not self.regression:
            if labels is None:
                raise CapbenchError("CAP supervised term needs batch['labels']")
            batch_labels = torch.as_tensor(labels).view(-1).long().cpu()
            extra_labels = self._labels_table()[extra_idx].long()
            cand_labels = torch.cat(
                [batch_labels, batch_labels.repeat_interleave(k), extra_labels.repeat_interleave(k)]
            )
            positives = positive_mask(batch_labels.to(z.device), cand_labels.to(z.device), self_mask)
            out[f"{name}_sup"] = cfg.w_sup * positive_mean_loss(log_probs, positives, cfg.normalization)
        return out

    # ------------------------------------------------------------------ accounting
    def cost_report(self) -> dict[str, Any]:
        """Bank memory (bytes) and the extra forward passes CAP spent on banks in this process.

        Banks passed in from a cache report zero build cost. ``teacher_forward_examples`` is the KD
        teacher's per-step cost, which a KD baseline pays as well.
        """
        sources: dict[str, Any] = dict(self.banks)
        if self.snapshots is not None:
            sources["snc"] = self.snapshots
        examples = {n: int(s.forward_examples) for n, s in sources.items()}
        passes = {n: int(s.forward_passes) for n, s in sources.items()}
        seconds = {n: round(float(s.build_seconds), 4) for n, s in sources.items()}
        bank_bytes = self._bank_bytes()
        report: dict[str, Any] = {
            "label": self.config.label(),
            "representation": self.kind,
            "bank_dtype": self.config.bank_dtype,
            "bank_on_disk": self.config.bank_on_disk,
            "bank_bytes": bank_bytes,
            "bank_bytes_total": sum(bank_bytes.values()),
            "bank_bytes_peak": max(self._peak_bytes, sum(bank_bytes.values())),
            "extra_forward_examples": examples,
            "extra_forward_examples_total": sum(examples.values()),
            "extra_forward_passes": passes,
            "extra_forward_passes_total": sum(passes.values()),
            "bank_build_seconds": seconds,
            "bank_build_seconds_total": round(sum(seconds.values()), 4),
            "contrastive_seconds": round(self.contrastive_seconds, 4),
            "kd_seconds": round(self.kd_seconds, 4),
            "teacher_forward_examples": self.teacher_forward_examples,
            "steps": self.steps,
        }
        if self.snapshots is not None:
            report.update(
                snapshots_taken=self.snapshots.taken,
                snapshots_kept=len(self.snapshots),
                snapshots_evicted=self.snapshots.evicted,
                snapshots_skipped=self.snapshots_skipped,
                max_snapshots=self.snapshots.max_snapshots,
            )
        return report

    def close(self) -> None:
        """Drop the snapshot banks and remove the temporary bank directory, if any."""
        if self.snapshots is not None:
            self.snapshots.clear()
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None
