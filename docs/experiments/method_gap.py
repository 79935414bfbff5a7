"""Method A − method B on one task and sparsity, paired by evaluation example and by training seed, with the
interval of the leaderboard's CAP table (capbench.report.cap_effect.paired_bootstrap: 2,000 replicates drawing
the evaluation rows and, with several seeds, the seeds). An analysis script for docs/presets.md, not part of
capbench: the leaderboard pairs CAP with its criterion; this pairs any two rows, e.g. magnitude with random.

    python docs/experiments/method_gap.py runs/default-check mnli magnitude random 0.9
    python docs/experiments/method_gap.py runs/default-check mnli dense magnitude 0.9
    python docs/experiments/method_gap.py leaderboards/runs/today sst2 wanda magnitude/oneshot 0.9

A method may carry its regime: NAME/oneshot takes only its one-shot cells (either one-shot regime of
capbench.pruning.pruners.regime, as the leaderboard labels them: wanda and sparsegpt by default, magnitude
with oneshot=true), NAME/gradual only the others; a bare NAME takes both and stops when a seed has one of
each, as magnitude has in a grid with today's baselines (its one-shot control row beside the gradual row).

Seed s of A is paired with seed s of B (the same teacher seed, the same batches); dense cells are matched
by seed whatever the sparsity asked. A seed whose two cells learned from different dense teachers (the teacher
is retrained on each machine; capbench.report.frame.same_teacher) is still compared, and the output says so.
Prints per seed A, B and A − B on the main split (×100), then the mean difference with its 95% interval, and
the same interval with the seeds held fixed (rows drawn only).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from capbench.leaderboard import regime_suffix
from capbench.predictions import read_predictions
from capbench.records import load_records
from capbench.report.cap_effect import _aligned, paired_bootstrap, weighted_metric
from capbench.report.frame import teacher_fingerprint, teacher_mismatch, teacher_relation
from capbench.tasks import get_task

REGIMES = ("oneshot", "gradual")


def _refuse(message: str) -> None:
    print(message, file=sys.stderr)
    sys.exit(2)


def _cells(records: list[dict], task: str, method: str, sparsity: float) -> dict[int, dict]:
    """Seed -> done record of METHOD (optionally NAME/oneshot or NAME/gradual) on TASK at SPARSITY.

    Raises SystemExit(2) for an unknown regime, or for a seed with cells of both regimes under a bare name."""
    name, _, regime = method.partition("/")
    if regime and regime not in REGIMES:
        _refuse(f"{method}: unknown regime {regime!r}; write NAME/oneshot or NAME/gradual")
    want = 0.0 if name == "dense" else sparsity
    cells: dict[int, dict] = {}
    for r in records:
        spec = r["spec"]
        if (
            r.get("status") != "done"
            or spec["task"] != task
            or spec["method"] != name
            or abs(float(spec.get("sparsity") or 0.0) - want) >= 1e-9
            or (regime and bool(regime_suffix(spec)) != (regime == "oneshot"))
        ):
            continue
        if spec["seed"] in cells:
            _refuse(
                f"{method}: seed {spec['seed']} has a one-shot and a gradual cell; name NAME/oneshot or NAME/gradual"
            )
        cells[spec["seed"]] = r
    return cells


def main(run_dir: str, task: str, a: str, b: str, sparsity: str) -> int:
    records_dir = Path(run_dir) / "records"
    records = load_records(Path(run_dir))
    spec = get_task(task)
    split, metric = spec.main_eval_split, spec.main_metric
    cells_a, cells_b = _cells(records, task, a, float(sparsity)), _cells(records, task, b, float(sparsity))
    seeds = sorted(set(cells_a) & set(cells_b))
    if not seeds:
        print(f"{run_dir}: no seed with both {a} and {b} on {task} at {sparsity}", file=sys.stderr)
        return 2
    pairs, label, crossed = [], None, []
    for seed in seeds:
        fingerprints = teacher_fingerprint(cells_a[seed]), teacher_fingerprint(cells_b[seed])
        if teacher_relation(*fingerprints) == "retrained":
            print(
                f"seed {seed}: teacher retrained (one recipe trained on two machines, final losses equal to rounding)"
            )
        mismatch = teacher_mismatch(*fingerprints)
        if mismatch:
            crossed.append(seed)
            print(f"seed {seed}: {mismatch}: the difference also carries the teacher's run-to-run variation")
        ia, pa, la = _aligned(read_predictions(cells_a[seed], records_dir)[split])
        ib, pb, lb = _aligned(read_predictions(cells_b[seed], records_dir)[split])
        assert np.array_equal(ia, ib) and np.array_equal(la, lb), "the two cells evaluated different rows"
        label = la
        pairs.append((pa, pb))
        ones = np.ones((1, len(la)))
        score_a, score_b = (100 * weighted_metric(metric, ones, p, la)[0] for p in (pa, pb))
        print(f"seed {seed}: {a} {score_a:.2f}  {b} {score_b:.2f}  {a} − {b} {score_a - score_b:+.2f}")
    both = paired_bootstrap(metric, pairs, label)
    print(
        f"{task} {split} {metric}, {a} − {b} at {sparsity}, seeds {seeds}, {both['rows']} rows: "
        f"{100 * both['difference']:+.2f} [{100 * both['low']:+.2f}, {100 * both['high']:+.2f}] "
        f"(rows and seeds drawn, {both['replicates']} replicates)"
        + (f"; seeds {crossed} compare models of different teachers" if crossed else "")
    )
    if len(pairs) > 1:
        fixed = paired_bootstrap(metric, pairs, label, draw_seeds=False)
        per_seed = [paired_bootstrap(metric, [p], label) for p in pairs]
        print(
            f"  seeds held fixed (rows drawn only): [{100 * fixed['low']:+.2f}, {100 * fixed['high']:+.2f}]; "
            "per seed: " + ", ".join(f"[{100 * f['low']:+.2f}, {100 * f['high']:+.2f}]" for f in per_seed)
        )
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 6:
        print("usage: method_gap.py RUN_DIR TASK METHOD_A METHOD_B SPARSITY", file=sys.stderr)
        sys.exit(2)
    sys.exit(main(*sys.argv[1:]))
