"""Build a cell's CapLoss: PrC and FiC banks cached on disk per (model, task, data, seed), like the teacher."""

from __future__ import annotations

import hashlib
import json

from capbench.cap.banks import load_or_build_bank
from capbench.cap.config import CapConfig
from capbench.cap.loss import CapLoss
from capbench.models import weights_digest
from capbench.training import TrainConfig, make_loader


def _bank_dir(ctx, role: str, model_digest: str, data, spec, cfg: CapConfig):
    key = {
        "role": role,
        "weights": model_digest,
        "train_rows": data.train._fingerprint,  # datasets' content fingerprint of the tokenized split
        "max_seq_length": spec.max_seq_length,
        "representation": cfg.representation,
        "dtype": cfg.bank_dtype,
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    return ctx.cache_dir / "cap_banks" / digest, key


def cap_loss_for_cell(spec, model, teacher, data, ctx) -> CapLoss:
    """The CAP loss composer of a cell; `model` is the pre-trained model about to be pruned (epoch 0 = PrC)."""
    cfg = CapConfig.from_options(spec.cap)
    loader = make_loader(data.train, data.tokenizer, TrainConfig(**spec.train).eval_batch_size, shuffle=False)
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
    return CapLoss(model, cfg, teacher=teacher, loader=loader, seed=spec.seed, **banks)
