"""Frozen cell specs: everything that determines a cell's result, and the digest that names it."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

DENSE = "dense"
# Measurements taken on a finished model; asking for them later does not retrain the cell.
MEASUREMENT_FIELDS = ("probes", "probe_sizes", "speed")
# The name the user typed for --model (a hub id or a folder path): `model_identity` names the model in the
# digest, so the same weights in another folder resume the same cells and new weights in the same folder
# do not.
NAME_FIELDS = ("model",)


@dataclass(frozen=True)
class CellSpec:
    task: str
    method: str  # "dense" for the dense fine-tuned reference
    sparsity: float  # fraction of prunable weights removed; 0.0 for dense
    seed: int
    model: str  # as given on the command line; provenance only, see model_identity
    preset: str
    data: dict
    max_train_examples: int | None
    max_eval_examples: int | None
    max_seq_length: int
    data_sample_seed: int
    train: dict
    method_options: dict = field(default_factory=dict)
    kd: dict | None = None
    cap: dict | None = None
    probes: tuple[str, ...] = ()
    probe_sizes: str = "1200,300,600"  # train,dev,test examples per generated probe
    speed: bool = False
    # capbench.model_identity: file digests of a local directory, or a hub repo pinned to its commit.
    model_identity: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["probes"] = list(self.probes)
        return data

    @property
    def digest(self) -> str:
        return spec_digest(self.to_dict())

    @property
    def cell_id(self) -> str:
        return f"{self.task}-{self.method}-{self.sparsity:g}-seed{self.seed}-{self.digest[:10]}"

    def dense_reference(self) -> CellSpec:
        """The dense cell of the same task, seed, model, data and training settings (the KD teacher)."""
        return CellSpec(
            **{
                **self.to_dict(),
                "method": DENSE,
                "sparsity": 0.0,
                "method_options": {},
                "kd": None,
                "cap": None,
                "probes": tuple(self.probes),
            }
        )


def digest_fields(spec: dict) -> dict:
    """The part of a spec its digest covers: everything but measurements and the model's display name."""
    return {k: v for k, v in spec.items() if k not in MEASUREMENT_FIELDS + NAME_FIELDS}


def spec_digest(spec: dict) -> str:
    core = digest_fields(spec)
    return hashlib.sha256(json.dumps(core, sort_keys=True, default=str).encode()).hexdigest()


def teacher_key(spec: CellSpec) -> str:
    """What determines the dense fine-tuned model: shared by every method and sparsity of a (task, seed)."""
    parts = {
        "task": spec.task,
        "seed": spec.seed,
        "model_identity": spec.model_identity,
        "data": spec.data,
        "max_train_examples": spec.max_train_examples,
        "max_seq_length": spec.max_seq_length,
        "data_sample_seed": spec.data_sample_seed,
        "train": spec.train,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]
