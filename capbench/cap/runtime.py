"""Build a cell's CapLoss: PrC and FiC banks cached on disk per (model, task, data, seed), like the teacher."""

from __future__ import annotations

import hashlib
import json

from capbench.cap.banks import load_or_build_bank
from capbench.cap.config import CapConfig
from capbench.cap.loss import CapContext, CapLoss
from capbench.device import model_device
from capbench.models import weights_digest
from capbench.training import TrainConfig, eval_loader


def _bank_dir(ctx, role: str, model_digest: str, data, spec, cfg: CapConfig):
    key = {
        "role": role,
        "weights": model_digest,
        "train_rows": data.train._fingerprint,  # datasets' content fingerprint of the tokenized split
        "max_seq_length": spec.max_seq_length,
        "representation": cfg.representation,
        "dtype": cfg.bank_dtype,
        "batches": "length-sorted",  # banks of the older in-order batches differ in the last float bits
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    return ctx.cache_dir / "cap_banks" / digest, key


def cap_loss_for_cell(spec, model, teacher, data, ctx, teacher_logits=None) -> CapLoss:
    """The CAP loss composer of a cell; `model` is the pre-trained model about to be pruned (epoch 0 = PrC)."""
    cfg = CapConfig.from_options(spec.cap)
    # Banks (PrC, FiC, SnC snapshots) encode every train row once: rows sorted by length pad least (on the
    # ci grid's 8,000 SST-2 rows: 111k padded tokens against 386k in order). Rows land by their `idx`.
    loader, _ = eval_loader(
        data.train, data.tokenizer, TrainConfig(**spec.train).eval_batch_size, model_device(model)
    )
    banks = {}
    for role, source in (("prc", model), ("fic", teacher)):
        if role not in cfg.modules:
            continue
        directory, meta = _bank_dir(ctx, role, weights_digest(source), data, spec, cfg)
        banks[f"{role}_bank"] = load_or_build_bank(
            source,
            loader,
            cfg.representation,
            directory,
            dtype=cfg.bank_dtype,
            mmap=cfg.bank_on_disk,
            meta={k: v for k, v in meta.items() if k != "dtype"},
        )
    return CapLoss(
        model,
        cfg,
        CapContext(teacher=teacher, loader=loader, seed=spec.seed, teacher_logits=teacher_logits, **banks),
    )


def check_snapshot_budgets(method_specs: dict, tasks, source, preset) -> None:
    """Before any cell starts: refuse (one line) a CAP method with SnC on that would take no snapshot on some
    task's budget (train rows after --max-train-examples, --batch-size, --epochs). Pruning-step snapshots
    depend on the pruner's events and are not checked here."""
    import math

    from capbench.data.sources import load_split

    configs = {
        method: CapConfig.from_options(cap)
        for method, (_, _, cap) in method_specs.items()
        if cap is not None and "snc" in (cap.get("modules") or ())
    }
    configs = {m: c for m, c in configs.items() if c.snapshot_on != "pruning_step"}
    if not configs:
        return
    cfg = preset.train
    for task in tasks:
        rows = len(load_split(source, task, task.train_split))
        if preset.max_train_examples is not None:
            rows = min(rows, preset.max_train_examples)
        per_epoch = max(1, math.ceil(rows / cfg.batch_size))
        steps = cfg.run_steps(per_epoch)
        for method, cap in configs.items():
            cap.check_snapshots(steps, per_epoch, where=f"{method} on {task.name} ({rows} train rows)")
