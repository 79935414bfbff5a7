"""Method A − method B on one task and sparsity, paired by evaluation example and by training seed, with the
interval of the leaderboard's CAP table (capbench.report.cap_effect.paired_bootstrap: 2,000 replicates drawing
the evaluation rows and, with several seeds, the seeds). An analysis script for docs/presets.md, not part of
capbench: the leaderboard pairs CAP with its criterion; this pairs any two rows, e.g. magnitude with random.

    python docs/experiments/method_gap.py runs/default-check mnli magnitude random 0.9
    python docs/experiments/method_gap.py runs/default-check mnli dense magnitude 0.9

Seed s of A is paired with seed s of B (the same teacher seed, the same batches); dense cells are matched
by seed whatever the sparsity asked. Prints per seed A, B and A − B on the main split (×100), then the mean
difference with its 95% interval, and the same interval with the seeds held fixed (rows drawn only).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from capbench.predictions import read_predictions
from capbench.records import load_records
from capbench.report.cap_effect import _aligned, paired_bootstrap, weighted_metric
from capbench.tasks import get_task


def _cells(records: list[dict], task: str, method: str, sparsity: float) -> dict[int, dict]:
    want = 0.0 if method == "dense" else sparsity
    return {
        r["spec"]["seed"]: r
        for r in records
        if r.get("status") == "done"
        and r["spec"]["task"] == task
        and r["spec"]["method"] == method
        and abs(float(r["spec"].get("sparsity") or 0.0) - want) < 1e-9
    }


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
    pairs, label = [], None
    for seed in seeds:
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
