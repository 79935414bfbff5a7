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
examples drawn at random without replacement from the bank's rows outside the batch (all K rows of each).
The self-pair is masked. Bank rows are plain tensors (never parameters), so no gradient reaches them.
The anchor carries the classifier's dropout (``CapConfig.anchor_dropout``, see
``capbench.cap.representation``); bank rows are encoded without it.
"""

from __future__ import annotations

import math
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from capbench.cap.banks import MemoryBank, SnapshotBanks, build_bank, to_dtype
from capbench.cap.config import MODULES, CapConfig
from capbench.cap.contrastive import contrastive_log_probs, positive_mask, positive_mean_loss, self_pair_mask
from capbench.cap.representation import classifier_dropout, represent, resolve_kind
from capbench.distill import kd_loss as distill_kd_loss
from capbench.errors import CapbenchError
from capbench.teacher_logits import TeacherLogits


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """``T^2 * KL(softmax(t/T) || softmax(s/T))`` with batchmean, as in ``masked_run_glue.py``.

    Deviation for regression (one logit): the softmax of a single logit is 1, so the released KL is
    identically zero there; ``capbench.distill.kd_loss`` uses the MSE between the predictions instead.
    """
    return distill_kd_loss(
        student_logits.float(), teacher_logits.float(), temperature, student_logits.shape[-1] == 1
    )


@dataclass
class CapContext:
    """What a :class:`CapLoss` works with besides the model and its :class:`CapConfig`.

    Fields:
        teacher: the fine-tuned dense model, run under no_grad for KD (and for the FiC bank if
            ``fic_bank`` is not given); None disables KD.
        loader: a sequential loader over the whole train split with ``idx`` (for snapshots and for
            the banks not passed in). Required with SnC.
        prc_bank / fic_bank: prebuilt (e.g. cached) banks. When missing, PrC is encoded from the model
            right now, so the CapLoss must then be created before training or pruning changes it (the
            released code also takes PrC as the epoch-0 encoding of the model being pruned); FiC is
            encoded from ``teacher``.
        train_labels: labels of the train split by row (default: the labels recorded in the banks).
        bank_dir: where memory-mapped banks built here go when ``config.bank_on_disk`` (default: a
            temporary directory removed by :meth:`CapLoss.close`).
        seed: seeds the sampling of extra candidates.
        num_labels: default ``model.config.num_labels``.
    """

    teacher: torch.nn.Module | None = None
    loader: Any = None
    prc_bank: MemoryBank | None = None
    fic_bank: MemoryBank | None = None
    train_labels: Tensor | None = None
    bank_dir: str | Path | None = None
    seed: int = 0
    num_labels: int | None = None
    teacher_logits: Any = None  # capbench.teacher_logits.TeacherLogits of ``teacher`` (a cache), if given


@dataclass(frozen=True)
class Candidates:
    """A module's candidate rows for one batch, with the train row (``ids``) each one encodes."""

    rows: Tensor  # [B + B*K + E*K, H]
    ids: Tensor  # [B + B*K + E*K], on CPU
    k: int  # rows per example in the module's bank (K snapshots)
    extra_idx: Tensor  # the E extra examples drawn


class CapLoss:
    """CAP loss composer for the flat training loop (``loss_fn`` in ``capbench.training.train``).

    ``CapLoss(model, config, context)`` or ``CapLoss(model, config, teacher=..., loader=..., ...)`` with the
    fields of :class:`CapContext` as keywords. ``model`` is the model being pruned (its sentence head is
    applied to ``outputs.hidden_states[-1]``, and snapshots encode the training set with it); ``config``
    defaults to the authors' unstructured GLUE settings.
    """

    needs_hidden_states = True
    # Not in a training checkpoint (capbench.checkpoint): set up again, unchanged by training.
    checkpoint_skip = ("config", "banks", "_train_labels", "bank_dir", "_tmpdir", "kind", "dtype")

    def __init__(
        self,
        model: torch.nn.Module,
        config: CapConfig | None = None,
        context: CapContext | None = None,
        **context_fields: Any,
    ):
        ctx = context if context is not None else CapContext(**context_fields)
        self.model, self.config = model, config or CapConfig()
        self.teacher, self.loader = ctx.teacher, ctx.loader
        self.teacher_logits = None
        if self.teacher is not None:
            self.teacher.eval()
            self.teacher_logits = ctx.teacher_logits or TeacherLogits(self.teacher)
        self.num_labels = int(ctx.num_labels if ctx.num_labels is not None else model.config.num_labels)
        self.regression = self.num_labels == 1
        self.kind = resolve_kind(model, self.config.representation)
        self.dropout = classifier_dropout(model) if self.config.anchor_dropout else 0.0
        self.generator = torch.Generator().manual_seed(int(ctx.seed))
        self.dtype = to_dtype(self.config.bank_dtype)
        self._tmpdir = None
        self.bank_dir = self._bank_directory(ctx.bank_dir)
        self.banks = self._initial_banks(ctx)
        # Banks follow the model to its device unless kept on disk or, by option, in host RAM.
        on_host = self.config.bank_on_disk or self.config.bank_on_host
        self.bank_device = None if on_host else next(model.parameters()).device
        if self.bank_device is not None:
            for bank in self.banks.values():
                bank.to(self.bank_device)
        self.snapshots: SnapshotBanks | None = None
        if "snc" in self.config.modules:
            if self.loader is None:
                raise CapbenchError("CAP SnC needs loader= (a sequential loader over the train split)")
            directory = self.bank_dir / "snapshots" if self.bank_dir is not None else None
            self.snapshots = SnapshotBanks(self.config.max_snapshots, self.dtype, directory, self.bank_device)
        self._train_labels = None if ctx.train_labels is None else torch.as_tensor(ctx.train_labels).cpu()
        self._pending_snapshot = False
        self._snapshot_every = self.config.snapshot_interval if self.config.snapshot_on == "steps" else None
        self.planned_snapshots: int | None = None
        self._gap_steps: tuple[int, int] | None = None  # (steps per epoch, steps per snapshot_fraction)
        self._steps_since_capture = self._examples_since_capture = self.steps = self.snapshots_skipped = 0
        self.contrastive_seconds = self.kd_seconds = 0.0
        self.teacher_forward_examples = 0
        self._peak_bytes = self._bank_bytes_total()

    def _bank_directory(self, bank_dir: str | Path | None) -> Path | None:
        if not self.config.bank_on_disk:
            return None
        if bank_dir is None:
            self._tmpdir = tempfile.TemporaryDirectory(prefix="capbench-cap-banks-")
            bank_dir = self._tmpdir.name
        return Path(bank_dir)

    def _initial_banks(self, ctx: CapContext) -> dict[str, MemoryBank]:
        """The PrC and FiC banks (prebuilt, or encoded now), checked to describe the same training set."""
        banks: dict[str, MemoryBank] = {}
        if "prc" in self.config.modules:
            banks["prc"] = ctx.prc_bank if ctx.prc_bank is not None else self._build("prc", self.model)
        if "fic" in self.config.modules:
            if ctx.fic_bank is None and self.teacher is None:
                raise CapbenchError("CAP FiC needs the fine-tuned teacher (teacher=) or a prebuilt fic_bank")
            banks["fic"] = ctx.fic_bank if ctx.fic_bank is not None else self._build("fic", self.teacher)
        for name, bank in banks.items():
            stored = bank.meta.get("kind")
            if stored is not None and stored != self.kind:
                warnings.warn(
                    f"CAP {name} bank holds {stored!r} representations but the model uses {self.kind!r}",
                    stacklevel=3,
                )
        sizes = {name: bank.size for name, bank in banks.items()}
        if len(set(sizes.values())) > 1:
            raise CapbenchError(f"CAP banks cover different training sets: {sizes}")
        return banks

    def attach(self, total_steps: int, steps_per_epoch: int) -> None:
        """Called by the training loop before the first step: plans step-triggered snapshots (every
        ``snapshot_fraction`` of training when an epoch is longer than that) and refuses, in one line, an SnC
        configuration that would take no snapshot on this budget."""
        self.config.check_snapshots(total_steps, steps_per_epoch)
        self._snapshot_every = self.config.snapshot_every(total_steps, steps_per_epoch)
        self.planned_snapshots = self.config.planned_snapshots(total_steps, steps_per_epoch)
        self._gap_steps = (steps_per_epoch, math.ceil(self.config.snapshot_fraction * total_steps))

    def _gap_examples(self) -> float:
        """The examples of training between pruning-step snapshots with ``snapshot_gap="epoch"``: an epoch, or
        ``snapshot_fraction`` of training when an epoch is longer (a budget under one epoch would else never
        snapshot at a pruning step)."""
        epoch = len(self.loader.dataset)
        if self._gap_steps is None:
            return epoch
        per_epoch, fraction_steps = self._gap_steps
        return min(epoch, epoch * fraction_steps / max(1, per_epoch))

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
        if self.snapshots is not None and self.config.snapshot_on == "epoch" and self._snapshot_every is None:
            self._pending_snapshot = True

    def on_pruning_step(self, step: int) -> None:
        """Hook for a discrete pruning step (structured / iterative pruning). With ``snapshot_on ==
        "pruning_step"`` it snapshots now: call it just before the new masks are applied, as the
        released structured code encodes the model retrained at the previous sparsity. With ``snapshot_gap ==
        "epoch"`` a step less than an epoch of examples (or ``snapshot_fraction`` of training, when shorter)
        after the previous snapshot is skipped."""
        if self.snapshots is None or self.config.snapshot_on != "pruning_step":
            return
        if self.config.snapshot_gap == "epoch" and self._examples_since_capture < self._gap_examples():
            self.snapshots_skipped += 1  # less than an epoch since the last snapshot: see CapConfig
            return
        self.capture_snapshot(step)

    # ------------------------------------------------------------------ loss
    def __call__(self, outputs, batch: dict, step: int) -> dict[str, Tensor]:
        every = self._snapshot_every
        if self._pending_snapshot or (
            self.snapshots is not None and every is not None and step > 0 and step % every == 0
        ):
            self.capture_snapshot(step)
        self._steps_since_capture += 1
        self._examples_since_capture += len(batch["idx"]) if "idx" in batch else 0
        self.steps += 1
        return self.importance_terms(outputs, batch)

    def importance_terms(self, outputs, batch: dict) -> dict[str, Tensor]:
        """The step's terms without the bookkeeping of a training step (no snapshot, no step counted): the
        training objective for a structured pruner's importance pass (``capbench.training.importance_pass``)."""
        cfg = self.config
        labels = batch.get("labels")
        terms: dict[str, Tensor] = {"ce": cfg.w_ce * self._task_loss(outputs, labels)}
        start = time.perf_counter()
        if cfg.modules and (cfg.unsup or cfg.sup):
            if "idx" not in batch:
                raise CapbenchError("CAP needs batch['idx'] (the train-split row of each example)")
            z = represent(self.model, outputs, batch.get("attention_mask"), self.kind, self.dropout)
            for name in MODULES:
                if name in cfg.modules:
                    terms.update(self._module_terms(name, z, batch["idx"], labels))
        self.contrastive_seconds += time.perf_counter() - start
        if self.teacher is not None:
            start = time.perf_counter()
            terms["kd"] = cfg.w_kd * self._kd(outputs, batch)
            self.kd_seconds += time.perf_counter() - start
        return terms

    def _kd(self, outputs, batch: dict) -> Tensor:
        before = self.teacher_logits.computed_examples
        teacher_logits = self.teacher_logits(batch)
        self.teacher_forward_examples += self.teacher_logits.computed_examples - before
        student_logits = outputs.logits
        return kd_loss(student_logits, teacher_logits.to(student_logits.device), self.config.kd_temperature)

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

    def candidates(self, name: str, z: Tensor, idx: Tensor) -> Candidates | None:
        """The candidates of module ``name`` for anchors ``z`` of train rows ``idx`` (None: no rows yet).

        Rows: the detached batch, the batch's K bank rows per example (example-major), then the K rows of
        each of ``extra_examples // K`` extra examples drawn outside the batch (``extra = extra_examples //
        rep_num`` in the released code, so the extra rows stay ~extra_examples however many snapshots;
        never the batch's rows, so an anchor's row appears once among its candidates on a small split).
        ``ids[j]`` is the train row that candidate j encodes."""
        source = self._module_source(name)
        if source is None:
            return None
        rows_of, k, sample = source
        batch_size, dim = z.shape
        idx_cpu = torch.as_tensor(idx).long().cpu().view(-1)
        # Bank reads are plain copies of stored fp16/fp32 rows on the CPU: outside any autocast (CPU autocast
        # refuses fp16 tensors in torch.stack); the rows take the representation's dtype below.
        with torch.autocast(device_type="cpu", enabled=False):
            rows = rows_of(idx_cpu)
            if rows.shape[-1] != dim:
                raise CapbenchError(
                    f"CAP {name} bank has dim {rows.shape[-1]} but the model's representation has {dim}"
                )
            extra_idx = sample(self.config.extra_examples // k, self.generator, idx_cpu)
            extra = rows_of(extra_idx).reshape(-1, dim)
        parts = [z.detach(), rows.reshape(batch_size * k, dim), extra]
        return Candidates(
            rows=torch.cat([part.to(z.device, z.dtype) for part in parts]),
            ids=torch.cat([idx_cpu, idx_cpu.repeat_interleave(k), extra_idx.repeat_interleave(k)]),
            k=k,
            extra_idx=extra_idx,
        )

    def _module_terms(self, name: str, z: Tensor, idx: Tensor, labels: Tensor | None) -> dict[str, Tensor]:
        cfg = self.config
        cand = self.candidates(name, z, idx)
        if cand is None:
            return {}
        batch_size = z.shape[0]
        self_mask = self_pair_mask(batch_size, cand.rows.shape[0], torch.arange(batch_size), device=z.device)
        log_probs = contrastive_log_probs(z, cand.rows, cfg.temperature, self_mask)
        out: dict[str, Tensor] = {}
        if cfg.unsup:
            positives = positive_mask(cand.ids[:batch_size].to(z.device), cand.ids.to(z.device), self_mask)
            out[f"{name}_unsup"] = cfg.w_unsup * positive_mean_loss(log_probs, positives, cfg.normalization)
        if cfg.sup and not self.regression:
            if labels is None:
                raise CapbenchError("CAP supervised term needs batch['labels']")
            cand_labels = self.candidate_labels(cand, labels)
            positives = positive_mask(
                cand_labels[:batch_size].to(z.device), cand_labels.to(z.device), self_mask
            )
            out[f"{name}_sup"] = cfg.w_sup * positive_mean_loss(log_probs, positives, cfg.normalization)
        return out

    def candidate_labels(self, cand: Candidates, labels: Tensor) -> Tensor:
        """The label of every candidate: the batch's labels for the batch rows, the train labels for extras."""
        batch_labels = torch.as_tensor(labels).view(-1).long().cpu()
        extra_labels = self._labels_table()[cand.extra_idx].long()
        return torch.cat(
            [batch_labels, batch_labels.repeat_interleave(cand.k), extra_labels.repeat_interleave(cand.k)]
        )

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
                snapshots_planned=self.planned_snapshots,
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
