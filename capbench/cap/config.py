"""CAP configuration: which contrastive modules run, their weights, and how the banks are stored.

Defaults are the authors' public GLUE scripts for unstructured pruning (alibaba/AliceMind,
``ContrastivePruning/UnstructuredPruning/run_glue_topk_kd.sh`` and ``run_glue_soft_kd.sh``)::

    CONTRASTIVE_TEMPERATURE=0.1  EXTRA_EXAMPLES=4096  ALIGNREP=cls
    CL_UNSUPERVISED_LOSS_WEIGHT=0.1  CL_SUPERVISED_LOSS_WEIGHT=10
    CE_LOSS_WEIGHT=0.1  DISTILL_LOSS_WEIGHT=0.9

The scripts do not pass ``--temperature``, so distillation runs at the parser default of
``masked_run_glue.py``: ``parser.add_argument("--temperature", default=2.0, ...)``.
``ALIGNREP=cls`` means the pooler output ([CLS] -> dense -> tanh) in ``MaskedBertForSequenceClassification``.

``structured_defaults()`` follows ``StructuredPruning/run_glue.sh``: ``CONTRASTIVE_TEMPERATURE=0.1``,
``CL_UNSUPERVISED_LOSS_WEIGHT=0.3``, ``CL_SUPERVISED_LOSS_WEIGHT=3``, ``DISTILL_TEMPERATURE=1.0``
(CE 0.1, KD 0.9, 4096 extra examples as above); there the snapshots are taken at each pruning step.
capbench's one deviation: pruning-step snapshots at most once per epoch of training (``snapshot_gap``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from capbench.errors import CapbenchError
from capbench.options import coerce, shown

MODULES = ("prc", "snc", "fic")
REPRESENTATIONS = ("pooler", "mean")
NORMALIZATIONS = ("paper_code", "supcon")
SNAPSHOT_GAPS = ("epoch", "none")
SNAPSHOT_TRIGGERS = ("epoch", "pruning_step", "steps")
BANK_DTYPES = ("float16", "float32")


@dataclass(frozen=True)
class CapConfig:
    """Configuration of the CAP loss (see the module docstring for the source of each default).

    ``normalization`` chooses how a contrastive term averages its positives:

    * ``"paper_code"`` (default): the released code's double normalisation. For anchor *i* with
      positive set P(i) (the self-pair excluded),
      ``L = -(1 / sum_i |P(i)|) * sum_i (1 / |P(i)|) * sum_{p in P(i)} log p_ip``,
      i.e. each anchor's sum is divided by its positive count and the batch total is divided again by
      the total number of positives (``torch.sum(score / positive_num) / torch.sum(score != 0)``).
    * ``"supcon"``: the single normalisation of SupCon (Khosla et al. 2020),
      ``L = -(1 / B) * sum_i (1 / |P(i)|) * sum_{p in P(i)} log p_ip``.

    The two differ by the factor ``mean_i |P(i)|``. For PrC/FiC unsupervised terms each anchor has
    one positive (its bank row), so they coincide; for SnC with K snapshots "paper_code" is 1/K of
    "supcon"; for the supervised term (every same-label candidate among ~4096 is a positive) it is
    about 1/2000 of "supcon" on a binary task. The default is "paper_code" because the published
    weights (w_sup = 10, w_unsup = 0.1, and 3 / 0.3 structured) were tuned with it: with "supcon"
    the same w_sup would make the supervised term three orders of magnitude larger than CE and KD.
    Use "supcon" only together with re-tuned (much smaller) weights.
    """

    modules: tuple[str, ...] = MODULES
    unsup: bool = True
    sup: bool = True
    representation: str = "pooler"
    temperature: float = 0.1
    w_unsup: float = 0.1
    w_sup: float = 10.0
    w_ce: float = 0.1
    w_kd: float = 0.9
    kd_temperature: float = 2.0
    extra_examples: int = 4096
    # The authors keep every snapshot (9 with their 10-epoch scripts); 10 never binds there.
    max_snapshots: int = 10
    # "epoch": a snapshot after each epoch but the last (the unstructured scripts encode the training
    # set at the start of every epoch >= 1); "pruning_step": at each on_pruning_step() call (the
    # structured script); "steps": every `snapshot_interval` optimizer steps (for short runs).
    snapshot_on: str = "epoch"
    snapshot_interval: int | None = None
    # With snapshot_on="epoch": when an epoch is longer than this fraction of training (a budget of under
    # 1 / snapshot_fraction epochs; QQP at 500 steps never ends an epoch, a 1-epoch budget has no epoch end
    # before the last), snapshots are taken every `snapshot_fraction` of the training steps instead, so SnC
    # has rows on any budget. 0.5 leaves budgets of 2 epochs or more as they were (a snapshot at each epoch
    # end but the last) and costs one encoding pass below that; the authors' 10-epoch scripts snapshot
    # every tenth of training (snapshot_fraction=0.1 matches that cadence on a short budget).
    snapshot_fraction: float = 0.5
    # "none": a snapshot at every pruning step (the authors' code). "epoch", the structured variant's default:
    # a pruning-step snapshot is skipped (and counted) until the model has trained on one epoch of examples
    # since the previous one. It binds only when pruning steps come less than an epoch apart, as on a short
    # budget: the default preset's 10 structured pruning events in 2 epochs would otherwise encode the train
    # split 10 times, which made a cap_first_order cell 1.9x its KD cell (measured).
    snapshot_gap: str = "none"
    bank_dtype: str = "float16"
    bank_on_disk: bool = False
    # Banks live on the model's device (a GPU: no host-to-device copy of candidate rows per step); True keeps
    # them in host RAM, for banks larger than the GPU's free memory (full MNLI: 392,702 rows x 768 x fp16 =
    # 0.6 GB per bank, up to 10 snapshots). Where a bank lives does not change results.
    bank_on_host: bool = False
    normalization: str = "paper_code"
    # The classifier's dropout on the anchor's pooled representation before the contrastive terms, as the
    # authors' training forward does (see capbench.cap.representation); False: the pooler output as is.
    anchor_dropout: bool = True

    def __post_init__(self) -> None:
        modules = self.modules
        if isinstance(modules, str):
            modules = tuple(m for m in modules.replace("+", ",").split(",") if m.strip())
        modules = tuple(m.strip().lower() for m in modules)
        unknown = [m for m in modules if m not in MODULES]
        if unknown:
            raise CapbenchError(f"unknown CAP module(s) {unknown}: choose a subset of {list(MODULES)}")
        # Keep the canonical order so that equal subsets give equal configs and labels.
        object.__setattr__(self, "modules", tuple(m for m in MODULES if m in modules))
        for name in RULES:
            _check_field(name, getattr(self, name))
        if self.snapshot_on == "steps" and self.snapshot_interval is None:
            raise CapbenchError(
                "CAP snapshot_on=steps needs snapshot_interval, a whole number of steps >= 1 "
                "(e.g. snapshot_interval=100)"
            )

    # ------------------------------------------------------------------ construction
    @classmethod
    def defaults(cls, structured: bool = False) -> CapConfig:
        """The one place CAP's defaults are chosen: the structured scripts' for a pruner that removes whole
        heads / neurons (``Pruner.structured``), else the unstructured scripts' (see the module docstring)."""
        return cls.structured_defaults() if structured else cls()

    @classmethod
    def structured_defaults(cls, **overrides: Any) -> CapConfig:
        """The structured-pruning defaults (StructuredPruning/run_glue.sh), with optional overrides."""
        values: dict[str, Any] = dict(
            temperature=0.1,
            w_unsup=0.3,
            w_sup=3.0,
            kd_temperature=1.0,
            snapshot_on="pruning_step",
            snapshot_gap="epoch",
        )
        values.update(overrides)
        return cls.from_options(values)

    @classmethod
    def from_options(
        cls, options: dict[str, Any] | None, base: CapConfig | None = None, flag: str | None = None
    ) -> CapConfig:
        """Build a config from a dict of option strings or values (e.g. parsed from the CLI).

        Keys may use ``-`` or ``_``; values may be strings ("0.3", "true", "prc,fic"). Unknown keys
        raise a CapbenchError that lists the valid ones. ``flag`` (e.g. ``--cap-option``): errors about
        a key of ``options`` begin with ``flag KEY=VALUE``.
        """
        base = base or cls()
        fields = {f.name: f for f in dataclasses.fields(cls)}
        values = {name: getattr(base, name) for name in fields}
        for raw_key, raw_value in (options or {}).items():
            key = str(raw_key).strip().replace("-", "_")
            try:
                if key not in fields:
                    raise CapbenchError(
                        f"unknown CAP option {raw_key!r}: valid options are {', '.join(sorted(fields))}"
                    )
                values[key] = _typed(key, coerce(raw_value, _kind(key, values[key])), values[key])
                _check_field(key, values[key])
            except CapbenchError as error:
                if flag is None:
                    raise
                raise CapbenchError(f"{flag} {raw_key}={shown(raw_value)}: {error}") from None
        try:
            return cls(**values)
        except CapbenchError as error:
            if flag is None or not options:
                raise
            given = " ".join(f"{key}={shown(value)}" for key, value in options.items())
            raise CapbenchError(f"{flag} {given}: {error}") from None

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["modules"] = list(self.modules)
        if self.snapshot_on != "pruning_step" or self.snapshot_gap == "none":
            # No effect / the behaviour before the option existed: leaves earlier specs (and digests) unchanged.
            del out["snapshot_gap"]
        if not self.bank_on_host:
            del out["bank_on_host"]  # added later, and placement only: earlier specs keep their digests
        return out

    def snapshot_every(self, total_steps: int, steps_per_epoch: int) -> int | None:
        """Steps between step-triggered snapshots: ``snapshot_interval`` with snapshot_on="steps", every
        ``snapshot_fraction`` of training when an epoch is longer than that (snapshot_on="epoch"), else None."""
        if self.snapshot_on == "steps":
            return int(self.snapshot_interval)
        if self.snapshot_on == "epoch" and steps_per_epoch > self.snapshot_fraction * total_steps:
            return max(1, math.ceil(self.snapshot_fraction * total_steps))
        return None

    def planned_snapshots(self, total_steps: int, steps_per_epoch: int) -> int | None:
        """How many snapshots a run of ``total_steps`` takes (None: decided by the pruner's events)."""
        if "snc" not in self.modules or self.snapshot_on == "pruning_step":
            return None
        every = self.snapshot_every(total_steps, steps_per_epoch)
        if every is None:  # at each epoch end but the last
            return math.ceil(total_steps / max(1, steps_per_epoch)) - 1
        return (total_steps - 1) // every

    def check_snapshots(self, total_steps: int, steps_per_epoch: int, where: str = "CAP") -> None:
        """CapbenchError (one line) when SnC is on but this budget would take no snapshot."""
        if self.planned_snapshots(total_steps, steps_per_epoch) == 0:
            raise CapbenchError(
                f"{where}: SnC is on but {total_steps} training step(s) take no snapshot "
                f"(snapshot_on={self.snapshot_on}); train longer, lower snapshot_fraction/snapshot_interval, "
                "or drop snc from the CAP modules"
            )

    def label(self) -> str:
        """A short ablation label, e.g. ``prc+snc+fic/unsup+sup/pooler``."""
        losses = "+".join(name for name, on in (("unsup", self.unsup), ("sup", self.sup)) if on) or "none"
        return f"{'+'.join(self.modules) or 'none'}/{losses}/{self.representation}"


def _real(low: float, strict: bool):
    def check(value) -> bool:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            return False
        return value > low if strict else value >= low

    return check


def _whole(low: int):
    return lambda value: isinstance(value, int) and not isinstance(value, bool) and value >= low


def _flag(value) -> bool:
    return isinstance(value, bool)


def _one_of(choices: tuple[str, ...]):
    return lambda value: value in choices


# The schema of every CAP option: name -> (what the value must be, its check). ``modules`` is checked (and
# canonicalised) in CapConfig.__post_init__, which names the unknown modules.
RULES: dict[str, tuple[str, Any]] = {
    "unsup": ("true/false", _flag),
    "sup": ("true/false", _flag),
    "representation": (f"one of {', '.join(REPRESENTATIONS)}", _one_of(REPRESENTATIONS)),
    "temperature": ("a finite number > 0, e.g. 0.1", _real(0, strict=True)),
    "w_unsup": ("a finite number >= 0", _real(0, strict=False)),
    "w_sup": ("a finite number >= 0", _real(0, strict=False)),
    "w_ce": ("a finite number >= 0", _real(0, strict=False)),
    "w_kd": ("a finite number >= 0", _real(0, strict=False)),
    "kd_temperature": ("a finite number > 0, e.g. 2", _real(0, strict=True)),
    "extra_examples": ("an integer >= 0, e.g. 4096", _whole(0)),
    "max_snapshots": ("an integer >= 1", _whole(1)),
    "snapshot_on": (f"one of {', '.join(SNAPSHOT_TRIGGERS)}", _one_of(SNAPSHOT_TRIGGERS)),
    "snapshot_interval": ("none or an integer number of steps >= 1", lambda v: v is None or _whole(1)(v)),
    "snapshot_gap": (f"one of {', '.join(SNAPSHOT_GAPS)}", _one_of(SNAPSHOT_GAPS)),
    "bank_dtype": (f"one of {', '.join(BANK_DTYPES)}", _one_of(BANK_DTYPES)),
    "bank_on_disk": ("true/false", _flag),
    "bank_on_host": ("true/false", _flag),
    "normalization": (f"one of {', '.join(NORMALIZATIONS)}", _one_of(NORMALIZATIONS)),
    "snapshot_fraction": ("a fraction in (0, 1], e.g. 0.5", lambda v: _real(0, strict=True)(v) and v <= 1),
    "anchor_dropout": ("true/false", _flag),
}


def _check_field(name: str, value: Any) -> None:
    if name == "modules":
        modules = value.replace("+", ",").split(",") if isinstance(value, str) else value
        unknown = [m for m in modules if str(m).strip().lower() not in MODULES]
        if unknown:
            raise CapbenchError(f"unknown CAP module(s) {unknown}: choose a subset of {', '.join(MODULES)}")
        return
    what, check = RULES[name]
    if not check(value):
        raise CapbenchError(f"CAP {name} must be {what}; got {value!r}")


def _kind(key: str, current: Any) -> str:
    """The coercer's kind of a CAP field, from its default's type."""
    if key == "modules":
        return "list"
    if key == "snapshot_interval":
        return "optional_int"
    if isinstance(current, bool):
        return "bool"
    return "int" if isinstance(current, int) else "float" if isinstance(current, float) else "choice"


def _typed(key: str, value: Any, current: Any) -> Any:
    """A coerced value as the field's type: 3 -> 3.0 for a float field, 4096.0 -> 4096 for an int field."""
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if number and isinstance(current, float) and not isinstance(current, bool):
        return float(value)
    whole_field = key == "snapshot_interval" or (isinstance(current, int) and not isinstance(current, bool))
    if number and whole_field and math.isfinite(value) and float(value).is_integer():
        return int(value)
    return value
