"""The leaderboard's speed table: batch 1 and batch 32 with intervals, IQR, rounds, ceiling, attainable,
busy mark; records of speed schema 1 still render, with "—" where they lack a field."""

import json
from pathlib import Path

from capbench.speed.report import render_speed_table

RECORDS = Path(__file__).resolve().parents[1] / "leaderboards" / "runs" / "default-sst2" / "records"
MACHINE = {"cpu": "Test CPU", "threads": 2, "torch": "2.x"}


def _summary_only(method, sparsity, measured, theoretical, fmt="csr", status="done", not_faster=False):
    """A schema-1 speed section with only its summary (the oldest shape the leaderboard meets)."""
    return {
        "spec": {"method": method, "sparsity": sparsity, "task": "sst2"},
        "status": status,
        "speed": {
            "machine": MACHINE,
            "summary": {
                "token_count": "32x128",
                "sparsity": sparsity,
                "measured_speedup": measured,
                "theoretical_speedup": theoretical,
                "fraction_of_theoretical": measured / theoretical,
                "format": fmt,
                "sparse_not_faster": not_faster,
            },
        },
    }


def _shape(batch, speedup, ci, iqr, rounds, ceiling, attainable):
    return {
        "batch": batch,
        "seq": 128,
        "rounds": rounds,
        "stop": {"reason": "spread"},
        "models": {"pruned": {"speedup": speedup, "speedup_iqr": iqr, "speedup_ci": ci}},
        "ceiling": ceiling,
        "attainable_speedup": attainable,
        "fraction_of_attainable": speedup / attainable,
        "formats": {"csr": 36},
    }


def _schema2(method, measured32, busy=False):
    label = "32 sentences of sst2 validation, 32 of 872 rows (seed 0), local:/glue, mean 25 tokens"
    return {
        "spec": {"method": method, "sparsity": 0.9, "task": "sst2"},
        "status": "done",
        "speed": {
            "schema": 2,
            "machine": MACHINE,
            "inputs": {"kind": "sentences", "label": label},
            "model": {
                "1x128": _shape(1, 2.1, [2.05, 2.15], 0.04, 12, 6.0, 4.0),
                "32x128": _shape(32, measured32, [1.43, 1.49], 0.03, 10, 4.0, 3.08),
            },
            "busy": busy,
            "summary": {
                "token_count": "32x128",
                "sparsity": 0.9,
                "measured_speedup": measured32,
                "theoretical_speedup": 10.0,
                "ceiling": 4.0,
                "attainable_speedup": 3.08,
                "fraction_of_attainable": measured32 / 3.08,
                "format": "csr",
                "sparse_not_faster": False,
                "busy": busy,
                "busy_reason": "measurement: other processes used 1.00 cores" if busy else "idle",
            },
        },
    }


def test_schema_2_rows_show_both_batches_with_intervals_and_the_ceiling():
    table = render_speed_table([_schema2("magnitude", 1.46), _schema2("random", 1.45, busy=True)])
    assert table.splitlines()[0] == "Speed on Test CPU, 2 threads, torch 2.x"
    assert "32 sentences of sst2 validation" in table
    header = next(line for line in table.splitlines() if line.startswith("| task"))
    assert header == (
        "| task | method | sparsity | batch 1 [95% CI] | batch 32 [95% CI] | IQR | rounds | ceiling | attainable "
        "| % of attainable | format | note |"
    )
    assert (
        "| sst2 | magnitude | 0.90 | 2.10x [2.05, 2.15] | 1.46x [1.43, 1.49] | 0.04 / 0.03 | 12 / 10 "
        "| 6.00x / 4.00x | 4.00x / 3.08x | 52% / 47% | csr |  |"
    ) in table
    assert "| sst2 | random | 0.90 | 2.10x [2.05, 2.15] | 1.45x [1.43, 1.49] |" in table
    assert table.splitlines()[-1].endswith("| csr | BUSY |")
    assert "first speed harness" not in table


def test_schema_1_records_still_render_with_dashes():
    records = [
        _summary_only("magnitude", 0.9, 1.4, 10.0),
        _summary_only("magnitude", 0.5, 0.98, 2.0, fmt="dense", not_faster=True),
        _summary_only("structured", 0.5, 1.9, 2.0, fmt="compacted"),
        _summary_only("magnitude", 0.97, 9.0, 33.0, status="failed"),
        {"spec": {"method": "cap", "sparsity": 0.9, "task": "sst2"}, "status": "done"},
    ]
    table = render_speed_table(records)
    assert "random token ids (no padding)" in table
    assert (
        "| sst2 | magnitude | 0.50 | — | 0.98x | — / — | — / — | — / — | — / — | — / — | dense | sparse, not faster |"
        in table
    )
    assert "| sst2 | magnitude | 0.90 | — | 1.40x | — / — |" in table
    assert "compacted" in table and "0.97" not in table
    assert "1 done cell(s) have no speed measurement" in table
    assert "3 measurement(s) come from the first speed harness" in table
    assert "No speed measurements" in render_speed_table([])


def test_a_published_schema_1_record_renders_its_per_shape_rows():
    record = json.loads(next(RECORDS.glob("sst2-random-0.9-seed0-*.json")).read_text())
    assert record["speed"]["schema"] == 1
    table = render_speed_table([record])
    assert (
        "| sst2 | random | 0.90 | 1.71x | 0.98x | 0.65 / 0.05 | 5 / 5 | — / — | — / — | — / — "
        "| csr 30/36 / csr 4/36 | sparse, not faster at b=32 |" in table
    )


def test_each_batch_names_its_own_formats_and_where_sparse_is_not_faster():
    """Each whole-model shape runs in the formats calibrated at its own token count: CSR can win at batch 1
    and lose to dense at batch 32. The row then shows both, and "not faster" only where it holds (the
    record's headline format and flag are the batch-32 shape's)."""
    record = _schema2("magnitude", 1.01)
    record["speed"]["model"]["32x128"]["formats"] = {"dense": 36}
    record["speed"]["summary"].update(format="dense", sparse_not_faster=True)
    line = render_speed_table([record]).splitlines()[-1]
    assert line.endswith("| csr / dense | sparse, not faster at b=32 |")
    record["speed"]["model"]["1x128"]["formats"] = {"dense": 36}  # one format: shown once
    record["speed"]["model"]["1x128"]["models"]["pruned"]["speedup"] = 0.99
    assert render_speed_table([record]).splitlines()[-1].endswith("| dense | sparse, not faster |")
