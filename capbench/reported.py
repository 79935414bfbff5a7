"""Numbers reported in papers, shown beside (never mixed into) capbench's own rows.

Each entry of a reported file is one published number with its source, and the setting it was obtained in.
A leaderboard lists the entries of its tasks in a separate table. It gives the Δ of capbench's own number only
where the records reproduce that setting: the same checkpoint (the record's `model_identity`: a pinned hub
repo id the entry lists, or a local weights digest it lists; never the folder or name typed for --model),
task, method, sparsity, metric, the whole official train split, the official evaluation split, the
source's epochs and learning rate (and batch size where it gives one), and the same distillation setting.
A setting the source does not give (`unknown` in the file) means no Δ can be claimed for that entry.
Where records of the entry's cell exist but none is a reproduction, the row says why instead.
"""

from __future__ import annotations

import math
import statistics
from importlib import resources
from pathlib import Path

import yaml

from capbench.errors import CapbenchError
from capbench.tasks import official_rows_of

REQUIRED_KEYS = ("source", "model", "task", "split", "metric", "method", "sparsity", "kd", "value")
# What decides a reproduction (see capbench/reported.yaml); a missing key counts as `unknown`.
SETTING_KEYS = (
    "checkpoint_repo_ids",
    "checkpoint_weights_sha256",
    "epochs",
    "learning_rate",
    "batch_size",
    "kd_setting",
    "setting_source",
)
UNKNOWN = "unknown"
KD_KEYS = ("temperature", "w_ce", "w_kd")


def builtin_reported_path() -> Path:
    return Path(str(resources.files("capbench") / "reported.yaml"))


def load_reported(path: Path | None = None) -> list[dict]:
    path = path or builtin_reported_path()
    if not path.is_file():
        raise CapbenchError(f"reported numbers file {path} not found; pass --reported none to leave them out")
    entries = yaml.safe_load(path.read_text()) or []
    if not isinstance(entries, list):
        raise CapbenchError(f"{path}: expected a YAML list of entries; see capbench/reported.yaml")
    for index, entry in enumerate(entries, 1):
        missing = [key for key in REQUIRED_KEYS if key not in entry]
        if missing:
            raise CapbenchError(f"{path} entry {index}: missing keys {missing}; see capbench/reported.yaml")
        problem = _setting_problem(entry)
        if problem:
            raise CapbenchError(f"{path} entry {index}: {problem}; see capbench/reported.yaml")
    return entries


def _setting_problem(entry: dict) -> str | None:
    for key in ("checkpoint_repo_ids", "checkpoint_weights_sha256"):
        value = entry.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            return f"{key} must be a list of strings"
    for key in ("epochs", "learning_rate", "batch_size"):
        value = entry.get(key, UNKNOWN)
        if value != UNKNOWN and (isinstance(value, bool) or not isinstance(value, (int, float))):
            return f"{key} must be a number or {UNKNOWN!r}, not {value!r} (write 3e-5 as 3.0e-5)"
    kd = entry.get("kd_setting", UNKNOWN)
    if kd != UNKNOWN and not (isinstance(kd, dict) and set(kd) == set(KD_KEYS)):
        return f"kd_setting must be {UNKNOWN!r} or a mapping of exactly {', '.join(KD_KEYS)}"
    return None


def uses_kd(spec: dict) -> bool:
    cap = spec.get("cap") or {}
    return bool(spec.get("kd")) or float(cap.get("w_kd", 0) or 0) > 0


def kd_setting(spec: dict) -> dict | None:
    """Temperature and loss weights of a cell's distillation (plain KD or CAP's), None without KD."""
    if spec.get("kd"):
        return {key: spec["kd"].get(key) for key in KD_KEYS}
    cap = spec.get("cap") or {}
    if float(cap.get("w_kd", 0) or 0) > 0:
        return {"temperature": cap.get("kd_temperature"), "w_ce": cap.get("w_ce"), "w_kd": cap.get("w_kd")}
    return None


def unknown_settings(entry: dict) -> list[str]:
    """The parts of an entry's setting its source does not give: with any of them, no Δ is claimed."""
    unknown = []
    if not entry.get("checkpoint_repo_ids") and not entry.get("checkpoint_weights_sha256"):
        unknown.append("checkpoint")
    for key, name in (("epochs", "epochs"), ("learning_rate", "learning rate")):
        if entry.get(key, UNKNOWN) == UNKNOWN:
            unknown.append(name)
    if entry["kd"] and entry["method"] != "dense" and entry.get("kd_setting", UNKNOWN) == UNKNOWN:
        unknown.append("KD setting")
    return unknown


def _same(ours, theirs) -> bool:
    try:
        return math.isclose(float(ours), float(theirs), rel_tol=1e-9, abs_tol=1e-12)
    except (TypeError, ValueError):
        return False


def _checkpoint_mismatch(entry: dict, spec: dict) -> str | None:
    identity = spec.get("model_identity") or {}
    if identity.get("source") == "hub":
        listed = {repo.lower() for repo in entry.get("checkpoint_repo_ids") or []}
        if str(identity.get("repo_id", "")).lower() in listed:
            return None
        return f"checkpoint {identity.get('repo_id')} is not a listed {entry['model']}"
    if identity.get("source") == "local":
        if identity.get("weights_sha256") in (entry.get("checkpoint_weights_sha256") or []):
            return None
        return f"local weights {identity.get('weights_sha256')} are not a listed {entry['model']} checkpoint"
    return "no model identity recorded"


def _split_mismatch(record: dict, split: str, limit: int | None) -> str | None:
    """None when `split` is the whole official split; else what it is instead."""
    task = record["spec"]["task"]
    info = (record.get("data") or {}).get("splits", {}).get(split)
    if info is None:
        return f"no provenance recorded for {split}"
    rows, official_rows = info.get("rows"), official_rows_of(task, split)
    if not info.get("official", False):
        counted = f"{rows:,}" if isinstance(rows, int) else "an unrecorded number of"
        of = f" (official: {official_rows:,})" if official_rows else ""
        return f"{counted} carved {split} rows{of}"
    if official_rows is not None:
        if rows == official_rows:
            return None
        return (
            f"{rows:,} of {official_rows:,} {split} rows"
            if isinstance(rows, int)
            else f"{split} rows not recorded"
        )
    if limit is not None and (not isinstance(rows, int) or rows >= limit):
        return f"a sample of at most {limit:,} {split} rows"
    return None


def _value_mismatch(name: str, ours, theirs) -> str | None:
    if theirs == UNKNOWN or theirs is None:
        return None  # reported once per entry, see unknown_settings
    if ours is None:
        return f"{name} not recorded"
    return None if _same(ours, theirs) else f"{name} {ours:g} (source: {theirs:g})"


def _kd_text(setting: dict) -> str:
    return ", ".join(f"{key} {'?' if setting.get(key) is None else setting[key]}" for key in KD_KEYS)


def _kd_mismatch(entry: dict, spec: dict) -> str | None:
    if spec["method"] == "dense":
        return None  # the dense reference is plain fine-tuning in both
    ours = kd_setting(spec) if uses_kd(spec) else None
    if (ours is not None) != bool(entry["kd"]):
        return f"KD {'on' if ours is not None else 'off'} (source: {'on' if entry['kd'] else 'off'})"
    theirs = entry.get("kd_setting", UNKNOWN)
    if ours is None or theirs == UNKNOWN:
        return None
    if all(_same(ours.get(key), theirs[key]) for key in KD_KEYS):
        return None
    return f"KD {_kd_text(ours)} (source: {_kd_text(theirs)})"


def reproduction_mismatches(entry: dict, record: dict) -> list[str]:
    """Why `record` does not reproduce `entry`'s setting (empty: it does, up to the source's unknowns).

    The record must already be of the entry's task, method and sparsity.
    """
    spec = record["spec"]
    train = spec.get("train") or {}
    reasons = [
        _checkpoint_mismatch(entry, spec),
        _split_mismatch(record, "train", spec.get("max_train_examples")),
        _split_mismatch(record, entry["split"], spec.get("max_eval_examples")),
        _value_mismatch("epochs", train.get("epochs"), entry.get("epochs", UNKNOWN)),
        _value_mismatch("learning rate", train.get("learning_rate"), entry.get("learning_rate", UNKNOWN)),
        _value_mismatch("batch size", train.get("batch_size"), entry.get("batch_size", UNKNOWN)),
        _kd_mismatch(entry, spec),
    ]
    return [reason for reason in reasons if reason]


def _candidates(entry: dict, records: list[dict]) -> list[tuple[dict, float]]:
    """Finished records of the entry's cell (task, method, sparsity) with its metric on its split."""
    found = []
    for record in records:
        spec = record["spec"]
        if (
            record.get("status") != "done"
            or spec["task"] != entry["task"]
            or spec["method"] != entry["method"]
        ):
            continue
        if abs(spec["sparsity"] - entry["sparsity"]) > 1e-9:
            continue
        value = record.get("metrics", {}).get(entry["split"], {}).get(entry["metric"])
        if value is not None:
            found.append((record, 100 * value))
    return found


def compare_reported(entries: list[dict], records: list[dict]) -> list[dict]:
    """Entries of the tasks these records cover: with capbench's mean and Δ where the records reproduce the
    entry's setting, else (where the entry's cell has records) the reasons there is no Δ."""
    tasks = {r["spec"]["task"] for r in records}
    rows = []
    for entry in entries:
        if entry["task"] not in tasks:
            continue
        row = {key: entry[key] for key in (*REQUIRED_KEYS, "method_label") if key in entry}
        unknown = unknown_settings(entry)
        if unknown:
            row["unknown_settings"] = unknown
        candidates = _candidates(entry, records)
        checked = sorted(
            (
                (reproduction_mismatches(entry, record), record.get("cell_id", ""), value)
                for record, value in candidates
            ),
            key=lambda item: (len(item[0]), item[1]),
        )
        ours = [value for reasons, _, value in checked if not reasons]
        if ours and not unknown:
            mean = statistics.fmean(ours)
            row.update(capbench=round(mean, 2), capbench_n=len(ours), delta=round(mean - entry["value"], 2))
        elif checked:
            row["not_a_reproduction"] = checked[0][0] or [f"the source gives no {_join(unknown)}"]
        rows.append(row)
    return sorted(rows, key=_order)


def _join(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


def _order(row: dict) -> tuple:
    return (
        row["task"],
        row["source"],
        row["kd"],
        row["sparsity"],
        row["method"],
        row["split"],
        row["metric"],
    )


def render_reported_table(rows: list[dict]) -> str:
    """Per task, one line per published row (source, method, sparsity, KD); a column per split and metric,
    and a note column saying why there is no Δ where capbench has records of that cell. The `reported`
    table of capbench.report.papers, without its section note."""
    from capbench.report.papers import REPORTED, reported_frame
    from capbench.report.tables import body, table_rows

    frame = reported_frame(rows)
    text = body(REPORTED, frame, table_rows(REPORTED, frame))
    return text.removeprefix(REPORTED.intro(frame, frame)).lstrip("\n").rstrip() + "\n"
