"""Presets: named bundles of run settings; explicit command-line flags override any value.

A preset may also set pruning-method options (``method_options``: rows of ``MethodOptions``), for every task
or for one task (and one target sparsity): the ``paper`` preset follows the CAP authors' scripts per task.
They apply when the grid expands (``Preset.cell_options``), beneath the user's ``--method-option`` values,
and apply to ``cap_<method>`` as to ``<method>``; ``capbench ls presets`` shows them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from capbench.errors import CapbenchError
from capbench.models import DEFAULT_MODEL
from capbench.training import TrainConfig


@dataclass(frozen=True)
class MethodOptions:
    """Options a preset gives the pruning ``methods`` (and CAP over them) on ``tasks`` (empty: every task) at
    ``sparsity`` (None: every target); ``source`` cites where the values come from."""

    methods: tuple[str, ...]
    options: dict
    source: str
    tasks: tuple[str, ...] = ()
    sparsity: float | None = None

    def applies(self, task: str, method: str, sparsity: float) -> bool:
        return (
            method in self.methods
            and (not self.tasks or task in self.tasks)
            and (self.sparsity is None or abs(self.sparsity - sparsity) < 1e-9)
        )

    def describe(self) -> str:
        where = ",".join(self.tasks) or "every task"
        at = f" at sparsity {self.sparsity:g}" if self.sparsity is not None else ""
        values = " ".join(f"{k}={v}" for k, v in self.options.items())
        return f"{','.join(self.methods)} on {where}{at}: {values}  ({self.source})"


@dataclass(frozen=True)
class TaskSignal:
    """What a preset's dense reference reaches on a task with its default model, measured: ``signal`` False
    marks a task whose dense reference stays within seed noise of the chance score at this budget (its
    pruned cells cannot show anything about pruning).  ``dense`` and ``chance`` are the measured values
    as text, ``source`` the runs they come from.  ``pruned``: what the measured pruned cells show, where
    they were run (a sparsity at which the baselines are not told apart says so here)."""

    task: str
    signal: bool
    dense: str
    chance: str
    source: str
    pruned: str = ""

    def describe(self) -> str:
        verdict = "signal" if self.signal else "NO SIGNAL (dense at chance)"
        pruned = f"; pruned: {self.pruned}" if self.pruned else ""
        return f"{verdict}: dense {self.dense}; chance {self.chance}{pruned}  ({self.source})"


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    model: str
    max_train_examples: int | None  # None: the whole train split
    max_eval_examples: int | None
    max_seq_length: int
    train: TrainConfig = field(default_factory=TrainConfig)
    # Pruning-method options of this preset, later rows winning (general rows first, then per task).
    method_options: tuple[MethodOptions, ...] = ()
    # Measured signal per task (TaskSignal); a preset with no_signal=True has none on any task.
    signals: tuple[TaskSignal, ...] = ()
    no_signal: bool = False

    def signal_of(self, task: str) -> TaskSignal | None:
        """This preset's measured signal on ``task``, or None where it was not measured."""
        return next((s for s in self.signals if s.task == task), None)

    def lacks_signal(self, task: str) -> str | None:
        """Why results of ``task`` at this preset do not measure pruning, or None (signal, or not measured)."""
        if self.no_signal:
            return f"preset {self.name} has no signal on any task ({self.description.split(':')[0]})"
        found = self.signal_of(task)
        if found is not None and not found.signal:
            return f"{task} at preset {self.name}: {found.describe()}"
        return None

    def options_for(self, task: str, method: str, sparsity: float) -> dict:
        """This preset's options for a pruning method (the criterion, not the cap_ name) in a cell."""
        out: dict = {}
        for row in self.method_options:
            if row.applies(task, method, sparsity):
                out.update(row.options)
        return out

    def cell_options(self, task: str, method: str, sparsity: float, options: dict, overrides: dict) -> dict:
        """A cell's method options: ``options`` (the method's resolved options as a spec holds them) with
        this preset's values for (task, method, sparsity) beneath the user's ``overrides``; checked."""
        from capbench.methods import criterion_of
        from capbench.pruning.pruners import check_options, method_defaults, spec_options

        criterion = criterion_of(method)
        defaults = method_defaults(criterion)
        given = {
            k: v
            for k, v in self.options_for(task, criterion, sparsity).items()
            if k in defaults and k not in overrides
        }
        if not given:
            return options
        resolved = check_options(
            criterion, {**defaults, **options, **given}, label=f"preset {self.name}: {method}"
        )
        return spec_options(criterion, resolved)

    def override(self, **values) -> Preset:
        train_fields = set(TrainConfig.__dataclass_fields__)
        train_values = {k: v for k, v in values.items() if k in train_fields and v is not None}
        own = {k: v for k, v in values.items() if k not in train_fields and v is not None}
        return replace(self, train=replace(self.train, **train_values), **own)

    def validate(self, max_positions: int | None = None) -> None:
        """Raise CapbenchError, naming the flag and the fix, on a setting outside its domain (the resolved
        value: preset plus flags). ``max_positions``: the model's max_position_embeddings, if known."""
        self.train.validate()
        for flag, value in (
            ("--max-train-examples", self.max_train_examples),
            ("--max-eval-examples", self.max_eval_examples),
        ):
            if value is not None and not (_whole(value) and value >= 1):
                raise CapbenchError(
                    f"{flag} {value}: must be a whole number of rows >= 1 (omit the flag for the preset's value)"
                )
        length = self.max_seq_length
        if not (_whole(length) and length >= MIN_SEQ_LENGTH):
            upper = (
                f" and at most {max_positions} (the model's max_position_embeddings)" if max_positions else ""
            )
            raise CapbenchError(
                f"--max-seq-length {length}: must be a whole number of tokens >= {MIN_SEQ_LENGTH}{upper}, e.g. 128"
            )
        if max_positions and length > max_positions:
            raise CapbenchError(
                f"--max-seq-length {length}: must be at most {max_positions}, the model's max_position_embeddings"
                f" (longer inputs have no position embedding); e.g. --max-seq-length {min(128, max_positions)}"
            )


MIN_SEQ_LENGTH = 8  # [CLS], [SEP] and a few tokens


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# The CAP authors' scripts, alibaba/AliceMind ContrastivePruning/ (paths below are under it).
_CAP = "AliceMind ContrastivePruning/"
_CAP_S = _CAP + "StructuredPruning/run_glue.sh"
_CAP_U = _CAP + "UnstructuredPruning/"
UNSTRUCTURED = ("magnitude", "movement", "soft_movement", "random")
PAPER_METHOD_OPTIONS = (
    # CAP-f: 9 prune-then-retrain steps of 10% (PRUNE_SEQUENCE=10,...,90, L12), 2 epochs each with a fresh
    # optimizer (RETRAIN_EPOCH=2.0, L18; run_glue.py L667-669).  See capbench/pruning/structured.py.
    MethodOptions(
        ("first_order",),
        {"procedure": "iterative", "step_sparsity": 0.1, "step_epochs": 2.0},
        f"{_CAP_S} L12, L18",
    ),
    # CAP-soft: FINAL_LAMBDA=550 (run_glue_soft_kd.sh L20) where the README gives no value for the task.
    MethodOptions(("soft_movement",), {"final_lambda": 550.0}, _CAP_U + "run_glue_soft_kd.sh L20"),
    # Threshold schedule on QQP and MNLI (the tasks of the unstructured GLUE scripts, README L28-35):
    # --warmup_steps 11000 (WARMUP, L16) with --initial_warmup 2 --final_warmup 3 (L46) in masked_run_glue.py's
    # schedule_threshold (L68-88): pruning starts after 22,000 steps and the final threshold holds for the last
    # 33,000, of t_total = ceil(train rows / 32) * 10 epochs (L118): QQP 363,846 rows -> 113,710 steps,
    # MNLI 392,702 rows -> 122,720 steps.  As fractions, so they scale with --epochs and --max-train-examples.
    MethodOptions(
        UNSTRUCTURED,
        {"warmup": 0.193, "cooldown": 0.29},
        _CAP_U + "run_glue_{topk,soft}_kd.sh L16, L46; masked_run_glue.py L68-88, L118",
        tasks=("qqp",),
    ),
    MethodOptions(
        UNSTRUCTURED,
        {"warmup": 0.179, "cooldown": 0.269},
        _CAP_U + "run_glue_{topk,soft}_kd.sh L16, L46; masked_run_glue.py L68-88, L118",
        tasks=("mnli",),
    ),
    # FINAL_LAMBDA per task and sparsity (UnstructuredPruning/README.md L58-63).
    MethodOptions(
        ("soft_movement",), {"final_lambda": 190.0}, _CAP_U + "README.md L59", tasks=("qqp",), sparsity=0.9
    ),
    MethodOptions(
        ("soft_movement",), {"final_lambda": 550.0}, _CAP_U + "README.md L60", tasks=("qqp",), sparsity=0.97
    ),
    MethodOptions(
        ("soft_movement",), {"final_lambda": 290.0}, _CAP_U + "README.md L62", tasks=("mnli",), sparsity=0.9
    ),
    MethodOptions(
        ("soft_movement",), {"final_lambda": 680.0}, _CAP_U + "README.md L63", tasks=("mnli",), sparsity=0.97
    ),
)


# oBERT on a 2-core CPU (docs/methods.md "oBERT at CPU size"): the recipe's 1,024 gradients and Fisher blocks
# of 50 cost about an hour more per MNLI cell and, for bert-base, 17 GB of blocks; these keep the method (a
# block empirical Fisher, OBS scores and updates, 7 pruning steps) at 64 gradients of 16 rows and blocks of 16
# weights: 0.68 GB of blocks for MiniLM's 10.6M pruned weights.
OBERT_CPU = MethodOptions(
    ("obert",),
    {"num_grads": 64, "fisher_block_size": 16},
    "CPU-sized oBERT: docs/methods.md; the paper preset keeps the recipe's 1024 gradients and blocks of 50",
)
OBERT_SMOKE = MethodOptions(
    ("obert",),
    {"num_grads": 8, "fisher_block_size": 8, "pruning_steps": 2},
    "plumbing only: a few gradients and two pruning steps",
)


def _cpu_steps(steps: int) -> TrainConfig:
    """The CPU recipe of `default` and `ci`: ``steps`` length-grouped AdamW steps of 32 at lr 1e-4, 10%
    warm-up, evaluation batches of 128."""
    return TrainConfig(
        epochs=1.0,
        max_steps=steps,
        batch_size=32,
        learning_rate=1e-4,
        warmup_ratio=0.1,
        eval_batch_size=128,
        group_by_length=True,
    )


PRESETS = {
    "smoke": Preset(
        name="smoke",
        description=(
            "NO SIGNAL: a few hundred examples, one short epoch; results sit at or near chance. For tests and "
            "plumbing checks only, never for comparing methods (use ci or default)"
        ),
        model=DEFAULT_MODEL,
        max_train_examples=256,
        max_eval_examples=256,
        max_seq_length=128,
        # 3e-4: with tens of steps, MiniLM's fresh classifier head barely moves at 1e-4 (sst2, 256 rows, 32
        # steps: 59.5% at 1e-4 vs 77.0% at 3e-4, measured 2026-11-22).
        train=TrainConfig(epochs=1.0, batch_size=16, learning_rate=3e-4, warmup_ratio=0.1),
        method_options=(OBERT_SMOKE,),
        no_signal=True,
    ),
    "default": Preset(
        name="default",
        description=(
            "sized for a 2-core CPU: 800 optimizer steps of 32 length-grouped rows over the whole train "
            "split, every evaluation row; dense MiniLM reaches MNLI-m >= 64, SST-2 >= 87 (docs/presets.md)"
        ),
        model=DEFAULT_MODEL,
        max_train_examples=None,
        max_eval_examples=None,
        max_seq_length=128,
        # A plain loop on the offline MiniLM plateaus on MNLI (carved train) at 64.6-66.9 after 450-550 steps
        # at lr 1e-4 and reaches SST-2 87.2 at 400 (../shared/notes/cpu-training-facts.md); 800 steps leave a
        # margin for the pruned cells, whose pruning ramp takes the first part of the run.
        train=_cpu_steps(800),
        method_options=(OBERT_CPU,),
        signals=(
            TaskSignal(
                "sst2",
                True,
                "88.5 (seeds 0-2: 88.0, 88.2, 89.5) on all 872 rows",
                "50.9 (majority class)",
                "runs/default-check, docs/presets.md",
                "at 0.9 magnitude 79.0 and random 79.0 (seeds 0-2; paired gap +0.0 [-2.0, +2.0]): NOT told apart "
                "at this sparsity; "
                "movement collapses to the majority class (51.0, seed 0; 50.9 at 3x the steps, 2,400, where random "
                "reaches 81.1): not evidence about it at this budget",
            ),
            TaskSignal(
                "mnli",
                True,
                "65.5 (seeds 0-2: 65.8, 65.0, 65.6) on the 2,000-row carved dev",
                "35.4 (majority class of the carved dev)",
                "runs/default-check, docs/presets.md",
                "at 0.9 dense 65.5 > magnitude 46.9 > random 43.4, magnitude above random in every seed (0-2); "
                "gap paired by row and seed +3.5 [+0.7, +6.7], 3-seed t-interval [-2.5, 9.6]",
            ),
        ),
    ),
    "ci": Preset(
        name="ci",
        description=(
            "for regression gates on a 2-core runner: 300 length-grouped steps over 8,000 train rows, every "
            "evaluation row; on SST-2 dense MiniLM >= 85 and the ci grid runs in under 10 minutes cold"
        ),
        model=DEFAULT_MODEL,
        max_train_examples=8000,
        max_eval_examples=None,
        max_seq_length=128,
        # SST-2 dense, seed 0 (2026-11-30): 84.9 after 200 steps at lr 2e-4, 85.7 after 250 at 2e-4, 86.6 after
        # 300 at 1e-4 (magnitude 0.9 with KD: 77.5): 300 at 1e-4 keeps a margin above the bar of 85.
        train=_cpu_steps(300),
        method_options=(OBERT_CPU,),
        signals=(
            TaskSignal(
                "sst2",
                True,
                "86.6 (seed 0); magnitude 0.9 78.0, random 0.9 52.4",
                "50.9 (majority class)",
                "leaderboards/ci-baseline.md",
            ),
        ),
    ),
    "paper": Preset(
        name="paper",
        description="bert-base-uncased with the CAP paper's hyperparameters (full data, 10 epochs): for GPUs",
        model="bert-base-uncased",
        max_train_examples=None,
        max_eval_examples=None,
        max_seq_length=128,
        # CAP (Xu et al. 2022) and movement pruning (Sanh et al. 2020) GLUE scripts: batch 32, lr 3e-5, 10 epochs.
        train=TrainConfig(epochs=10.0, batch_size=32, learning_rate=3e-5, warmup_ratio=0.1),
        method_options=PAPER_METHOD_OPTIONS,
    ),
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise CapbenchError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}")
    return PRESETS[name]
